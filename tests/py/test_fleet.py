"""A small fleet on this one machine, every part a real process: three gateways on
127.0.0.2, .3 and .4, each with its own spool, behind HAProxy (the shipped config) for
a Docker container on the fluentd driver and for fluent-logger-golang, both with acks;
the gateways publish through `fwdgate proxy` to two collectors subscribed to disjoint
tenants, and also to a name in /etc/hosts under which a third collector appears
later. With exact counts at the collectors:

- every line reaches the collector of its tenant, and only that one;
- collector A stopped (SIGSTOP) for 10 s under load gets every line of its tenant
  afterwards, while collector B's rate does not drop;
- a gateway killed with SIGKILL mid-stream loses nothing acknowledged (the clients
  resend through HAProxy; the restarted gateway replays its spool), and every
  duplicate has a copy from the killed gateway;
- collector C, added under the resolved name, receives within two resolve intervals,
  and gets every line its tenant's client had acked before it came (the gateways held
  them: nobody subscribed to that tenant).
"""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

import peers
from resend import ResendingClient
from test_golang import go_client  # noqa: F401  (session fixture: tests/go/client.go, built)
from test_intake_haproxy import ADDRESSES, SERVERS, Fleet, run_through_haproxy
from test_metrics import wait_for
from test_proxy import Proxy
from test_resolve import NAME, Hosts
from test_tenant_hold import CollectorProc, PaddedClient, key

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="edits /etc/hosts (root)")

INTERVAL_MS = 1000
# Collector C's address: the name resolves to nothing until C is there.
C_ADDRESS = "127.0.0.5"
STOP_S = 10


class FleetOf3(Fleet):
    """The HAProxy fleet of test_intake_haproxy, its gateways publishing to the proxy
    and to the collectors' name instead of one collector; the collectors are the
    test's."""

    def __init__(self, start_gateway, tmp_path, c_port):
        self.start_gateway = start_gateway
        self.tmp_path = tmp_path
        self.c_port = c_port
        self.haproxy = None
        self.proxy = Proxy(cwd=str(tmp_path)).start()
        try:
            self._start_all()
        except BaseException:
            self.close()
            raise

    def start(self, k):
        config = self.tmp_path / ("%s.toml" % SERVERS[k])
        config.write_text(
            '[spool]\ndir = "%s"\n[output]\nzmq_connect = ["%s", "tcp://%s:%d"]\n'
            'resolve_interval_ms = %d\ntenant_hold_ms = 300000\n'
            % (self.tmp_path / ("spool-%s" % SERVERS[k]), self.proxy.xsub, NAME, self.c_port, INTERVAL_MS))
        return self.start_gateway(
            "--config", str(config),
            "--listen", "%s:%d" % (ADDRESSES[k], self.forward_port),
            "--metrics-listen", "%s:%d" % (ADDRESSES[k], self.metrics_port),
            "--topic-suffix", "/" + SERVERS[k],
            listen=False, zmq_bind=False)

    def metric(self, k, name) -> int:
        m = re.search(r"^%s (\d+)$" % re.escape(name), self.metrics(k), re.M)
        assert m, name
        return int(m.group(1))

    def close(self):
        if self.haproxy is not None:
            self.haproxy.stop()
        self.proxy.stop()


def copies(collector, tenant):
    """{line: [publishers]} of the tenant's lines at the collector (frame 1 is the
    tenant, "/", the gateway that published it)."""
    out = {}
    with collector.lock:
        got = list(collector.got)
    for _, topic, line in got:
        t, _, publisher = topic.partition("/")
        if t == tenant:
            out.setdefault(key(line) if line.endswith(PaddedClient.PAD) else line, []).append(publisher)
    return out


def rate(samples, t0, t1):
    """Lines per second between the first samples at or after t0 and t1."""
    a = next(s for s in samples if s[0] >= t0)
    b = next(s for s in samples if s[0] >= t1)
    return (b[1] - a[1]) / (b[0] - a[0])


def test_a_fleet_of_three_gateways_a_proxy_and_sharded_collectors(start_gateway, tmp_path, go_client,  # noqa: F811
                                                                    containers, busybox_image):
    hosts = Hosts()
    collectors = []
    c_port = peers.free_port()
    go = fleet = None
    padded = []
    try:
        hosts.set()
        fleet = FleetOf3(start_gateway, tmp_path, c_port)
        a = CollectorProc("ta", connect=fleet.proxy.xpub)
        b = CollectorProc("tb", connect=fleet.proxy.xpub)
        collectors += [a, b]

        # Load: the Go client for tenant ta, a container for tb, both through HAProxy
        # with acks; lines for tc, whom nobody subscribes to yet.
        n_go, n_docker, n_tc = 60000, 40000, 500
        go = subprocess.Popen(
            [go_client, "-host", "127.0.0.1", "-port", str(fleet.port), "-count", str(n_go), "-ack=true",
             "-tenant", "ta", "-service", "sgo", "-prefix", "go", "-maxretry", "10"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        signal_dir = tmp_path / "signal"
        signal_dir.mkdir()
        script = ("i=1; while [ $i -le %d ]; do echo d$i; i=$((i+1)); done; "
                  "while [ ! -e /signal/done ]; do sleep 0.05; done" % n_docker)
        cid = run_through_haproxy(containers, fleet.port, signal_dir, "tb", script)
        tc = ResendingClient(("127.0.0.1", fleet.port), "c", "tc", lines=n_tc)
        tc.start()
        # Lines of about 1 KB for ta too, so that while A is stopped more waits for it
        # than the socket buffers hold: the proxy's queue for A (--send-hwm) keeps it.
        padded = [PaddedClient(("127.0.0.1", fleet.port), "pa%d" % i, "ta") for i in range(2)]
        for p in padded:
            p.start()
        wait_for(lambda: a.count() > 1000 and b.count() > 1000,
                 "both collectors receiving", timeout=60)

        # Collector A stopped for 10 s: B keeps its pace.
        samples = []  # (time, lines at B)
        t_before = time.monotonic()
        while time.monotonic() - t_before < 2:
            samples.append((time.monotonic(), b.count()))
            time.sleep(0.1)
        a.pause()
        stopped = time.monotonic()
        while time.monotonic() - stopped < STOP_S:
            samples.append((time.monotonic(), b.count()))
            time.sleep(0.1)
        a.resume()
        samples.append((time.monotonic(), b.count()))
        for p in padded:
            p.finish()
        before = rate(samples, t_before, stopped - 0.05)
        during = rate(samples, stopped + 1, stopped + STOP_S - 0.2)
        assert during >= 0.5 * before, \
            "collector B's rate fell while A was stopped: %.0f/s before, %.0f/s during" % (before, during)

        # A gateway that carries a client is killed mid-stream, and started again.
        active = [fleet.metric(k, "fwdgate_connections_active") for k in range(3)]
        victim = max(range(3), key=lambda k: active[k])
        assert active[victim] > 0, active
        gw = fleet.gateways[victim]
        gw.proc.kill()
        gw.proc.wait(10)
        gw._reader.join(10)
        fleet.haproxy.wait_servers({SERVERS[victim]: "DOWN"}, 20, "the killed gateway marked down")
        fleet.gateways[victim] = fleet.start(victim)
        fleet.haproxy.wait_servers({SERVERS[victim]: "UP"}, 20, "the restarted gateway marked up")

        # Collector C appears under the name: it receives within two resolve intervals,
        # and gets tc's lines, which waited in the gateways' holds.
        tc.join(60)
        tc.finish()
        assert len(tc.acked) == n_tc
        c = CollectorProc("tc", bind="tcp://%s:%d" % (C_ADDRESS, c_port))
        collectors.append(c)
        hosts.set(C_ADDRESS)
        added = time.monotonic()
        wait_for(lambda: c.count() > 0, "collector C to receive", timeout=10)
        took = time.monotonic() - added
        assert took <= 2 * INTERVAL_MS / 1000, "collector C received after %.2fs" % took

        out, err = go.communicate(timeout=180)
        assert go.returncode == 0 and out == b"sent %d\n" % n_go, (go.returncode, out, err.decode())
        want_b = {"d%d" % i for i in range(1, n_docker + 1)}
        wait_for(lambda: want_b <= set(copies(b, "tb")), "every line of the container at B", timeout=120)
        (signal_dir / "done").write_text("")
        assert containers.wait(cid, timeout=60) == 0
        want_a = {"go-%d" % i for i in range(n_go)} | {key(x) for p in padded for x in p.acked}
        wait_for(lambda: want_a <= set(copies(a, "ta")), "every line of the Go client at A", timeout=120)
        want_c = set(tc.acked)
        wait_for(lambda: want_c <= set(copies(c, "tc")), "every line of tc at C", timeout=60)
    finally:
        for p in padded:
            p.stop.set()
        if go is not None and go.poll() is None:
            go.kill()
            go.communicate()
        for col in collectors:
            col.close()
        hosts.restore()
        if fleet is not None:
            fleet.close()

    # Exact accounts: each collector got its own tenant only, every acked line, and
    # every line received twice has a copy from the gateway that was killed.
    killed = SERVERS[victim]
    numbers = {}
    for col, tenant, want in ((a, "ta", want_a), (b, "tb", want_b), (c, "tc", want_c)):
        assert col.tenants() <= {"%s/%s" % (tenant, s) for s in SERVERS}, (tenant, col.tenants())
        got = copies(col, tenant)
        assert set(got) == want, "%s: %d lines nobody sent" % (tenant, len(set(got) - want))
        twice = {line: pubs for line, pubs in got.items() if len(pubs) > 1}
        unexplained = {line: pubs for line, pubs in twice.items() if killed not in pubs}
        assert not unexplained, "%s: duplicates without a copy from the killed gateway: %r" \
            % (tenant, list(unexplained.items())[:5])
        numbers[tenant] = {"lines": len(want), "copies": sum(len(p) for p in got.values()),
                           "duplicates": sum(len(p) - 1 for p in twice.values())}
    numbers["collector_b_rate_before_and_during_a_stop"] = (round(before), round(during))
    numbers["collector_c_first_line_after_s"] = round(took, 2)
    print("MEASURE fleet = %r" % numbers)
