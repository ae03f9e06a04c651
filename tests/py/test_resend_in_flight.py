"""A resend that arrives while its original is still in the gateway's hands: a client
sends a request with a chunk id, drops its connection at once, and sends the same bytes
again on a new connection (Fluent Bit after its ack timeout, fluent-logger-golang after
a write error). Whatever state the original is in — going to the memory queue, being
written to the spool, waiting for room in a full buffer, waiting for its place behind
an earlier request of the same client and tag — each line is published exactly once and
the resend is acked."""

import socket
import time

import pytest

import fwd
from fwd import ack, option
from test_metrics import get, metric

T0 = 1700000000
REQUESTS = 100
LINES = 100


def request(r, tenant="tr", lines=LINES):
    """Request ``r``: one Forward request of ``lines`` lines, with chunk id ``c<r>``."""
    chunk = "c%04d" % r
    entries = [(T0, {"TENANT_ID": tenant, "log": "r%04d-%04d" % (r, i)}) for i in range(lines)]
    return fwd.forward("app", entries, option(chunk=chunk)), chunk


def send_drop_and_resend(gw, data):
    """Sends ``data`` and closes at once; sends it again on a new connection, which is
    returned (its ack not read yet)."""
    first = socket.create_connection(gw.addr, timeout=10)
    first.sendall(data)
    first.close()
    resend = gw.connect()
    resend.send(data)
    return resend


def drop_then_resend(gw, data, chunk):
    """`send_drop_and_resend`, returning once the resend is acked."""
    with send_drop_and_resend(gw, data) as c:
        assert c.recv_exact(len(ack(chunk)), timeout=30) == ack(chunk)


def lines_of(msgs):
    return [m[2].split(b": ", 1)[1].decode() for m in msgs]


def assert_each_once(sub, gw, expected):
    got = lines_of(sub.sync(gw, timeout=30))
    dups = len(got) - len(set(got))
    assert dups == 0, "%d lines published twice, e.g. %r" % (dups, sorted(x for x in set(got) if got.count(x) > 1)[:5])
    assert sorted(got) == sorted(expected), "missing %d lines" % len(set(expected) - set(got))


def counters(gw):
    text = get(gw.ready_fields["metrics"], "/metrics")[1]
    return (metric(text, "fwdgate_requests_duplicate_total"), metric(text, "fwdgate_resend_waits_total"))


@pytest.mark.parametrize("spool", [False, True], ids=["memory queue", "spool"])
def test_a_resend_at_once_after_a_dropped_connection_is_published_once(start_gateway, subscribe, tmp_path, spool):
    extra = []
    if spool:
        cfg = tmp_path / "spool.toml"
        cfg.write_text('[spool]\ndir = "%s"\nfsync = "always"\n' % (tmp_path / "spool"))
        extra = ["--config", str(cfg)]
    gw = start_gateway("--metrics-listen", "127.0.0.1:0", *extra)
    sub = subscribe(gw)
    expected = []
    for r in range(REQUESTS):
        data, chunk = request(r)
        drop_then_resend(gw, data, chunk)
        expected += ["r%04d-%04d" % (r, i) for i in range(LINES)]
    assert_each_once(sub, gw, expected)
    # One of each pair is the duplicate: the resend, or the original when the resend
    # was read first (then it may be counted a moment after the resend's ack).
    wait_until(lambda: counters(gw)[0] == REQUESTS, "one duplicate per request")


def test_a_resend_while_the_original_waits_for_room(start_gateway, subscribe, tmp_path):
    cfg = tmp_path / "small.toml"
    cfg.write_text("[output]\nqueue_bytes = 65536\nwhen_full = \"block\"\n")
    gw = start_gateway("--metrics-listen", "127.0.0.1:0", "--config", str(cfg))
    # Nobody subscribed: a filler holds the queue, and the original waits for room.
    filler, filler_chunk = request(9999, tenant="filler", lines=3000)
    with gw.connect() as c:
        c.send(filler)
        assert c.recv_exact(len(ack(filler_chunk)), timeout=10) == ack(filler_chunk)
    data, chunk = request(1)
    resend = send_drop_and_resend(gw, data)
    wait_until(lambda: counters(gw)[1] == 1, "the resend to wait for its original")
    assert resend.read_available(0.3) == b"", "no ack before the original is accepted"
    sub = subscribe(gw)
    assert resend.recv_exact(len(ack(chunk)), timeout=30) == ack(chunk)
    resend.close()
    expected = ["r9999-%04d" % i for i in range(3000)] + ["r0001-%04d" % i for i in range(LINES)]
    assert_each_once(sub, gw, expected)
    wait_until(lambda: counters(gw) == (1, 1), "one duplicate and one wait")


def test_a_resend_while_the_original_waits_for_its_place(start_gateway, subscribe):
    """An earlier request of the same client and tag is still arriving on another
    connection: the original waits behind it, the resend waits for the original."""
    gw = start_gateway("--metrics-listen", "127.0.0.1:0")
    sub = subscribe(gw)
    earlier, earlier_chunk = request(0)
    slow = gw.connect()
    slow.send(earlier[:len(earlier) // 2])
    data, chunk = request(1)
    resend = send_drop_and_resend(gw, data)
    wait_until(lambda: counters(gw)[1] == 1, "the resend to wait for its original")
    slow.send(earlier[len(earlier) // 2:])
    assert slow.recv_exact(len(ack(earlier_chunk)), timeout=10) == ack(earlier_chunk)
    assert resend.recv_exact(len(ack(chunk)), timeout=10) == ack(chunk)
    slow.close()
    resend.close()
    got = lines_of(sub.sync(gw, timeout=30))
    assert got == ["r0000-%04d" % i for i in range(LINES)] + ["r0001-%04d" % i for i in range(LINES)]
    wait_until(lambda: counters(gw) == (1, 1), "one duplicate and one wait")


def wait_until(pred, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out waiting for %s" % what
        time.sleep(0.02)
