"""Bad input: every case runs next to a well-behaved client connected *before* the bad one,
which must still get its line published and its ack afterwards. Requests the gateway cannot
trust close that connection (promptly, with one WARN naming the peer) and publish nothing;
invalid events inside a valid request are skipped."""

import struct

import pytest

import fwd
from conftest import Gateway
from fwd import Raw, ack, bin32, entry_stream, forward, message, option, packed_forward

T0 = 1700000000


class Good:
    """The well-behaved neighbour connection."""

    def __init__(self, gw, sub):
        self.gw, self.sub = gw, sub
        self.c = gw.connect()
        self.n = 0

    def roundtrip(self):
        """One acked line; it must be the very next publication."""
        self.n += 1
        chunk = "good-%d" % self.n
        line = "good line %d" % self.n
        self.c.send(message("good", T0, fwd.rec(line, tenant="tgood", service="sgood"), option(chunk=chunk)))
        assert self.c.recv_exact(len(ack(chunk)), timeout=10) == ack(chunk)
        got = self.sub.recv(10)
        assert got == [b"tgood", b"sgood", ("good: " + line).encode()], (
            "expected the good client's line next, got %r" % (got,))

    def close(self):
        self.c.close()


@pytest.fixture
def good(gw, sub):
    g = Good(gw, sub)
    g.roundtrip()
    yield g
    g.close()


def assert_closed_with_warning(gw, sub, good, payload, close_timeout=5.0):
    bad = gw.connect()
    peer = bad.local
    try:
        bad.send_tolerant(payload)
        closed, data = bad.wait_closed(close_timeout)
        assert closed, "gateway did not close the bad connection within %.0fs" % close_timeout
        assert data == b"", "gateway wrote %r to the bad connection" % data[:100]
    finally:
        bad.close()
    good.roundtrip()
    assert sub.sync(gw) == [], "something was published from the bad connection"
    sub.expect_silence(0.3)
    warn = gw.wait_log(Gateway.is_warn_about(peer), timeout=5)
    assert warn is not None, "no WARN log line naming %s; stderr:\n%s" % (peer, gw.stderr_text())
    warns = gw.log_lines(Gateway.is_warn_about(peer))
    assert len(warns) == 1, "expected one WARN naming %s, got %d:\n%s" % (peer, len(warns), "\n".join(warns))
    # the neighbour was not blamed
    assert gw.log_lines(Gateway.is_warn_about(good.c.local)) == []
    good.roundtrip()


CLOSING_CASES = [
    ("reserved_byte_c1", b"\xc1"),
    ("http_request", b"GET / HTTP/1.1\r\n\r\n"),
    ("top_level_map", b"\x81\xa1a\x01"),
    ("top_level_int", b"\x05"),
    ("array_of_one", b"\x91\xa3tag"),
    ("str32_4gib", b"\x93\xa3tag\xdb\xff\xff\xff\xff"),
    ("bin32_4gib_entries", b"\x93\xa3tag\xc6\xff\xff\xff\xff"),
    ("str32_17mib_log", b"\x93\xa3tag\xce" + struct.pack(">I", T0) + b"\x81\xa3log\xdb"
     + struct.pack(">I", 17 << 20) + b"x" * 4096),
    ("array32_count_ffffffff", b"\xdd\xff\xff\xff\xff"),
    ("array32_count_ffffffff_entries", b"\x92\xa3tag\xdd\xff\xff\xff\xff"),
    ("map32_count_ffffffff_record", b"\x93\xa3tag\x01\xdf\xff\xff\xff\xff"),
    ("nesting_100000", b"\x91" * 100000),
    ("nesting_100000_in_record", b"\x93\xa3tag\x01\x81\xa1a" + b"\x91" * 100000),
    ("tag_int", message(123, T0, fwd.rec("int tag"))),
    ("tag_nil", message(None, T0, fwd.rec("nil tag"))),
    ("tag_map", message({"t": "x"}, T0, fwd.rec("map tag"))),
    ("json_invalid", b'["tag", 1700000000, {"log": ]]]'),
    ("json_object_not_array", b'{"tag": "t", "log": "x"}'),
    ("json_tag_not_string", b'[5, 1700000000, {"log": "x"}]'),
]


@pytest.mark.parametrize("name,payload", CLOSING_CASES, ids=[c[0] for c in CLOSING_CASES])
def test_untrusted_request_closes_connection(gw, sub, good, name, payload):
    assert_closed_with_warning(gw, sub, good, payload)


def test_valid_request_then_garbage(gw, sub, good):
    """A valid request before the garbage is published; nothing after it."""
    bad = gw.connect()
    peer = bad.local
    bad.send(message("bad", T0, fwd.rec("valid before garbage", tenant="tbad"), option(chunk="b1")))
    assert bad.recv_exact(len(ack("b1"))) == ack("b1")
    assert sub.recv(10) == [b"tbad", b"default", b"bad: valid before garbage"]
    bad.send_tolerant(b"\xc1" + message("bad", T0, fwd.rec("after garbage", tenant="tbad")))
    closed, data = bad.wait_closed(5)
    bad.close()
    assert closed and data == b""
    good.roundtrip()
    assert sub.sync(gw) == []
    assert gw.wait_log(Gateway.is_warn_about(peer), timeout=5) is not None


def test_valid_requests_and_garbage_in_one_write(gw, sub, good):
    """Requests read in the same write as garbage after them are still published and
    acked before the connection is closed."""
    bad = gw.connect()
    peer = bad.local
    valid = b"".join(message("bad", T0, fwd.rec("valid %d" % i, tenant="tbad"), option(chunk="v%d" % i))
                     for i in range(3))
    bad.send_tolerant(valid + b"\xc1" + message("bad", T0, fwd.rec("after garbage", tenant="tbad")))
    expected = b"".join(ack("v%d" % i) for i in range(3))
    assert bad.recv_exact(len(expected)) == expected
    closed, data = bad.wait_closed(5)
    bad.close()
    assert closed and data == b""
    assert sub.recv_n(3) == [[b"tbad", b"default", b"bad: valid %d" % i] for i in range(3)]
    good.roundtrip()
    assert sub.sync(gw) == []
    assert gw.wait_log(Gateway.is_warn_about(peer), timeout=5) is not None


def test_truncated_frame_then_client_closes(gw, sub, good):
    data = message("trunc", T0, fwd.rec("never complete", tenant="tbad"), option(chunk="t1"))
    bad = gw.connect()
    bad.send(data[: len(data) // 2])
    bad.close()
    good.roundtrip()
    assert sub.sync(gw) == []
    sub.expect_silence(0.3)
    good.roundtrip()


def test_truncated_frame_half_close(gw, sub, good):
    """Client shuts down its write side mid-frame: nothing published, no ack, connection ends."""
    import socket as _s
    data = message("trunc", T0, fwd.rec("never complete", tenant="tbad"), option(chunk="t2"))
    bad = gw.connect()
    bad.send(data[:-1])
    bad.sock.shutdown(_s.SHUT_WR)
    closed, got = bad.wait_closed(5)
    bad.close()
    assert closed and got == b""
    good.roundtrip()
    assert sub.sync(gw) == []


def test_gzip_bomb(gw, sub, good, gzip_bomb_bytes):
    assert len(gzip_bomb_bytes) < 2 << 20
    payload = packed_forward("bomb", gzip_bomb_bytes, option(compressed="gzip", chunk="bomb"), container=bin32)
    assert_closed_with_warning(gw, sub, good, payload, close_timeout=10.0)


def test_forward_invalid_events_skipped(gw, sub, good):
    entries = [
        (T0, fwd.rec("valid a", tenant="tmix")),
        (T0, "not a map"),
        (T0, fwd.rec("valid b", tenant="tmix")),
        (T0, 5),
        (T0, [1, 2]),
        (T0, None),
        ("not a time", fwd.rec("bad time", tenant="tmix")),
        ({"t": 1}, fwd.rec("map time", tenant="tmix")),
        (fwd.t_event(T0, 1), fwd.rec("valid c", tenant="tmix")),
    ]
    with gw.connect() as c:
        peer = c.local
        c.send(forward("mix", entries, option(chunk="mix")))
        assert c.recv_exact(len(ack("mix"))) == ack("mix")
        # counted and logged once per request, not once per event
        assert gw.wait_log(lambda raw, obj: peer in raw, timeout=5) is not None
        mentions = gw.log_lines(lambda raw, obj: peer in raw)
        assert len(mentions) == 1, mentions
        assert sub.recv_n(3) == [
            [b"tmix", b"default", b"mix: valid a"],
            [b"tmix", b"default", b"mix: valid b"],
            [b"tmix", b"default", b"mix: valid c"],
        ]
        # the connection stays usable
        c.send(message("mix", T0, fwd.rec("valid d", tenant="tmix"), option(chunk="mix2")))
        assert c.recv_exact(len(ack("mix2"))) == ack("mix2")
        assert sub.recv_n(1) == [[b"tmix", b"default", b"mix: valid d"]]
    good.roundtrip()
    assert sub.sync(gw) == []


def test_packed_forward_invalid_events_skipped(gw, sub, good):
    stream = (
        fwd.entry(T0, fwd.rec("p valid a", tenant="tmix"))
        + fwd.entry(T0, "not a map")
        + fwd.entry("not a time", fwd.rec("p bad time", tenant="tmix"))
        + fwd.entry(T0, fwd.rec("p valid b", tenant="tmix"))
    )
    with gw.connect() as c:
        c.send(packed_forward("pmix", stream, option(chunk="pmix")))
        assert c.recv_exact(len(ack("pmix"))) == ack("pmix")
        assert sub.recv_n(2) == [
            [b"tmix", b"default", b"pmix: p valid a"],
            [b"tmix", b"default", b"pmix: p valid b"],
        ]
    good.roundtrip()
    assert sub.sync(gw) == []


def test_many_bad_connections_do_not_disturb(gw, sub, good):
    for payload in (b"\xc1", b"\xdd\xff\xff\xff\xff", b"GET / HTTP/1.1\r\n\r\n") * 5:
        bad = gw.connect()
        bad.send_tolerant(payload)
        closed, data = bad.wait_closed(5)
        bad.close()
        assert closed and data == b""
        good.roundtrip()
    assert sub.sync(gw) == []


def test_message_mode_record_not_a_map_skipped(gw, sub, good):
    with gw.connect() as c:
        c.send(message("m", T0, "not a map", option(chunk="nm1")))
        assert c.recv_exact(len(ack("nm1"))) == ack("nm1")
        c.send(message("m", T0, fwd.rec("still open", tenant="tmix"), option(chunk="nm2")))
        assert c.recv_exact(len(ack("nm2"))) == ack("nm2")
        assert sub.recv_n(1) == [[b"tmix", b"default", b"m: still open"]]
    good.roundtrip()
    assert sub.sync(gw) == []
