"""Nothing accepted is lost for want of a subscriber: publications are held, in order,
while nobody is subscribed, and flushed when a subscriber or collector arrives. Past
the queue's bound the configured policy holds, and the counters say so."""

import re
import threading
import time

import pytest
import zmq

import fwd
from fwd import ack, message, option

T0 = 1700000000


def line(i):
    return "held line %05d" % i


def send_acked(c, i, tenant="thold", timeout=10):
    chunk = "h%05d" % i
    c.send(message("app", T0, fwd.rec(line(i), tenant=tenant), option(chunk=chunk)))
    return c.recv_exact(len(ack(chunk)), timeout=timeout) == ack(chunk)


def sub_socket(endpoint, bind=False, hwm=0):
    s = zmq.Context.instance().socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, hwm)
    s.subscribe(b"thold")
    if bind:
        s.bind(endpoint)
    else:
        s.connect(endpoint)
    return s


def receive(s, n, timeout=20):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0 or not s.poll(int(left * 1000)):
            break
        out.append(s.recv_multipart())
    return out


def lines_of(msgs):
    return [m[2].split(b": ", 1)[1].decode() for m in msgs]


def config(tmp_path, text):
    p = tmp_path / "gw.toml"
    p.write_text(text)
    return str(p)


def stopped_line(gw):
    gw.stop()
    raw = gw.wait_log(lambda raw, obj: "fwdgate stopped" in raw, timeout=15)
    assert raw is not None, gw.stderr_text()[-2000:]
    return raw


def counter(raw, name):
    m = re.search(r"\b%s=(\d+)" % name, raw)
    assert m, raw
    return int(m.group(1))


def test_held_until_a_subscriber_binds_then_flushed_in_order(start_gateway):
    gw = start_gateway()
    n = 1000
    with gw.connect() as c:
        for i in range(n):
            assert send_acked(c, i), "request %d not acked" % i
    s = sub_socket(gw.zmq_bind[0])
    try:
        got = lines_of(receive(s, n))
    finally:
        s.close(0)
    assert got == [line(i) for i in range(n)]


def test_connect_mode_collector_started_later(start_gateway):
    # Reserve a free port for the collector, then let the gateway dial it before it exists.
    probe = zmq.Context.instance().socket(zmq.SUB)
    probe.bind("tcp://127.0.0.1:*")
    endpoint = probe.getsockopt(zmq.LAST_ENDPOINT).decode()
    probe.close(0)
    gw = start_gateway("--zmq-connect", endpoint, zmq_bind=False)
    n = 500
    with gw.connect() as c:
        for i in range(n):
            assert send_acked(c, i)
    s = sub_socket(endpoint, bind=True)
    try:
        got = lines_of(receive(s, n))
    finally:
        s.close(0)
    assert got == [line(i) for i in range(n)]


def test_block_policy_holds_the_client_back_then_resumes(start_gateway, tmp_path):
    gw = start_gateway("--config", config(tmp_path, "[output]\nqueue_requests = 10\n"))
    c = gw.connect()
    acked = 0
    try:
        for i in range(100):
            chunk = "h%05d" % i
            c.send(message("app", T0, fwd.rec(line(i), tenant="thold"), option(chunk=chunk)))
            got = c.recv_exact(len(ack(chunk)), timeout=1.0)
            if got != ack(chunk):
                assert got == b"", got
                break
            acked += 1
        # The queue holds 10 requests and the publisher one more: then the client waits.
        assert acked in (10, 11), acked
        s = sub_socket(gw.zmq_bind[0])
        try:
            # the waiting request is acked once there is room again
            want = ack("h%05d" % acked)
            assert c.recv_exact(len(want), timeout=10) == want
            got = lines_of(receive(s, acked + 1))
        finally:
            s.close(0)
    finally:
        c.close()
    assert got == [line(i) for i in range(acked + 1)]


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
def test_drop_policies_count_what_they_drop(start_gateway, tmp_path, policy):
    gw = start_gateway("--config", config(
        tmp_path, '[output]\nqueue_requests = 10\nwhen_full = "%s"\n' % policy))
    n = 40
    with gw.connect() as c:
        assert send_acked(c, 0)
        # The publisher takes the first request and holds it; only then is the queue's
        # room (10 more) what decides which requests are kept.
        assert gw.wait_log(lambda raw, obj: "holding publications" in raw, timeout=5) is not None
        for i in range(1, n):
            assert send_acked(c, i), "request %d not acked under %s" % (i, policy)
    s = sub_socket(gw.zmq_bind[0])
    try:
        got = lines_of(receive(s, n, timeout=3))
    finally:
        s.close(0)
    kept = len(got)
    assert 10 <= kept <= 11, got
    if policy == "drop_newest":
        assert got == [line(i) for i in range(kept)]
    else:
        assert got == [line(i) for i in range(n - kept, n)]
    raw = stopped_line(gw)
    assert counter(raw, "dropped_queue_full") == n - kept, raw


def test_shutdown_with_nobody_subscribed_counts_the_held_events(start_gateway, tmp_path):
    gw = start_gateway("--config", config(tmp_path, "[shutdown]\ntimeout_ms = 500\n"))
    with gw.connect() as c:
        for i in range(25):
            assert send_acked(c, i)
    raw = stopped_line(gw)
    assert counter(raw, "dropped_no_subscriber") == 25, raw
    assert counter(raw, "events_published") == 0, raw
    assert gw.proc.returncode == 0


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for l in f:
            if l.startswith("VmRSS:"):
                return int(l.split()[1])
    raise AssertionError("no VmRSS")


def test_block_slow_subscriber_slows_intake_without_loss(start_gateway, tmp_path):
    gw = start_gateway("--config", config(
        tmp_path, '[output]\nslow_subscriber = "block"\nsend_hwm = 100\nqueue_requests = 16\n'))
    s = sub_socket(gw.zmq_bind[0], hwm=100)
    n = 20000
    received = []
    peak = [0]

    def slow_reader():
        deadline = time.monotonic() + 60
        while len(received) < n and time.monotonic() < deadline:
            if s.poll(1000):
                received.append(s.recv_multipart())
                if len(received) % 500 == 0:
                    time.sleep(0.02)  # the slow part of this subscriber, not a synchronisation
    try:
        # the subscription must reach the gateway before the measured lines are sent
        with gw.connect() as c:
            for i in range(1000):
                c.send(message("app", T0, fwd.rec("warm", tenant="thold-warm"), option(chunk="w%d" % i)))
                assert c.recv_exact(len(ack("w%d" % i))) == ack("w%d" % i)
                if s.poll(20):
                    break
            while s.poll(200):
                s.recv_multipart()
        reader = threading.Thread(target=slow_reader)
        reader.start()
        with gw.connect() as c:
            batch = 200
            for start in range(0, n, batch):
                entries = [(T0, fwd.rec(line(i), tenant="thold")) for i in range(start, start + batch)]
                c.send(fwd.forward("app", entries, option(chunk="f%d" % start)))
                assert c.recv_exact(len(ack("f%d" % start)), timeout=30) == ack("f%d" % start)
                peak[0] = max(peak[0], rss_kb(gw.proc.pid))
        reader.join(70)
    finally:
        s.close(0)
    got = lines_of(received)
    assert got == [line(i) for i in range(n)], "lost or reordered: %d of %d" % (len(got), n)
    assert peak[0] < 200 * 1024, "gateway RSS peaked at %d KiB" % peak[0]
