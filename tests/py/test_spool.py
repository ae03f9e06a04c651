"""The disk spool: acked requests survive SIGKILL and are published after a restart
(at least once), whether they were held for want of a collector or in the middle of a
run; a torn tail is cut, not replayed."""

import glob
import os
import signal
import threading
import time

import zmq

import fwd
from conftest import run_fwdgate
from fwd import ack, message, option

T0 = 1700000000


def collector():
    s = zmq.Context.instance().socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 0)
    s.subscribe(b"tspool")
    s.bind("tcp://127.0.0.1:*")
    return s, s.getsockopt(zmq.LAST_ENDPOINT).decode()


def free_endpoint():
    s, endpoint = collector()
    s.close(0)
    return endpoint


def receive_until(s, want, timeout=30):
    """Receives until every line in ``want`` arrived (or the deadline); returns all."""
    got = []
    missing = set(want)
    deadline = time.monotonic() + timeout
    while missing:
        left = deadline - time.monotonic()
        if left <= 0 or not s.poll(int(left * 1000)):
            break
        got.append(s.recv_multipart()[2].split(b": ", 1)[1].decode())
        missing.discard(got[-1])
    return got


def spool_config(tmp_path):
    spool = tmp_path / "spool"
    config = tmp_path / "gw.toml"
    config.write_text('[spool]\ndir = "%s"\nsegment_bytes = 20000\n' % spool)
    return spool, str(config)


def send_acked(c, line, chunk):
    c.send(message("app", T0, fwd.rec(line, tenant="tspool"), option(chunk=chunk)))
    return c.recv_exact(len(ack(chunk)), timeout=10) == ack(chunk)


def assert_all_arrive(sub, acked, what):
    got = receive_until(sub, acked)
    missing = sorted(set(acked) - set(got))
    assert missing == [], "%s: %d acked lines lost, e.g. %r" % (what, len(missing), missing[:3])
    print("%s: %d acked, %d received, %d duplicates" % (what, len(acked), len(got), len(got) - len(set(got))))
    return got


def test_held_requests_survive_sigkill_and_torn_tail(start_gateway, tmp_path):
    spool, config = spool_config(tmp_path)
    # No collector while the first gateway runs: everything acked is held.
    gw = start_gateway("--config", config, "--zmq-connect", free_endpoint(), zmq_bind=False)
    acked = []
    with gw.connect() as c:
        for i in range(300):
            line = "held %04d" % i
            assert send_acked(c, line, "h%d" % i)
            acked.append(line)
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait(10)
    segments = sorted(glob.glob(str(spool / "*.seg")))
    assert segments, "nothing in the spool after the crash"
    # A crash in the middle of a write leaves a torn record: simulate one.
    with open(segments[-1], "ab") as f:
        f.write(b"\x00\x00\x01\x00\xde\xad\xbe\xefpartial")
    sub, endpoint = collector()
    try:
        gw2 = start_gateway("--config", config, "--zmq-connect", endpoint, zmq_bind=False)
        got = assert_all_arrive(sub, acked, "held then SIGKILL")
        assert got == acked, "replayed out of order or with duplicates"
        assert gw2.wait_log(lambda raw, obj: "damaged or torn" in raw, timeout=5) is not None
        gw2.stop()
    finally:
        sub.close(0)
    leftover = [p for p in glob.glob(str(spool / "*.seg")) if os.path.getsize(p) > 0]
    assert leftover == [], "published requests left in the spool: %r" % leftover


class Receiver(threading.Thread):
    """Keeps reading the collector, as a real collector does (a SUB socket only passes
    its subscription to a new publisher while its owner is inside a call on it)."""

    def __init__(self, sub):
        super().__init__(daemon=True)
        self.sub, self.lines, self.stop = sub, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            if self.sub.poll(50):
                self.lines.append(self.sub.recv_multipart()[2].split(b": ", 1)[1].decode())

    def wait_for(self, want, timeout=30):
        deadline = time.monotonic() + timeout
        while not set(want) <= set(self.lines) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.stop.set()
        self.join(5)
        return list(self.lines)


def test_sigkill_in_the_middle_of_acked_traffic(start_gateway, tmp_path):
    spool, config = spool_config(tmp_path)
    sub, endpoint = collector()
    receiver = Receiver(sub)
    receiver.start()
    try:
        gw = start_gateway("--config", config, "--zmq-connect", endpoint, zmq_bind=False)
        acked = [[] for _ in range(4)]
        enough = threading.Event()

        def sender(k):
            with gw.connect() as c:
                for i in range(100000):
                    line = "run c%d %05d" % (k, i)
                    try:
                        if not send_acked(c, line, "r%d-%d" % (k, i)):
                            return
                    except OSError:
                        return
                    acked[k].append(line)
                    if sum(len(a) for a in acked) >= 2000:
                        enough.set()

        threads = [threading.Thread(target=sender, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        assert enough.wait(60), "2000 acks did not come within 60 s"
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait(10)
        for t in threads:
            t.join(20)
        all_acked = [line for a in acked for line in a]
        start_gateway("--config", config, "--zmq-connect", endpoint, zmq_bind=False)
        got = receiver.wait_for(all_acked)
        missing = sorted(set(all_acked) - set(got))
        assert missing == [], "%d acked lines lost across SIGKILL, e.g. %r" % (len(missing), missing[:3])
        print("SIGKILL under load: %d acked, %d received when the last arrived, %d of them duplicates"
              % (len(all_acked), len(got), len(got) - len(set(got))))
    finally:
        receiver.stop.set()
        receiver.join(5)
        sub.close(0)


def test_a_second_gateway_on_the_same_spool_refuses_to_start(start_gateway, tmp_path):
    spool, config = spool_config(tmp_path)
    start_gateway("--config", config, "--zmq-connect", free_endpoint(), zmq_bind=False)
    second = run_fwdgate(["--config", config, "--listen", "127.0.0.1:0", "--zmq-connect", free_endpoint()])
    assert second.returncode == 1, second
    assert b"is in use by another fwdgate process" in second.stderr, second.stderr


def test_sigterm_with_nobody_subscribed_keeps_the_spool_for_the_next_start(start_gateway, tmp_path):
    """A graceful stop while the collector is away: the held lines stay in the spool (not
    counted as dropped) and come out, once, after the next start."""
    spool, config = spool_config(tmp_path)
    gw = start_gateway("--config", config, "--zmq-connect", free_endpoint(), zmq_bind=False)
    acked = []
    with gw.connect() as c:
        for i in range(200):
            line = "kept %04d" % i
            assert send_acked(c, line, "k%d" % i)
            acked.append(line)
    gw.stop()
    stopped = gw.wait_log(lambda raw, obj: "fwdgate stopped" in raw, timeout=15)
    assert stopped is not None and "dropped_no_subscriber=0" in stopped, stopped
    assert gw.proc.returncode == 0
    sub, endpoint = collector()
    try:
        start_gateway("--config", config, "--zmq-connect", endpoint, zmq_bind=False)
        got = assert_all_arrive(sub, acked, "SIGTERM with nobody subscribed")
    finally:
        sub.close(0)
    assert got == acked
