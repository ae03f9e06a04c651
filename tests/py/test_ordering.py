"""Ordering and exact counts under load."""

import threading

import fwd
from fwd import ack, message, option

T0 = 1700000000


def _sender(gw, data, errors, done=None):
    try:
        with gw.connect(timeout=60) as c:
            c.send(data)
            if done is not None:
                # ask for an ack at the end so the connection stays open until all is accepted
                c.send(message("end", T0, fwd.rec("end", tenant="zzend"), option(chunk=done)))
                got = c.recv_exact(len(ack(done)), timeout=60)
                if got != ack(done):
                    errors.append("final ack %r for %s" % (got, done))
    except Exception as e:  # reported by the main thread
        errors.append(repr(e))


def test_one_connection_10000_in_order(gw, subscribe):
    sub = subscribe(gw, b"ord")
    n = 10000
    lines = ["line %05d %s" % (i, "x" * (i % 37)) for i in range(n)]
    data = b"".join(message("seq", T0, fwd.rec(l, tenant="ord", service="s")) for l in lines)
    errors = []
    t = threading.Thread(target=_sender, args=(gw, data, errors, "done-ord"))
    t.start()
    try:
        msgs = sub.recv_n(n, timeout=60)
    finally:
        t.join(60)
    assert not t.is_alive()
    assert errors == []
    assert [m[2] for m in msgs] == [("seq: " + l).encode() for l in lines]
    assert all(m[:2] == [b"ord", b"s"] for m in msgs)
    assert sub.sync(gw) == []


def test_ten_connections_parallel_2000_each(gw, subscribe):
    sub = subscribe(gw, b"par")
    conns, per = 10, 2000
    payloads = [
        b"".join(message("c%d" % k, T0, fwd.rec("c%d-%04d" % (k, i), tenant="par", service="c%d" % k))
                 for i in range(per))
        for k in range(conns)
    ]
    errors = []
    threads = [threading.Thread(target=_sender, args=(gw, payloads[k], errors, "done-%d" % k))
               for k in range(conns)]
    for t in threads:
        t.start()
    try:
        msgs = sub.recv_n(conns * per, timeout=90)
    finally:
        for t in threads:
            t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    by_conn = {k: [] for k in range(conns)}
    for m in msgs:
        assert m[0] == b"par"
        k = int(m[1][1:])
        by_conn[k].append(m[2])
    for k in range(conns):
        assert len(by_conn[k]) == per, (k, len(by_conn[k]))
        assert by_conn[k] == [("c%d: c%d-%04d" % (k, k, i)).encode() for i in range(per)]
    assert sub.sync(gw) == []
