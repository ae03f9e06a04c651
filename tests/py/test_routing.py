"""Tenant / service routing, container id, line selection and exact-tenant subscriptions,
checked on the seed format frames."""

import json

import pytest

import fwd
from fwd import message

T0 = 1700000000
CID = "3f2a9c81b0d4" + "e" * 52


def send_and_recv(gw, sub, tag, records):
    with gw.connect() as c:
        c.send(b"".join(message(tag, T0, r) for r in records))
        return sub.recv_n(len(records))


def test_default_keys(gw, sub):
    msgs = send_and_recv(gw, sub, "app", [
        {"log": "hello", "TENANT_ID": "t1", "SERVICE_ID": "s1", "container_id": CID},
        {"log": "no service", "TENANT_ID": "t2"},
        {"log": "no tenant", "SERVICE_ID": "s3"},
        {"log": "neither"},
    ])
    assert msgs == [
        [b"t1", b"s1", b"3f2a9c81b0d4: hello"],
        [b"t2", b"default", b"app: no service"],
        [b"default", b"s3", b"app: no tenant"],
        [b"default", b"default", b"app: neither"],
    ]
    assert sub.sync(gw) == []


def test_non_string_key_values_are_skipped(gw, sub):
    msgs = send_and_recv(gw, sub, "app", [
        {"log": "int", "TENANT_ID": 5, "SERVICE_ID": 7},
        {"log": "nil", "TENANT_ID": None, "SERVICE_ID": None},
        {"log": "map", "TENANT_ID": {"a": "b"}, "SERVICE_ID": ["s"]},
    ])
    assert msgs == [
        [b"default", b"default", b"app: int"],
        [b"default", b"default", b"app: nil"],
        [b"default", b"default", b"app: map"],
    ]


def test_pairs_with_non_string_keys_are_skipped_whole(gw, sub):
    """A pair whose key is not a string is skipped, key and value: its value is never
    read as a key, so the pairs after it route as written."""
    msgs = send_and_recv(gw, sub, "app", [
        {1: "TENANT_ID", "x": "wrong", "TENANT_ID": "tkeys", "log": "int key"},
        {None: "SERVICE_ID", "SERVICE_ID": "skeys", "log": "nil key"},
        {(1, 2): "TENANT_ID", "TENANT_ID": "tkeys", "log": "array key"},
    ])
    assert msgs == [
        [b"tkeys", b"default", b"app: int key"],
        [b"default", b"skeys", b"app: nil key"],
        [b"tkeys", b"default", b"app: array key"],
    ]


def test_custom_tenant_and_service_keys_in_order(start_gateway, subscribe):
    gw = start_gateway("--tenant-key", "tenant", "--tenant-key", "ns",
                       "--service-key", "svc", "--service-key", "app")
    sub = subscribe(gw)
    msgs = send_and_recv(gw, sub, "tg", [
        {"log": "both", "tenant": "first", "ns": "second", "svc": "s-first", "app": "s-second"},
        {"log": "second only", "ns": "second", "app": "s-second"},
        {"log": "first not string", "tenant": 12, "ns": "second", "svc": None, "app": "s-second"},
        {"log": "default keys ignored", "TENANT_ID": "t", "SERVICE_ID": "s"},
    ])
    assert msgs == [
        [b"first", b"s-first", b"tg: both"],
        [b"second", b"s-second", b"tg: second only"],
        [b"second", b"s-second", b"tg: first not string"],
        [b"default", b"default", b"tg: default keys ignored"],
    ]


def test_tag_regex(start_gateway, subscribe):
    gw = start_gateway("--tag-regex", r"^(?P<tenant>[^.]+)\.(?P<service>[^.]+)")
    sub = subscribe(gw)
    with gw.connect() as c:
        c.send(message("acme.web", T0, {"log": "from regex"}))
        c.send(message("acme.web.extra", T0, {"log": "longer tag"}))
        c.send(message("acme.web", T0, {"log": "keys win", "TENANT_ID": "kt", "SERVICE_ID": "ks"}))
        c.send(message("acme.web", T0, {"log": "tenant key only", "TENANT_ID": "kt"}))
        c.send(message("nodots", T0, {"log": "no match"}))
        msgs = sub.recv_n(5)
    assert msgs == [
        [b"acme", b"web", b"acme.web: from regex"],
        [b"acme", b"web", b"acme.web.extra: longer tag"],
        [b"kt", b"ks", b"acme.web: keys win"],
        [b"kt", b"web", b"acme.web: tenant key only"],
        [b"default", b"default", b"nodots: no match"],
    ]


def test_container_id_first_12_chars_else_tag(gw, sub):
    msgs = send_and_recv(gw, sub, "my.tag", [
        {"log": "full id", "container_id": CID},
        {"log": "exactly 12", "container_id": CID[:12]},
        {"log": "no id"},
    ])
    assert [m[2] for m in msgs] == [
        b"3f2a9c81b0d4: full id",
        b"3f2a9c81b0d4: exactly 12",
        b"my.tag: no id",
    ]


def test_line_selection(gw, sub):
    whole = {"msg": "neither", "level": "info", "n": 3, "nested": {"a": [1, 2]}}
    msgs = send_and_recv(gw, sub, "app", [
        {"log": "the log", "message": "the message"},
        {"message": "only message"},
        whole,
    ])
    assert msgs[0][2] == b"app: the log"
    assert msgs[1][2] == b"app: only message"
    prefix, sep, rest = msgs[2][2].partition(b": ")
    assert (prefix, sep) == (b"app", b": ")
    assert json.loads(rest) == whole
    assert b"\n" not in rest


def test_docker_style_record(gw, sub):
    record = {
        "container_id": CID,
        "container_name": "/web-1",
        "source": "stdout",
        "log": "GET /index.html 200",
        "TENANT_ID": "acme",
        "SERVICE_ID": "web",
    }
    with gw.connect() as c:
        c.send(message(CID[:12], fwd.t_int32(T0), record, {}))
        assert sub.recv_n(1) == [[b"acme", b"web", b"3f2a9c81b0d4: GET /index.html 200"]]


def test_json_format_frames_1_and_2(start_gateway, subscribe):
    gw = start_gateway("--format", "json", "--topic-suffix", "|")
    sub = subscribe(gw)
    with gw.connect() as c:
        c.send(message("app", T0, fwd.rec("j", tenant="t1", service="s1")))
        [m] = sub.recv_n(1)
    assert m[:2] == [b"t1|", b"s1"]
    assert json.loads(m[2])["record"] == fwd.rec("j", tenant="t1", service="s1")


# ------------------------------------------------------------------ exact-tenant subscriptions


def _send_t1_t10(gw):
    with gw.connect() as c:
        c.send(message("app", T0, fwd.rec("t10 a", tenant="t10"))
               + message("app", T0, fwd.rec("t1 a", tenant="t1"))
               + message("app", T0, fwd.rec("t10 b", tenant="t10"))
               + message("app", T0, fwd.rec("t1 b", tenant="t1")))


def test_topic_suffix_gives_exact_tenant(start_gateway, subscribe):
    gw = start_gateway("--topic-suffix", "|")
    sub = subscribe(gw, b"t1|")
    _send_t1_t10(gw)
    assert sub.recv_n(2) == [[b"t1|", b"default", b"app: t1 a"], [b"t1|", b"default", b"app: t1 b"]]
    assert sub.sync(gw) == []


def test_without_suffix_prefix_matches_longer_tenants(gw, subscribe):
    """Documents the ZeroMQ prefix trap: a subscription to t1 also receives t10."""
    sub = subscribe(gw, b"t1")
    _send_t1_t10(gw)
    assert sub.recv_n(4) == [
        [b"t10", b"default", b"app: t10 a"],
        [b"t1", b"default", b"app: t1 a"],
        [b"t10", b"default", b"app: t10 b"],
        [b"t1", b"default", b"app: t1 b"],
    ]
    assert sub.sync(gw) == []


def test_topic_suffix_multichar(start_gateway, subscribe):
    gw = start_gateway("--topic-suffix", "::")
    sub = subscribe(gw, b"t1::")
    _send_t1_t10(gw)
    assert sub.recv_n(2) == [[b"t1::", b"default", b"app: t1 a"], [b"t1::", b"default", b"app: t1 b"]]
    assert sub.sync(gw) == []


# ------------------------------------------------------------------ fwdgate tail


def _tail_until(tail, end_line, timeout=10.0):
    out = []
    while True:
        ln = tail.line(timeout)
        assert ln is not None, "tail stopped printing before %r; got %r; stderr:\n%s" % (
            end_line, out, tail.stderr_text())
        out.append(ln)
        if ln == end_line:
            return out


def _send(gw, items):
    with gw.connect() as c:
        c.send(b"".join(message("app", T0, fwd.rec(line, tenant=t, service=s)) for t, s, line in items))


def test_tail_tenant_exact(gw, start_tail):
    tail = start_tail("--connect", gw.zmq_bind[0], "--tenant", "t1")
    assert tail.wait_ready(gw, "t1", "default") == []
    _send(gw, [("t10", None, "t10 a"), ("t1", None, "t1 a"), ("t10", None, "t10 b"),
               ("t1", "other", "t1 b"), ("t2", None, "t2 c"), ("t1", None, "end")])
    assert _tail_until(tail, b"app: end") == [b"app: t1 a", b"app: t1 b", b"app: end"]


def test_tail_tenant_and_service(gw, start_tail):
    tail = start_tail("--connect", gw.zmq_bind[0], "--tenant", "t1", "--service", "s1")
    assert tail.wait_ready(gw, "t1", "s1") == []
    _send(gw, [("t1", "s1", "a"), ("t1", "s2", "x"), ("t10", "s1", "y"), ("t1", "s10", "z"),
               ("t1", None, "w"), ("t1", "s1", "b"), ("t1", "s1", "end")])
    assert _tail_until(tail, b"app: end") == [b"app: a", b"app: b", b"app: end"]


def test_tail_topic_suffix(start_gateway, start_tail):
    gw = start_gateway("--topic-suffix", "|")
    tail = start_tail("--connect", gw.zmq_bind[0], "--tenant", "t1", "--topic-suffix", "|")
    assert tail.wait_ready(gw, "t1", "default") == []
    _send(gw, [("t10", None, "t10 a"), ("t1", None, "t1 a"), ("t10", None, "t10 b"),
               ("t1", None, "t1 b"), ("t1", None, "end")])
    assert _tail_until(tail, b"app: end") == [b"app: t1 a", b"app: t1 b", b"app: end"]


def test_source_address_and_hostname_keys(start_gateway, subscribe, tmp_path):
    """input.source_address_key / source_hostname_key add the client's IP and host name
    (reverse DNS, compared with Python's own lookup) to each record, as Fluentd does."""
    import json
    import socket

    cfg = tmp_path / "src.toml"
    cfg.write_text('[input]\nsource_address_key = "source_ip"\nsource_hostname_key = "source_host"\n'
                   '[output]\nformat = "json"\n')
    gw = start_gateway("--config", str(cfg))
    sub = subscribe(gw, b"tsrc")
    with gw.connect() as c:
        c.send(fwd.message("app", 1700000000, {"log": "hi", "TENANT_ID": "tsrc"}, fwd.option(chunk="s")))
        assert c.recv_exact(len(fwd.ack("s"))) == fwd.ack("s")
    [m] = sub.recv_n(1)
    record = json.loads(m[2])["record"]
    try:
        want_host = socket.gethostbyaddr("127.0.0.1")[0]
    except OSError:
        want_host = "127.0.0.1"
    assert record == {"source_ip": "127.0.0.1", "source_host": want_host, "log": "hi", "TENANT_ID": "tsrc"}
