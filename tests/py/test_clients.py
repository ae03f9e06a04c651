"""Real client library: python fluent-logger (sync sender, async sender, logging handler)."""

import json
import logging
import time
import uuid

from fluent import asyncsender, handler, sender

RECORD = {
    "TENANT_ID": "tc",
    "SERVICE_ID": "sc",
    "log": "hello from fluent-logger",
    "nested": {"a": 1, "b": [1, 2, {"c": "d"}], "e": {"f": {"g": None}}},
    "flag": True,
    "ratio": 0.5,
}
NS = 1700000000 * 10**9 + 123456789


def json_frames(m):
    assert len(m) == 3
    return m[0], m[1], json.loads(m[2])


def test_fluent_sender_nanosecond_json(jgw, jsub):
    host, port = jgw.addr
    s = sender.FluentSender("app", host=host, port=port, nanosecond_precision=True)
    try:
        assert s.emit_with_time("web", sender.EventTime.from_unix_nano(NS), RECORD), s.last_error
        assert s.emit_with_time("web", 1700000000.25, {**RECORD, "log": "float time"}), s.last_error
        before = time.time_ns()
        assert s.emit("web", {**RECORD, "log": "now"}), s.last_error
        m1, m2, m3 = jsub.recv_n(3)
        after = time.time_ns()
        peer = "%s:%d" % s.socket.getsockname()
    finally:
        s.close()
    t, sv, obj = json_frames(m1)
    assert (t, sv) == (b"tc", b"sc")
    assert obj == {
        "tag": "app.web",
        "time": "2023-11-14T22:13:20.123456789Z",
        "time_ns": NS,
        "peer": peer,
        "record": RECORD,
    }
    _, _, obj2 = json_frames(m2)
    assert obj2["time_ns"] == 1700000000250000000
    assert obj2["time"] == "2023-11-14T22:13:20.250000000Z"
    assert obj2["record"] == {**RECORD, "log": "float time"}
    _, _, obj3 = json_frames(m3)
    # EventTime.from_unix_nano(time.time_ns()) keeps every nanosecond
    assert before <= obj3["time_ns"] <= after
    assert obj3["record"] == {**RECORD, "log": "now"}
    assert jsub.sync(jgw) == []


def test_fluent_sender_seed(gw, sub):
    host, port = gw.addr
    s = sender.FluentSender("app", host=host, port=port, nanosecond_precision=True)
    try:
        for i in range(5):
            assert s.emit("web", {**RECORD, "log": "seed %d" % i}), s.last_error
        s.emit("web", {"TENANT_ID": "tc", "SERVICE_ID": "sc", "message": "via message key"})
        msgs = sub.recv_n(6)
    finally:
        s.close()
    assert msgs == [[b"tc", b"sc", b"app.web: seed %d" % i] for i in range(5)] + [
        [b"tc", b"sc", b"app.web: via message key"]]


def test_fluent_sender_integer_time(gw, sub):
    host, port = gw.addr
    s = sender.FluentSender("app", host=host, port=port)  # integer seconds
    try:
        assert s.emit_with_time("int", 1700000000, RECORD), s.last_error
        [m] = sub.recv_n(1)
    finally:
        s.close()
    assert m == [b"tc", b"sc", b"app.int: hello from fluent-logger"]


def test_fluent_sender_unix(start_gateway, subscribe, tmp_path):
    path = str(tmp_path / "fl.sock")
    gw = start_gateway("--unix", path, "--format", "json")
    sub = subscribe(gw)
    s = sender.FluentSender("app", host="unix://" + path, nanosecond_precision=True)
    try:
        assert s.emit_with_time("unix", sender.EventTime.from_unix_nano(NS), RECORD), s.last_error
        [m] = sub.recv_n(1)
    finally:
        s.close()
    t, sv, obj = json_frames(m)
    assert (t, sv) == (b"tc", b"sc")
    assert obj["tag"] == "app.unix"
    assert obj["time_ns"] == NS
    assert obj["record"] == RECORD
    assert isinstance(obj["peer"], str)


def test_async_sender(jgw, jsub):
    host, port = jgw.addr
    s = asyncsender.FluentSender("app", host=host, port=port, nanosecond_precision=True)
    n = 200
    try:
        for i in range(n):
            assert s.emit_with_time("async", sender.EventTime.from_unix_nano(NS + i),
                                    {**RECORD, "log": "async %03d" % i, "i": i})
    finally:
        s.close()  # flushes the queue and joins the sending thread
    msgs = jsub.recv_n(n, timeout=20)
    for i, m in enumerate(msgs):
        t, sv, obj = json_frames(m)
        assert (t, sv) == (b"tc", b"sc")
        assert obj["tag"] == "app.async"
        assert obj["time_ns"] == NS + i
        assert obj["record"] == {**RECORD, "log": "async %03d" % i, "i": i}
    assert jsub.sync(jgw) == []


def test_logging_handler(gw, sub):
    host, port = gw.addr
    h = handler.FluentHandler("app.logging", host=host, port=port, nanosecond_precision=True)
    h.setFormatter(handler.FluentRecordFormatter({"TENANT_ID": "%(tenant)s", "SERVICE_ID": "%(name)s"}))
    log = logging.getLogger("svc-" + uuid.uuid4().hex[:8])
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(h)
    try:
        log.info("hello from logging", extra={"tenant": "th"})
        log.warning({"log": "dict message", "k": "v"}, extra={"tenant": "th"})
        msgs = sub.recv_n(2)
    finally:
        log.removeHandler(h)
        h.close()
    assert msgs == [
        [b"th", log.name.encode(), b"app.logging: hello from logging"],
        [b"th", log.name.encode(), b"app.logging: dict message"],
    ]
