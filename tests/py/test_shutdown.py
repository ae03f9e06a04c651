"""Graceful shutdown: on SIGTERM under load, every request that was acked reaches the
subscriber, and the gateway exits 0."""

import signal
import threading

import zmq

import fwd
from fwd import ack, message, option

T0 = 1700000000
CONNECTIONS = 4
MAX_PER_CONNECTION = 20000


def lockstep_sender(gw, index, acked, stop_after, sent_enough):
    """Sends acked requests one at a time until the gateway closes the connection.
    Records every chunk the gateway acked."""
    c = gw.connect()
    try:
        for i in range(MAX_PER_CONNECTION):
            chunk = "c%d-%d" % (index, i)
            line = "conn %d line %d" % (index, i)
            if not c.send_tolerant(message("app", T0, fwd.rec(line, tenant="tshut"), option(chunk=chunk))):
                return
            want = ack(chunk)
            got = c.recv_exact(len(want), timeout=10)
            if got != want:
                assert got == b"", "conn %d: expected ack %r or a close, got %r" % (index, want, got)
                return
            acked[index].append(line)
            if len(acked[index]) == stop_after:
                sent_enough[index].set()
    finally:
        c.close()


def test_sigterm_under_load_loses_no_acked_event(start_gateway):
    gw = start_gateway()
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 0)
    s.connect(gw.zmq_bind[0])
    s.subscribe(b"tshut")
    received = []
    try:
        # The SUB must be connected before anything is published: send until a line
        # arrives, so none of the measured lines is lost to the slow-joiner effect.
        with gw.connect() as c:
            for i in range(200):
                c.send(message("app", T0, fwd.rec("warmup %d" % i, tenant="tshut"), option(chunk="w%d" % i)))
                assert c.recv_exact(len(ack("w%d" % i))) == ack("w%d" % i)
                if s.poll(50):
                    break
            else:
                raise AssertionError("subscriber never received a warm-up line")
        acked = [[] for _ in range(CONNECTIONS)]
        sent_enough = [threading.Event() for _ in range(CONNECTIONS)]
        threads = [threading.Thread(target=lockstep_sender, args=(gw, i, acked, 300, sent_enough))
                   for i in range(CONNECTIONS)]
        for t in threads:
            t.start()
        for e in sent_enough:
            assert e.wait(30), "senders did not get 300 acks each within 30 s"
        gw.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
            assert not t.is_alive(), "a sender was still running 30 s after SIGTERM"
        assert gw.proc.wait(15) == 0, gw.stderr_text()[-2000:]
        # Drain what was published; the gateway has exited, so nothing more will come.
        while s.poll(1000):
            received.append(s.recv_multipart())
    finally:
        s.close(0)
    lines = [m[2].split(b": ", 1)[1].decode() for m in received]
    got = set(lines)
    total_acked = sum(len(a) for a in acked)
    assert total_acked >= CONNECTIONS * 300
    missing = [line for a in acked for line in a if line not in got]
    assert missing == [], "%d acked lines never published, e.g. %r" % (len(missing), missing[:5])
    measured = [line for line in lines if line.startswith("conn ")]
    assert len(measured) == len(set(measured)), "a line was published twice"
    stopped = gw.log_lines(lambda raw, obj: "fwdgate stopped" in raw)
    assert len(stopped) == 1, gw.stderr_text()[-2000:]


def test_sigterm_finishes_a_request_already_begun(start_gateway, subscribe):
    """A request half sent when SIGTERM arrives is read to its end, published and acked."""
    gw = start_gateway()
    sub = subscribe(gw)
    data = message("app", T0, fwd.rec("begun before SIGTERM", tenant="tbegun"), option(chunk="b1"))
    with gw.connect() as c:
        c.send(data[:10])
        # A round trip on a second connection, so that the gateway has read the first
        # bytes before the signal (the same event loop serves both).
        with gw.connect() as c2:
            c2.send(message("app", T0, fwd.rec("barrier", tenant="tbegun"), option(chunk="x")))
            assert c2.recv_exact(len(ack("x"))) == ack("x")
        gw.proc.send_signal(signal.SIGTERM)
        c.send(data[10:])
        assert c.recv_exact(len(ack("b1")), timeout=10) == ack("b1")
    got = sub.recv_n(2)
    assert got[1] == [b"tbegun", b"default", b"app: begun before SIGTERM"]
    assert gw.proc.wait(10) == 0


def test_sigterm_right_after_ready_drains(start_gateway):
    """The signal handlers are in place before the ready line: a SIGTERM sent the moment
    the gateway reports ready starts the drain instead of killing the process."""
    for _ in range(20):
        gw = start_gateway()
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(10) == 0, "SIGTERM right after ready killed the gateway"
        assert gw.wait_log(lambda raw, obj: "fwdgate stopped" in raw, timeout=5) is not None
