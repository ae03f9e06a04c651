"""Order per client across connections: Fluentd's out_forward with require_ack_response
sends each chunk on a connection of its own and the next chunk before the last one is
acked. The gateway publishes a client's chunks in the order their last byte arrived,
as Fluentd's own in_forward does."""

import resource
import socket
import threading
import time

import pytest

import fwd
from fwd import ack, option
from test_metrics import get, metric, wait_for

T0 = 1700000000


def line(k, i, run=""):
    return "%schunk %04d line %03d %s" % (run, k, i, "x" * 150)


def chunk_request(k, per, tenant, tag="app.logs", run=""):
    """A Fluentd-shaped chunk: PackedForward (str32 entries, as Fluentd sends) with
    `per` records of about 200 bytes, and a chunk id asking for an ack."""
    entries = [(T0 + k, fwd.rec(line(k, i, run), tenant=tenant, service="s")) for i in range(per)]
    stream = fwd.entry_stream(entries)
    return fwd.packed_forward(tag, stream, option(chunk="%sc%04d" % (run, k), size=per),
                              container=fwd.str32)


def send_chunks_back_to_back(addr, chunks, per, tenant, run=""):
    """Opens one connection per chunk and sends each whole, without waiting for acks
    in between; then collects every ack. Returns the chunk indexes that were not acked."""
    conns = []
    for k in range(chunks):
        s = socket.create_connection(addr, timeout=30)
        s.sendall(chunk_request(k, per, tenant, run=run))
        conns.append(s)
    missing = []
    for k, s in enumerate(conns):
        want = ack("%sc%04d" % (run, k))
        got = b""
        deadline = time.monotonic() + 30
        while len(got) < len(want) and time.monotonic() < deadline:
            part = s.recv(len(want) - len(got))
            if not part:
                break
            got += part
        if got != want:
            missing.append(k)
        s.close()
    return missing


def order_breaks(lines):
    return sum(1 for a, b in zip(lines, lines[1:]) if b < a)


@pytest.mark.parametrize("chunks,per", [(50, 100), (200, 20)])
def test_chunks_on_separate_connections_arrive_in_order(start_gateway, subscribe, chunks, per):
    """Three bursts of chunks, each on its own connection, sent back to back. (Without
    the ordering, this machine saw 5 to 11 order breaks per burst of 50 chunks of 100,
    18 to 20 per burst of 200 chunks of 20.)"""
    gw = start_gateway()
    sub = subscribe(gw, b"tord")
    for run in ("r1-", "r2-", "r3-"):
        missing = send_chunks_back_to_back(gw.addr, chunks, per, "tord", run=run)
        assert missing == []
        msgs = sub.recv_n(chunks * per, timeout=60)
        lines = [m[2].split(b": ", 1)[1].decode() for m in msgs]
        want = [line(k, i, run) for k in range(chunks) for i in range(per)]
        assert sorted(lines) == sorted(want), "lost or duplicated lines"
        assert lines == want, "%d order breaks in %d lines" % (order_breaks(lines), len(lines))
    assert sub.sync(gw) == []


def test_two_clients_do_not_wait_for_each_other(start_gateway, subscribe):
    """A client whose connection stalls in the middle of a request (it has begun and
    not ended) does not hold back another client's connections, nor its own other tags."""
    gw = start_gateway()
    sub = subscribe(gw, b"tother")
    stalled = socket.create_connection(gw.addr, timeout=10)
    try:
        # Half a request, from the same address as the other connections (127.0.0.1).
        stalled.sendall(chunk_request(0, 10, "tother", tag="stalled")[:100])
        t = time.monotonic()
        missing = send_chunks_back_to_back(gw.addr, 20, 10, "tother")
        took = time.monotonic() - t
        assert missing == []
        msgs = sub.recv_n(200, timeout=30)
        lines = [m[2] for m in msgs]
        assert order_breaks(lines) == 0, [l[:40] for l in lines]
        # Each chunk was acked at once: no wait for the stalled connection (the
        # gateway gives up waiting after a second, so twenty waits would take 20 s).
        assert took < 10, took
    finally:
        stalled.close()


def test_order_holds_with_many_senders_at_once(start_gateway, subscribe):
    """Four clients (four tags from one address, as four Fluentd outputs) send their
    chunks back to back at the same time: each keeps its own order."""
    gw = start_gateway()
    sub = subscribe(gw, b"tmany")
    chunks, per = 25, 40
    errors = []

    def client(tag):
        try:
            conns = []
            for k in range(chunks):
                s = socket.create_connection(gw.addr, timeout=30)
                entries = [(T0, fwd.rec("%s %04d %03d" % (tag, k, i), tenant="tmany", service=tag))
                           for i in range(per)]
                s.sendall(fwd.forward(tag, entries, option(chunk="%s-%d" % (tag, k))))
                conns.append((k, s))
            for k, s in conns:
                want = ack("%s-%d" % (tag, k))
                got = b""
                while len(got) < len(want):
                    part = s.recv(len(want) - len(got))
                    if not part:
                        break
                    got += part
                if got != want:
                    errors.append((tag, k, got))
                s.close()
        except Exception as e:  # reported by the main thread
            errors.append(repr(e))

    tags = ["a.logs", "b.logs", "c.logs", "d.logs"]
    threads = [threading.Thread(target=client, args=(t,)) for t in tags]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    msgs = sub.recv_n(len(tags) * chunks * per, timeout=60)
    by_tag = {t: [] for t in tags}
    for m in msgs:
        by_tag[m[1].decode()].append(m[2].split(b": ", 1)[1].decode())
    for tag in tags:
        assert by_tag[tag] == ["%s %04d %03d" % (tag, k, i) for k in range(chunks) for i in range(per)], tag
    assert sub.sync(gw) == []


def test_a_trickling_request_holds_back_its_address_for_a_second_at_most(start_gateway, subscribe):
    """A connection that trickles one request, a byte now and then, its tag not sent yet
    (a slowloris), holds back the other connections of its address only during the
    first second of that request; afterwards their requests are acked at once. (Before,
    every later request waited a second for it, until limits.request_timeout_ms.)"""
    gw = start_gateway()
    sub = subscribe(gw, b"ttrickle")
    slow = socket.create_connection(gw.addr, timeout=10)
    try:
        slow.sendall(b"\x93\xd9\xc8")   # [ str8 of 200 bytes: the tag is never complete
        time.sleep(1.2)
        with socket.create_connection(gw.addr, timeout=10) as c:
            t = time.monotonic()
            for k in range(10):
                slow.sendall(b"x")
                c.sendall(fwd.message("app", T0, fwd.rec("line %d" % k, tenant="ttrickle"),
                                      option(chunk="tr%d" % k)))
                want = ack("tr%d" % k)
                got = b""
                while len(got) < len(want):
                    part = c.recv(len(want) - len(got))
                    if not part:
                        break
                    got += part
                assert got == want
            took = time.monotonic() - t
        assert took < 3, "10 acked requests took %.1f s" % took
        msgs = sub.recv_n(10, timeout=10)
        assert [m[2].split(b": ", 1)[1] for m in msgs] == [b"line %d" % k for k in range(10)]
    finally:
        slow.close()


def allow_open_files(n):
    """Raises this process's limit on open files to at least `n` (the gateway started
    afterwards inherits it): as root, also the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, max(n, hard)))


def test_a_backlog_of_connections_of_one_client_and_tag_drains_at_once_in_order(start_gateway, subscribe):
    """10,000 connections from one address with one tag (containers that log with one
    daemon-wide tag, after a collector outage), each sending one line while nobody is
    subscribed: once a subscriber comes, every line arrives within a few seconds, once,
    in the order sent. (Before, each request looked at every other
    connection of its client, asking the kernel about each: 4,000 connections took 22 s
    here, and 10,000 did not drain; and what waited past a second lost its order.)"""
    n = 10000
    allow_open_files(n + 2000)
    gw = start_gateway("--metrics-listen", "127.0.0.1:0")
    addr = gw.ready_fields["metrics"]
    conns = []
    try:
        for k in range(n):
            s = socket.create_connection(gw.addr, timeout=30)
            s.sendall(fwd.message("docker", T0, fwd.rec("backlog %05d" % k, tenant="tbacklog")))
            conns.append(s)
        # Every request has been read: 1,024 in the memory queue, the rest waiting.
        wait_for(lambda: metric(get(addr, "/metrics")[1], "fwdgate_requests_total") >= n,
                 "the gateway to read every request", timeout=60)
        t = time.monotonic()
        sub = subscribe(gw, b"tbacklog", ready=False)
        msgs = sub.recv_n(n, timeout=60)
        took = time.monotonic() - t
        lines = [m[2].split(b": ", 1)[1] for m in msgs]
        assert sorted(lines) == [b"backlog %05d" % k for k in range(n)], "lost or duplicated lines"
        assert lines == sorted(lines), "%d order breaks" % order_breaks(lines)
        # About 0.2 s here with the machine idle; bounded with room for a loaded one.
        assert took < 10, "the backlog took %.1f s to drain" % took
        assert sub.sync(gw) == []
        assert metric(get(addr, "/metrics")[1], "fwdgate_events_published_total") == n + 1
    finally:
        for s in conns:
            s.close()
