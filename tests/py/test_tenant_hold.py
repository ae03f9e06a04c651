"""Collectors sharded by tenant, each its own process: a collector stopped (SIGSTOP)
under acked load gets every line of its tenant afterwards while the other collector's
tenant keeps flowing; a tenant whose collector left is held until a subscription for it
comes back; held lines survive SIGKILL with a spool; a tenant nobody subscribes to is
dropped after `output.tenant_hold_ms`, counted; and past `output.tenant_hold_bytes`
the publisher holds every tenant back rather than drop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

import fwd
from conftest import PROBE_TENANT, Subscriber
from resend import ResendingClient
from test_durable import absent_endpoint, sigkill, write_config
from test_metrics import get, metric, wait_for

PROBE = PROBE_TENANT.encode()
COLLECTOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "collector.py")


class CollectorProc:
    """``collector.py`` in its own process; records (arrival time, tenant, line)."""

    def __init__(self, *prefixes, bind="tcp://127.0.0.1:*", connect=None):
        argv = [sys.executable, COLLECTOR]
        argv += ["--connect", connect] if connect else ["--bind", bind]
        for p in prefixes:
            argv += ["--subscribe", p]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True, bufsize=1)
        self.got: list[tuple[float, str, str]] = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.endpoint = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not self.ready.wait(20):
            self.close()
            pytest.fail("collector did not start: %s" % self.proc.stderr.read(), pytrace=False)

    def _read(self):
        for raw in self.proc.stdout:
            raw = raw.rstrip("\n")
            if self.endpoint is None and raw.startswith("ready "):
                self.endpoint = raw.split(" ", 1)[1]
                self.ready.set()
                continue
            tenant, _, line = raw.partition("\t")
            with self.lock:
                self.got.append((time.monotonic(), tenant, line))

    def lines(self, tenant=None) -> list[str]:
        with self.lock:
            return [line for _, t, line in self.got if tenant is None or t == tenant]

    def count(self) -> int:
        with self.lock:
            return len(self.got)

    def tenants(self) -> set[str]:
        with self.lock:
            return {t for _, t, _ in self.got}

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.reader.join(10)


@pytest.fixture
def collectors():
    made = []

    def _make(*prefixes, **kw):
        c = CollectorProc(*prefixes, **kw)
        made.append(c)
        return c

    yield _make
    for c in made:
        c.close()


class PaddedClient(ResendingClient):
    """Lock-step acked lines of about 1 KB, so that a stopped collector's buffers fill
    within seconds."""

    PAD = "x" * 1000

    def line(self, i):
        return "%s %07d %s" % (self.name, i, self.PAD)


def key(line: str) -> str:
    """A line without its padding: client name and sequence number."""
    return " ".join(line.split(" ")[:2])


def assert_all_once_in_order(clients, collector, tenant):
    got = [key(x) for x in collector.lines(tenant)]
    for c in clients:
        want = [key(x) for x in c.acked]
        mine = [x for x in got if x.startswith(c.name + " ")]
        assert len(mine) == len(set(mine)), "%s: %d duplicates" % (c.name, len(mine) - len(set(mine)))
        missing = set(want) - set(mine)
        assert not missing, "%s: %d acked lines missing, e.g. %s" % (c.name, len(missing), sorted(missing)[:3])
        assert mine[:len(want)] == want, "%s: lines out of order" % c.name


def wait_all(clients, collector, tenant, timeout=60):
    want = {key(x) for c in clients for x in c.acked}
    wait_for(lambda: want <= {key(x) for x in collector.lines(tenant)},
             "every acked line of %s at its collector" % tenant, timeout=timeout)


def test_a_stopped_collector_holds_back_only_its_tenant(start_gateway, tmp_path, collectors):
    """Two collectors, one tenant each; acked load on both tenants. Collector A is
    stopped (SIGSTOP) for 10 s: its subscriber's buffers fill, tenant A's lines wait in
    their hold, tenant B's keep being acked and delivered at the same pace. After
    SIGCONT, A gets every line of its tenant, once each, in order."""
    ca = collectors("ta")
    cb = collectors("tb")
    # A small high-water mark, so that A's side fills within a second or two of the
    # stop rather than after ZeroMQ has queued 100,000 messages.
    config = write_config(tmp_path, "[output]\nsend_hwm = 1000\nqueue_bytes = 268435456\n"
                          "tenant_hold_bytes = 134217728\n[metrics]\nlisten = \"127.0.0.1:0\"\n")
    gw = start_gateway("--config", config, "--zmq-connect", ca.endpoint,
                       "--zmq-connect", cb.endpoint, zmq_bind=False)
    metrics = gw.ready_fields["metrics"]
    # One client for A (about 5,000 lines of 1 KB a second): what A's hold gathers in
    # 10 s stays well below tenant_hold_bytes, which would hold B back too.
    a = [PaddedClient(gw.addr, "a%d" % i, "ta") for i in range(1)]
    b = [PaddedClient(gw.addr, "b%d" % i, "tb") for i in range(2)]
    for c in a + b:
        c.start()
    try:
        wait_for(lambda: len(ca.lines("ta")) > 500 and len(cb.lines("tb")) > 500, "both collectors receiving", timeout=30)
        t0 = time.monotonic()
        b_acked0 = sum(len(c.acked) for c in b)
        time.sleep(2)
        rate_before = (sum(len(c.acked) for c in b) - b_acked0) / (time.monotonic() - t0)

        ca.pause()
        stopped = time.monotonic()
        samples = []  # (t since stop, B acked, B received, events held)
        while time.monotonic() - stopped < 10:
            held = metric(get(metrics, "/metrics")[1], "fwdgate_tenant_hold_events")
            samples.append((time.monotonic() - stopped, sum(len(c.acked) for c in b),
                            len(cb.lines("tb")), held))
            time.sleep(0.25)
        ca.resume()
        time.sleep(2)
    finally:
        for c in a + b:
            c.finish()
    assert not gw.log_lines(gw.is_warn_about("tenant holds are full")), "the holds reached their bound"
    # A's side really filled: its lines were held.
    assert max(s[3] for s in samples) > 0, "no line of the stopped collector's tenant was ever held: %r" % samples
    # B kept its pace through the stop: from the 3rd second on (A's buffers are full by
    # then), B's lines were acked at least at half the rate of before, and B's collector
    # stayed within a second of what was acked.
    late = [s for s in samples if s[0] >= 3]
    rate_during = (late[-1][1] - late[0][1]) / (late[-1][0] - late[0][0])
    print("MEASURE stopped collector: B acked %.0f/s before, %.0f/s during; at most %d events held"
          % (rate_before, rate_during, max(s[3] for s in samples)))
    assert rate_during >= rate_before / 2, \
        "tenant B slowed down while A's collector was stopped: %.0f/s before, %.0f/s during" % (rate_before, rate_during)
    lag = max(acked - received for _, acked, received, _ in late)
    assert lag <= max(rate_before, 200), "B's collector fell behind by %d lines" % lag
    # No client waited for an ack until it gave up and resent (5 s), A's included:
    # held lines are acked as soon as the buffer has them.
    assert [(c.name, c.resends) for c in a + b if c.resends] == [], "clients resent"

    wait_all(b, cb, "tb")
    wait_all(a, ca, "ta")
    assert_all_once_in_order(a, ca, "ta")
    assert_all_once_in_order(b, cb, "tb")
    assert ca.tenants() == {"ta"} and cb.tenants() == {"tb"}, "each collector gets its own tenant only"


def test_a_tenant_whose_collector_left_is_held_until_it_comes_back(start_gateway, tmp_path):
    """Subscribers bound to the gateway: A's leaves (its subscription goes with it),
    tenant A's lines are held while B's flow, and a new subscriber for A gets them all,
    in order, before anything newer."""
    config = write_config(tmp_path, "[metrics]\nlisten = \"127.0.0.1:0\"\n")
    gw = start_gateway("--config", config)
    metrics = gw.ready_fields["metrics"]
    sa = Subscriber(gw.zmq_bind[0], [b"ta"], PROBE).wait_ready(gw)
    sb = Subscriber(gw.zmq_bind[0], [b"tb"], PROBE).wait_ready(gw)
    client = gw.connect()
    client.send(fwd.message("app", 1700000000, fwd.rec("a before", tenant="ta")))
    client.send(fwd.message("app", 1700000000, fwd.rec("b before", tenant="tb")))
    assert sa.recv_n(1)[0][2].endswith(b"a before")
    assert sb.recv_n(1)[0][2].endswith(b"b before")

    subscriptions = metric(get(metrics, "/metrics")[1], "fwdgate_zmq_subscriptions")
    assert subscriptions == 3, "ta, tb and the probe tenant"
    sa.close()
    # The gateway sees A's subscription go once libzmq has noticed the disconnect.
    wait_for(lambda: metric(get(metrics, "/metrics")[1], "fwdgate_zmq_subscriptions") == 2,
             "A's subscription gone", timeout=10)
    lines = ["a held %03d" % i for i in range(50)]
    for line in lines:
        client.send(fwd.message("app", 1700000000, fwd.rec(line, tenant="ta")))
    client.send(fwd.message("app", 1700000000, fwd.rec("b during", tenant="tb")))
    assert sb.recv_n(1)[0][2].endswith(b"b during"), "B flows while A is held"
    wait_for(lambda: metric(get(metrics, "/metrics")[1], "fwdgate_tenant_hold_events") == 50, "A's 50 lines held", timeout=10)

    sa2 = Subscriber(gw.zmq_bind[0], [b"ta"], PROBE)
    got = [m[2].split(b": ", 1)[1].decode() for m in sa2.recv_n(50, timeout=15)]
    assert got == lines, "held lines in order"
    client.send(fwd.message("app", 1700000000, fwd.rec("a after", tenant="ta")))
    assert sa2.recv_n(1)[0][2].endswith(b"a after")
    sb.expect_silence()
    text = get(metrics, "/metrics")[1]
    assert metric(text, "fwdgate_tenant_hold_events") == 0
    assert metric(text, "fwdgate_tenant_hold_bytes") == 0
    sa2.close()
    sb.close()


def test_held_lines_survive_sigkill_with_a_spool(start_gateway, tmp_path, collectors):
    """With a spool, a held tenant's requests stay in it until published: acked lines
    of a tenant whose collector is away, held when the gateway is killed, are published
    after the restart once that collector is there."""
    spool = tmp_path / "spool"
    config = write_config(tmp_path, '[spool]\ndir = "%s"\n[metrics]\nlisten = "127.0.0.1:0"\n' % spool)
    cb = collectors("tb")
    gw = start_gateway("--config", config, "--zmq-connect", cb.endpoint, zmq_bind=False)
    metrics = gw.ready_fields["metrics"]
    a = ResendingClient(gw.addr, "a", "ta", lines=200)
    b = ResendingClient(gw.addr, "b", "tb", lines=200)
    a.start()
    b.start()
    for c in (a, b):
        c.join(60)
        c.finish()
    assert len(a.acked) == 200 and len(b.acked) == 200
    wait_for(lambda: set(b.acked) <= set(cb.lines("tb")), "B's lines delivered", timeout=20)
    wait_for(lambda: metric(get(metrics, "/metrics")[1], "fwdgate_tenant_hold_events") == 200, "A's lines held", timeout=10)
    sigkill(gw)

    ca = collectors("ta")
    gw2 = start_gateway("--config", config, "--zmq-connect", ca.endpoint, zmq_bind=False)
    wait_for(lambda: set(a.acked) <= set(ca.lines("ta")), "A's held lines after the restart", timeout=30)
    got = ca.lines("ta")
    assert [x for x in got if x in set(a.acked)][:200] == a.acked, "in order"
    gw2.stop()


def gateway_with_b(start_gateway, tmp_path, output):
    """A gateway with `output` settings and its metrics, a subscriber to tenant tb
    only, and a client connection."""
    config = write_config(tmp_path, "[output]\n%s\n[metrics]\nlisten = \"127.0.0.1:0\"\n" % output)
    gw = start_gateway("--config", config)
    sb = Subscriber(gw.zmq_bind[0], [b"tb"], PROBE).wait_ready(gw)
    return gw, gw.ready_fields["metrics"], sb, gw.connect()


def test_a_tenant_nobody_subscribes_to_is_dropped_after_the_hold_time(start_gateway, tmp_path):
    gw, metrics, sb, client = gateway_with_b(start_gateway, tmp_path, "tenant_hold_ms = 500")
    for i in range(5):
        client.send(fwd.message("app", 1700000000, fwd.rec("nobody %d" % i, tenant="tz")))
    client.send(fwd.message("app", 1700000000, fwd.rec("b flows", tenant="tb")))
    assert sb.recv_n(1)[0][2].endswith(b"b flows")
    wait_for(lambda: 'reason="no_subscriber"} 5' in get(metrics, "/metrics")[1], "the 5 held lines dropped after 0.5 s, counted", timeout=10)
    warned = gw.wait_log(gw.is_warn_about("tenant_hold_ms"), timeout=5)
    assert warned and '"tz"' in warned, "one warning naming the tenant: %r" % warned
    assert metric(get(metrics, "/metrics")[1], "fwdgate_tenant_hold_events") == 0
    # A subscriber for it now gets only what comes from now on.
    sz = Subscriber(gw.zmq_bind[0], [b"tz"], PROBE).wait_ready(gw)
    client.send(fwd.message("app", 1700000000, fwd.rec("now", tenant="tz")))
    got = sz.recv_n(1)
    assert got[0][2].endswith(b"now")
    sz.expect_silence()
    sb.close()
    sz.close()


def test_past_the_bound_what_nobody_subscribes_to_goes_first(start_gateway, tmp_path):
    """Past tenant_hold_bytes the oldest held lines of tenants nobody subscribes to are
    dropped, counted, and the other tenants go on: a client that sends lines for
    tenants nobody subscribes to cannot hold them back."""
    gw, metrics, sb, client = gateway_with_b(start_gateway, tmp_path, "tenant_hold_bytes = 65536")
    pad = "y" * 1000
    held = ["z %03d %s" % (i, pad) for i in range(100)]  # about 120 KB: past the bound
    for line in held:
        client.send(fwd.message("app", 1700000000, fwd.rec(line, tenant="tz")))
    client.send(fwd.message("app", 1700000000, fwd.rec("b flows", tenant="tb")))
    assert sb.recv_n(1, timeout=10)[0][2].endswith(b"b flows")
    warned = gw.wait_log(gw.is_warn_about("nobody subscribes to are dropped"), timeout=5)
    assert warned and '"tz"' in warned, warned
    text = get(metrics, "/metrics")[1]
    dropped = int(re.search(r'reason="no_subscriber"\} (\d+)', text).group(1))
    kept = metric(text, "fwdgate_tenant_hold_events")
    assert dropped > 0 and dropped + kept == 100, (dropped, kept)
    assert metric(text, "fwdgate_tenant_hold_bytes") < 65536
    # What was kept is the newest, and goes out in order once somebody subscribes.
    sz = Subscriber(gw.zmq_bind[0], [b"tz"], PROBE)
    got = [m[2].split(b": ", 1)[1].decode() for m in sz.recv_n(kept, timeout=15)]
    assert got == held[dropped:]
    sz.expect_silence()
    sb.close()
    sz.close()


def test_past_the_bound_what_waits_for_a_full_subscriber_is_never_dropped(start_gateway, tmp_path, collectors):
    """What is held for a subscriber that is there but full is never dropped: when it
    alone fills tenant_hold_bytes, the publisher takes nothing new until some of it
    goes out, so what is held stays at the bound (plus the request being published)
    while the client goes on sending; once the collector reads again, every line
    arrives, in order, and so does the other tenant's."""
    ca = collectors("ta")
    cb = collectors("tb")
    bound = 262144
    config = write_config(tmp_path, "[output]\nsend_hwm = 100\ntenant_hold_bytes = %d\n"
                          "[metrics]\nlisten = \"127.0.0.1:0\"\n" % bound)
    gw = start_gateway("--config", config, "--zmq-connect", ca.endpoint,
                       "--zmq-connect", cb.endpoint, zmq_bind=False)
    metrics = gw.ready_fields["metrics"]
    client = gw.connect(timeout=60)
    client.send(fwd.message("app", 1700000000, fwd.rec("b first", tenant="tb")))
    wait_for(lambda: cb.lines("tb") == ["b first"], "B's first line", timeout=10)
    ca.pause()
    # About 12 MB for A, 100 lines of 1 KB per request: more than the socket buffers
    # and send_hwm take, and the 256 KiB bound past that.
    pad = "x" * 1000
    lines = ["a %05d %s" % (i, pad) for i in range(12000)]
    sender = threading.Thread(target=lambda: [
        client.send(fwd.forward("app", [(1700000000, fwd.rec(x, tenant="ta")) for x in lines[i:i + 100]]))
        for i in range(0, len(lines), 100)], daemon=True)
    sender.start()
    try:
        assert gw.wait_log(gw.is_warn_about("of events for full subscribers"), timeout=30)
        other = gw.connect()
        other.send(fwd.message("app", 1700000000, fwd.rec("b waits", tenant="tb")))
        held = []
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            held.append(metric(get(metrics, "/metrics")[1], "fwdgate_tenant_hold_bytes"))
            time.sleep(0.05)
        # One request of 100 lines is about 120 KB: the bound plus what one request
        # brings past it.
        assert max(held) <= bound + 150_000, "held %d bytes against a bound of %d" % (max(held), bound)
    finally:
        ca.resume()
    sender.join(60)
    assert not sender.is_alive()
    wait_for(lambda: len(ca.lines("ta")) == len(lines), "every line of A", timeout=60)
    assert ca.lines("ta") == lines
    wait_for(lambda: cb.lines("tb") == ["b first", "b waits"], "B's line", timeout=20)
    assert 'reason="no_subscriber"} 0' in get(metrics, "/metrics")[1]
