"""Python fluent-logger, beyond tests/py/test_clients.py: the sync sender's pending buffer
when the gateway comes up late, bytes and non-ASCII values, a 1 MiB record, deep
nesting, the async sender over a unix socket (EventTime, nested records, seed frames),
and the async sender with integer times."""

from __future__ import annotations

import base64
import json

from fluent import asyncsender, sender

import peers
from peers import recv_n, settle

PEER = "python fluent-logger"
NS = 1700000000 * 10**9 + 987654321


def frames_json(m):
    assert len(m) == 3
    return m[0], m[1], json.loads(m[2])


def test_sync_sender_keeps_pending_until_gateway_is_up(start_gateway, subscribe):
    """Emits while nothing listens fail and are kept in the sender's buffer; the first
    emit after the gateway is up sends them first, in order, with their own times."""
    port = peers.free_port()
    s = sender.FluentSender("app", host="127.0.0.1", port=port, nanosecond_precision=True, timeout=5)
    try:
        rec = {"TENANT_ID": "tp", "SERVICE_ID": "sp"}
        assert not s.emit_with_time("late", sender.EventTime.from_unix_nano(NS), {**rec, "log": "before-1"})
        assert isinstance(s.last_error, ConnectionRefusedError), s.last_error
        assert not s.emit_with_time("late", sender.EventTime.from_unix_nano(NS + 1), {**rec, "log": "before-2"})
        gw = start_gateway("--format", "json", "--log-level", "debug", "--listen", "127.0.0.1:%d" % port,
                           listen=False)
        sub = subscribe(gw)
        assert s.emit_with_time("late", sender.EventTime.from_unix_nano(NS + 2), {**rec, "log": "after"}), s.last_error
        msgs = recv_n(sub, 3, 10, PEER, "records")
    finally:
        s.close()
    assert settle(gw, sub, PEER) == []
    objs = [frames_json(m) for m in msgs]
    assert [(t, sv) for t, sv, _ in objs] == [(b"tp", b"sp")] * 3
    assert [o["record"]["log"] for _, _, o in objs] == ["before-1", "before-2", "after"]
    assert [o["time_ns"] for _, _, o in objs] == [NS, NS + 1, NS + 2]
    assert {o["tag"] for _, _, o in objs} == {"app.late"}


def test_bytes_and_non_ascii_values(start_gateway, subscribe):
    """msgpack bin values and non-ASCII strings: valid UTF-8 comes through as text; a
    top-level value that is not UTF-8 keeps its exact bytes in bytes_base64 (U+FFFD in
    ``record``); nested invalid bytes are replaced by U+FFFD."""
    gw = start_gateway("--format", "json")
    sub = subscribe(gw)
    record = {"TENANT_ID": "tb", "log": "ünï ✓ 日本", "raw": b"\xff\xfe\x00ok", "okbin": b"fine",
              "nested": {"deep": [{"x": b"bin", "y": b"\xff"}]}, "ключ": "значение"}
    s = sender.FluentSender("app", host=gw.addr[0], port=gw.addr[1], nanosecond_precision=True)
    try:
        assert s.emit_with_time("bytes", sender.EventTime.from_unix_nano(NS), record), s.last_error
        [m] = recv_n(sub, 1, 10, PEER, "records")
    finally:
        s.close()
    t, sv, o = frames_json(m)
    assert (t, sv) == (b"tb", b"default")
    assert o["record"] == {"TENANT_ID": "tb", "log": "ünï ✓ 日本", "raw": "\ufffd\ufffd\x00ok", "okbin": "fine",
                           "nested": {"deep": [{"x": "bin", "y": "\ufffd"}]}, "ключ": "значение"}
    assert o["bytes_base64"] == {"raw": base64.b64encode(b"\xff\xfe\x00ok").decode()}
    assert o["time_ns"] == NS


def test_one_mib_record_and_deep_nesting(start_gateway, subscribe):
    gw = start_gateway("--format", "json")
    sub = subscribe(gw)
    big = "".join(chr(ord("a") + i % 26) for i in range(1 << 20))
    deep = {"leaf": "bottom"}
    for i in range(50):  # about 100 levels of nesting, under the gateway's max_depth of 128
        deep = {"d%d" % i: [deep]}
    s = sender.FluentSender("app", host=gw.addr[0], port=gw.addr[1], nanosecond_precision=True, timeout=10)
    try:
        assert s.emit_with_time("big", sender.EventTime.from_unix_nano(NS), {"TENANT_ID": "tg", "log": big}), \
            s.last_error
        assert s.emit_with_time("deep", sender.EventTime.from_unix_nano(NS), {"TENANT_ID": "tg", "deep": deep}), \
            s.last_error
        m1, m2 = recv_n(sub, 2, 20, PEER, "records")
    finally:
        s.close()
    _, _, o1 = frames_json(m1)
    assert o1["record"] == {"TENANT_ID": "tg", "log": big}
    _, _, o2 = frames_json(m2)
    assert o2["record"] == {"TENANT_ID": "tg", "deep": deep}
    assert o2["tag"] == "app.deep"
    assert gw.log_lines(lambda raw, obj: '"WARN"' in raw) == []


def test_async_sender_unix_seed_eventtime_nested(start_gateway, subscribe, tmp_path):
    path = str(tmp_path / "py.sock")
    gw = start_gateway("--unix", path, "--log-level", "debug")
    sub = subscribe(gw)
    n = 300
    s = asyncsender.FluentSender("py", host="unix://" + path, nanosecond_precision=True)
    try:
        for i in range(n):
            assert s.emit_with_time("async", sender.EventTime.from_unix_nano(NS + i),
                                    {"TENANT_ID": "tu", "SERVICE_ID": "su", "log": "line %d" % i,
                                     "nested": {"i": i, "list": [i, {"k": "v"}]}})
    finally:
        s.close()  # sends the queue, then closes
    msgs = recv_n(sub, n, 20, PEER + " (async, unix)", "records")
    assert settle(gw, sub, PEER) == []
    assert msgs == [[b"tu", b"su", b"py.async: line %d" % i] for i in range(n)]


def test_async_sender_integer_time(start_gateway, subscribe):
    gw = start_gateway("--format", "json")
    sub = subscribe(gw)
    s = asyncsender.FluentSender("py", host=gw.addr[0], port=gw.addr[1])  # integer seconds
    try:
        for i in range(50):
            assert s.emit_with_time("int", 1700000000 + i, {"TENANT_ID": "ti", "log": "int %d" % i})
    finally:
        s.close()
    msgs = recv_n(sub, 50, 20, PEER + " (async)", "records")
    for i, m in enumerate(msgs):
        _, _, o = frames_json(m)
        assert o["time_ns"] == (1700000000 + i) * 10**9
        assert o["time"].endswith(".000000000Z")
        assert o["record"] == {"TENANT_ID": "ti", "log": "int %d" % i}
    assert sub.sync(gw) == []
