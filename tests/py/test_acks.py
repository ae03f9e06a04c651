"""Acknowledgements: exact bytes, echo of the chunk's encoding form, none without chunk,
pipelining and Docker-style lock-step."""

import base64
import os

import pytest

import fwd
from fwd import Raw, ack, bin8, entry_stream, forward, message, option, packed_forward, str8, str16

T0 = 1700000000


def seed(tenant, service, tag, line):
    return [tenant.encode(), service.encode(), ("%s: %s" % (tag, line)).encode()]


def test_ack_bytes_are_msgpack_map():
    assert ack("abc") == b"\x81\xa3ack\xa3abc"
    assert ack(str8("hello")) == b"\x81\xa3ack\xd9\x05hello"


def test_ack_message_fixstr_chunk(gw, sub):
    # fluent-logger-golang's chunk: base64 of 16 random bytes, 24 chars -> fixstr
    chunk = base64.b64encode(os.urandom(16)).decode()
    assert len(chunk) == 24
    with gw.connect() as c:
        c.send(message("app", T0, fwd.rec("acked", tenant="ta"), option(chunk=chunk)))
        expected = b"\x81\xa3ack" + bytes([0xA0 | 24]) + chunk.encode()
        assert c.recv_exact(len(expected)) == expected
        assert sub.recv_n(1) == [seed("ta", "default", "app", "acked")]
        assert c.read_available(0.2) == b""


@pytest.mark.parametrize(
    "chunk_raw",
    [
        Raw(b"\xd9\x05hello"),  # str8 for a 5-char string (non-minimal form)
        Raw(b"\xda\x00\x05hello"),  # str16
        Raw(b"\xdb\x00\x00\x00\x05hello"),  # str32
        str8("x" * 200),
        str16("y" * 300),
        Raw(b"\xa0"),  # empty fixstr
    ],
    ids=["str8_short", "str16_short", "str32_short", "str8_200", "str16_300", "empty"],
)
def test_ack_echoes_chunk_encoding_verbatim(gw, sub, chunk_raw):
    with gw.connect() as c:
        c.send(message("app", T0, fwd.rec("verbatim"), option(("chunk", chunk_raw))))
        expected = b"\x81\xa3ack" + bytes(chunk_raw)
        assert c.recv_exact(len(expected)) == expected
        assert c.read_available(0.2) == b""
    assert sub.recv_n(1) == [seed("default", "default", "app", "verbatim")]


def test_ack_chunk_position_in_option_does_not_matter(gw, sub):
    opt = option(("size", 1), ("compressed", "text"), ("chunk", str8("mid")), ("zz", 1))
    with gw.connect() as c:
        c.send(message("app", T0, fwd.rec("pos"), opt))
        assert c.recv_exact(len(ack(str8("mid")))) == ack(str8("mid"))
    assert sub.recv_n(1) == [seed("default", "default", "app", "pos")]


def test_ack_forward_mode(gw, sub):
    with gw.connect() as c:
        c.send(forward("app", [(T0, fwd.rec("f1")), (T0, fwd.rec("f2"))], option(chunk="fwd-1")))
        assert c.recv_exact(len(ack("fwd-1"))) == ack("fwd-1")
    assert sub.recv_n(2) == [seed("default", "default", "app", "f1"), seed("default", "default", "app", "f2")]


def test_ack_packed_forward_mode(gw, sub):
    stream = entry_stream([(fwd.t_event(T0, 0), fwd.rec("p1")), (fwd.t_event(T0, 1), fwd.rec("p2"))])
    with gw.connect() as c:
        c.send(packed_forward("app", stream, option(size=2, chunk=str8("packed")), container=bin8))
        assert c.recv_exact(len(ack(str8("packed")))) == ack(str8("packed"))
    assert sub.recv_n(2) == [seed("default", "default", "app", "p1"), seed("default", "default", "app", "p2")]


@pytest.mark.parametrize(
    "opt",
    [fwd.ABSENT, {}, None, {"size": 1}, {"compressed": "text"}],
    ids=["absent", "empty", "nil", "size_only", "compressed_text"],
)
def test_no_ack_without_chunk(gw, sub, opt):
    with gw.connect() as c:
        if opt == {"compressed": "text"}:
            c.send(packed_forward("app", fwd.entry(T0, fwd.rec("noack")), opt))
        else:
            c.send(message("app", T0, fwd.rec("noack"), opt))
        assert sub.recv_n(1) == [seed("default", "default", "app", "noack")]
        assert c.read_available(0.5) == b""
        c.send(message("app", T0, fwd.rec("withack"), option(chunk="next")))
        assert c.recv_exact(len(ack("next"))) == ack("next")
        assert sub.recv_n(1) == [seed("default", "default", "app", "withack")]
        assert c.read_available(0.2) == b""


def test_pipelined_acks_in_order(gw, sub):
    chunks = ["c%d" % i for i in range(20)]
    data = b""
    for i, ch in enumerate(chunks):
        data += message("app", T0, fwd.rec("pipe %d" % i), option(chunk=ch))
        if i % 3 == 0:
            data += message("app", T0, fwd.rec("pipe %d noack" % i))
    expected = b"".join(ack(ch) for ch in chunks)
    with gw.connect() as c:
        c.send(data)
        assert c.recv_exact(len(expected)) == expected
        assert c.read_available(0.2) == b""
    msgs = sub.recv_n(20 + 7)
    lines = [m[2] for m in msgs]
    expected_lines = []
    for i in range(20):
        expected_lines.append(("app: pipe %d" % i).encode())
        if i % 3 == 0:
            expected_lines.append(("app: pipe %d noack" % i).encode())
    assert lines == expected_lines


def test_ack_means_published(gw, sub):
    """After the ack arrives the line must reach the subscriber (the ack is a promise)."""
    with gw.connect() as c:
        for i in range(50):
            c.send(message("app", T0, fwd.rec("promise %d" % i), option(chunk="pr%d" % i)))
            assert c.recv_exact(len(ack("pr%d" % i))) == ack("pr%d" % i)
            assert sub.recv(5.0) == seed("default", "default", "app", "promise %d" % i)


def test_same_chunk_resent_is_acked_again_and_published_once(gw, sub):
    """Docker resends the same bytes with the same chunk after a lost ack: the resend is
    acked again (on the new connection) but not published twice."""
    data = message("app", T0, fwd.rec("dup"), option(chunk="same"))
    with gw.connect() as c:
        c.send(data)
        assert c.recv_exact(len(ack("same"))) == ack("same")
    with gw.connect() as c:
        c.send(data)
        assert c.recv_exact(len(ack("same"))) == ack("same")
    assert sub.recv_n(1) == [seed("default", "default", "app", "dup")]
    assert sub.sync(gw) == [], "the resent chunk was published again"
    # a new chunk id with the same record is a new request
    with gw.connect() as c:
        c.send(message("app", T0, fwd.rec("dup"), option(chunk="other")))
        assert c.recv_exact(len(ack("other"))) == ack("other")
    assert sub.recv_n(1) == [seed("default", "default", "app", "dup")]
    gw.stop()
    stopped = gw.wait_log(lambda raw, obj: "fwdgate stopped" in raw, timeout=10)
    assert stopped is not None and " duplicates=1 " in stopped, stopped


def test_dedup_window_zero_publishes_resends(start_gateway, subscribe, tmp_path):
    cfg = tmp_path / "nodedup.toml"
    cfg.write_text("[input]\ndedup_window = 0\n")
    gw = start_gateway("--config", str(cfg))
    sub = subscribe(gw)
    data = message("app", T0, fwd.rec("dup"), option(chunk="same"))
    for _ in range(2):
        with gw.connect() as c:
            c.send(data)
            assert c.recv_exact(len(ack("same"))) == ack("same")
    assert sub.recv_n(2) == [seed("default", "default", "app", "dup")] * 2


def test_lockstep_acks_2000(gw, subscribe):
    """Like Docker's fluentd-request-ack: one event, wait for its ack, next."""
    s = subscribe(gw, b"lock")
    n = 2000
    with gw.connect() as c:
        for i in range(n):
            ch = "lock-%05d" % i
            c.send(message("ctr", fwd.t_event(T0, i), fwd.rec("line %05d" % i, tenant="lock", service="s"),
                           option(chunk=ch)))
            got = c.recv_exact(len(ack(ch)), timeout=10)
            assert got == ack(ch), "request %d: ack %r" % (i, got)
        assert c.read_available(0.2) == b""
    msgs = s.recv_n(n, timeout=30)
    assert [m[2] for m in msgs] == [("ctr: line %05d" % i).encode() for i in range(n)]
    assert all(m[:2] == [b"lock", b"s"] for m in msgs)
    assert s.sync(gw) == []


def test_null_format_acks_and_publishes_nothing(start_gateway, subscribe):
    """`--format null` accepts, acks and counts events but publishes nothing."""
    import re
    import zmq

    gw = start_gateway("--format", "null")
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.SUB)
    s.connect(gw.zmq_bind[0])
    s.subscribe(b"")
    try:
        with gw.connect() as c:
            for i in range(100):
                chunk = "n%d" % i
                c.send(message("app", T0, fwd.rec("line %d" % i, tenant="tn"), option(chunk=chunk)))
                assert c.recv_exact(len(ack(chunk))) == ack(chunk)
        assert s.poll(300) == 0, "null format published something"
    finally:
        s.close(0)
    gw.stop()
    stopped = gw.wait_log(lambda raw, obj: "fwdgate stopped" in raw, timeout=10)
    assert stopped is not None, gw.stderr_text()
    assert re.search(r"events_published=0 events_discarded=100 ", stopped), stopped
    assert re.search(r"acks=100 ", stopped), stopped


def test_requests_read_together_keep_order_and_acks(gw, sub):
    """One write of Message requests with two tags, a heartbeat, Forward and gzip
    PackedForward: the gateway hands them off together, yet every line arrives in
    request order and every ack in request order, each exactly once."""
    packed = entry_stream([(T0, fwd.rec("packed 1")), (T0, fwd.rec("packed 2"))])
    requests = [
        message("app", T0, fwd.rec("m1"), option(chunk="k1")),
        message("app", T0, fwd.rec("m2")),
        b"\xc0",
        message("web", T0, fwd.rec("m3"), option(chunk="k2")),
        message("app", T0, fwd.rec("m4"), option(chunk="k3")),
        forward("fwd", [(T0, fwd.rec("f1")), (T0, fwd.rec("f2"))], option(chunk="k4")),
        packed_forward("gz", fwd.gzip_members(packed), option(chunk="k5", compressed="gzip")),
        message("app", T0, fwd.rec("m5"), option(chunk="k6")),
    ]
    expected_acks = b"".join(ack("k%d" % i) for i in range(1, 7))
    with gw.connect() as c:
        c.send(b"".join(requests))
        assert c.recv_exact(len(expected_acks)) == expected_acks
        assert c.read_available(0.2) == b""
    lines = [m[2] for m in sub.recv_n(9)]
    assert lines == [b"app: m1", b"app: m2", b"web: m3", b"app: m4", b"fwd: f1", b"fwd: f2",
                     b"gz: packed 1", b"gz: packed 2", b"app: m5"]
    assert sub.sync(gw) == []


def test_chunk_resent_in_the_same_write_is_published_once(gw, sub):
    """A resend that arrives in the same read as the original is acked twice and
    published once."""
    data = message("app", T0, fwd.rec("twice in one write"), option(chunk="same-read"))
    with gw.connect() as c:
        c.send(data + data)
        assert c.recv_exact(2 * len(ack("same-read"))) == 2 * ack("same-read")
    assert sub.recv_n(1) == [seed("default", "default", "app", "twice in one write")]
    assert sub.sync(gw) == [], "the resend was published again"
