"""Intake spread over several gateways behind one address: HAProxy (Debian's 2.6) in TCP
mode, run with the shipped deploy/haproxy/haproxy.cfg (only its addresses, ports and
stats socket rewritten for the loopback), in front of three gateways. Each gateway has
its own loopback address (127.0.0.2, .3, .4, one port number for all), its own spool,
and a metrics port where HAProxy's check asks /readyz; all three publish to one pyzmq
collector, each with its own topic suffix, so that every copy of a line names the
gateway that published it.

Real clients connect through HAProxy — the Go library inside Docker with RequestAck, and
a container on Docker's fluentd driver with fluentd-request-ack, both lock-step (each
line waits for its ack) — and the gateway that carries the client's connection is
killed with SIGKILL mid-stream. The client resends what was not acked on a new
connection, which HAProxy gives to a gateway that is up; HAProxy's check marks the
killed gateway down; it is started again on its spool, is marked up again, and
publishes what its spool held. Every line arrives, and every copy is accounted for:

- before the kill, the killed gateway published the first lines, once each, in order;
- the gateways that stayed up published the rest, once each, in order, from the line
  that was in flight at the kill (the client resent it);
- the restarted gateway replayed its spool from its last checkpoint: one run of lines,
  in order, from a line it had first published at most its checkpoint interval and a
  second's grace before the kill, to the line in flight (or the one before it).

The duplicates are the replayed lines it had published before the kill, and the line in
flight when it was published by the killed gateway (before its ack got out, or in the
replay) and by another one, whose dedup window does not know it: the README's "Several
gateways behind one address" says so.
"""

from __future__ import annotations

import collections
import csv
import io
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid

import pytest
import zmq

import peers
from conftest import PROBE_TENANT, REPO_ROOT, terminate
from peers import fail
from test_golang import go_client  # noqa: F401  (session fixture: tests/go/client.go, built)
from test_metrics import get, wait_for

SHIPPED_CONFIG = REPO_ROOT / "deploy" / "haproxy" / "haproxy.cfg"
ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
SERVERS = ("gw1", "gw2", "gw3")  # the shipped config's server names, in this order
# A restart publishes again what the killed gateway published since its last checkpoint:
# spool.checkpoint_interval_ms (the default, 1 s) and the second a published request
# stays in the spool (src/buffer/ledger.rs, PUBLISH_GRACE), and some slack.
REPLAY_WINDOW_S = 1.0 + 1.0 + 0.5


# ------------------------------------------------------------------ the collector


class Collector(threading.Thread):
    """One SUB socket bound on the loopback, where every gateway's `output.zmq_connect`
    points; read continuously, each message kept with the time it arrived. Each gateway
    has its own `topic_suffix` ("/gw1", ...), so the tenant frame names the publisher."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.subscribe(b"")
        self.sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.got = []  # (time.monotonic(), tenant, publisher, frame 3)
        self.distinct = collections.defaultdict(set)  # frame 3s per tenant
        self.cond = threading.Condition()
        self.stopping = threading.Event()
        self.start()

    def run(self):
        while not self.stopping.is_set():
            if not self.sock.poll(50):
                continue
            frames = self.sock.recv_multipart()
            now = time.monotonic()
            tenant, _, publisher = frames[0].partition(b"/")
            with self.cond:
                self.got.append((now, tenant, publisher.decode(), frames[2]))
                self.distinct[tenant].add(frames[2])
                self.cond.notify_all()

    def wait(self, pred, what, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    fail("collector: awaited %s within %.0fs; distinct lines per tenant: %r"
                         % (what, timeout, {t: len(v) for t, v in self.distinct.items()}))
                self.cond.wait(left)

    def wait_distinct(self, tenant: bytes, n: int, timeout: float):
        self.wait(lambda: len(self.distinct[tenant]) >= n, "%d distinct lines of %r" % (n, tenant), timeout)

    def wait_probe(self, marker: bytes, timeout: float):
        probes = self.distinct[PROBE_TENANT.encode()]
        self.wait(lambda: any(marker in p for p in probes), "the probe %r" % marker, timeout)

    def lines(self, tenant: bytes):
        """(time, publisher, line) of the tenant's messages, in the order they arrived:
        the seed format's frame 3 is `<container id or tag>: <line>`."""
        with self.cond:
            return [(t, pub, f3.split(b": ", 1)[1]) for t, ten, pub, f3 in self.got if ten == tenant]

    def close(self):
        self.stopping.set()
        self.join(5)
        self.sock.close(0)


# ------------------------------------------------------------------ HAProxy


def port_free_on_all(addresses) -> int:
    """A TCP port number that was free a moment ago on each of ``addresses``."""
    for _ in range(50):
        port = peers.free_port()
        taken = False
        for a in addresses:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((a, port))
            except OSError:
                taken = True
            finally:
                s.close()
        if not taken:
            return port
    fail("no port number free on all of %r" % (addresses,))


def haproxy_config(path, stats_socket, listen_port, forward_port, metrics_port):
    """The shipped config with only what names the machine rewritten: where HAProxy
    listens, its stats socket, each gateway's forward address and the check's port."""
    text = SHIPPED_CONFIG.read_text()
    rewrites = [
        (r"(?m)^(\s*bind\s+):24224\b", r"\g<1>127.0.0.1:%d" % listen_port),
        (r"(?m)^(\s*stats socket\s+)/run/haproxy/admin\.sock\b", r"\g<1>%s" % stats_socket),
        (r"(?m)\bcheck port 9880\b", "check port %d" % metrics_port),
    ]
    for k, (name, address) in enumerate(zip(SERVERS, ADDRESSES)):
        rewrites.append((r"(?m)^(\s*server\s+%s\s+)10\.0\.0\.1%d:24224\b" % (name, k + 1),
                         r"\g<1>%s:%d" % (address, forward_port)))
    for pattern, replacement in rewrites:
        text, made = re.subn(pattern, replacement, text)
        assert made == 1, "deploy/haproxy/haproxy.cfg: %r matched %d times, not once" % (pattern, made)
    settings = re.sub(r"#.*", "", text)
    assert not re.search(r"10\.0\.0\.|24224|9880", settings), "an address of the shipped config was left:\n" + text
    path.write_text(text)
    return str(path)


class HAProxy:
    """`haproxy -f CFG -db` in the foreground, its output in a file; stopped by its PID."""

    def __init__(self, config, stats_socket, log_path):
        exe = shutil.which("haproxy")
        if exe is None:
            fail("peer HAProxy: no `haproxy` on PATH (scripts/install-test-deps.sh installs haproxy)")
        p = subprocess.run([exe, "-c", "-f", config], capture_output=True, timeout=30)
        assert p.returncode == 0 and b"WARNING" not in p.stdout + p.stderr, (p.stdout + p.stderr).decode()
        self.stats_socket = stats_socket
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen([exe, "-f", config, "-db"], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def log_text(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def servers(self):
        """{server: (status, last check's status, its code)} from `show stat` on the
        stats socket; None while the socket does not answer yet."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect(self.stats_socket)
            s.sendall(b"show stat\n")
            data = b""
            while True:
                part = s.recv(65536)
                if not part:
                    break
                data += part
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        finally:
            s.close()
        rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
        return {r["svname"]: (r["status"], r["check_status"].lstrip("* "), r["check_code"])
                for r in rows if r["pxname"] == "gateways" and r["svname"] in SERVERS}

    def wait_servers(self, want, timeout, what):
        """Until each server named in ``want`` has that state: "UP" (and its last check
        got 200 from /readyz) or "DOWN"."""
        deadline = time.monotonic() + timeout
        seen = None
        while True:
            if self.proc.poll() is not None:
                fail("peer HAProxy exited with %r; its output:\n%s" % (self.proc.returncode, self.log_text()))
            seen = self.servers()
            if seen is not None and all(
                    seen[name][0] == state and (state != "UP" or seen[name][1:] == ("L7OK", "200"))
                    for name, state in want.items()):
                return seen
            if time.monotonic() > deadline:
                fail("peer HAProxy: awaited %s (%r) within %.0fs; its servers: %r; its output:\n%s"
                     % (what, want, timeout, seen, self.log_text()[-3000:]))
            time.sleep(0.1)

    def stop(self):
        terminate(self.proc)
        self.log.close()


# ------------------------------------------------------------------ the fleet


class Fleet:
    """Three gateways with spools, HAProxy in front of them, one collector behind."""

    def __init__(self, start_gateway, tmp_path):
        self.start_gateway = start_gateway
        self.tmp_path = tmp_path
        self.collector = Collector()
        self.haproxy = None
        try:
            self._start_all()
        except BaseException:
            self.close()
            raise

    def _start_all(self):
        tmp_path = self.tmp_path
        self.forward_port = port_free_on_all(ADDRESSES)
        self.metrics_port = port_free_on_all(ADDRESSES)
        while self.metrics_port == self.forward_port:
            self.metrics_port = port_free_on_all(ADDRESSES)
        self.gateways = [self.start(k) for k in range(len(ADDRESSES))]
        self.port = peers.free_port()
        stats_socket = str(tmp_path / "haproxy.sock")
        config = haproxy_config(tmp_path / "haproxy.cfg", stats_socket, self.port, self.forward_port,
                                self.metrics_port)
        self.haproxy = HAProxy(config, stats_socket, tmp_path / "haproxy.log")
        self.haproxy.wait_servers({name: "UP" for name in SERVERS}, 30, "every gateway up")

    def start(self, k):
        config = self.tmp_path / ("%s.toml" % SERVERS[k])
        config.write_text('[spool]\ndir = "%s"\n' % (self.tmp_path / ("spool-%s" % SERVERS[k])))
        return self.start_gateway(
            "--config", str(config),
            "--listen", "%s:%d" % (ADDRESSES[k], self.forward_port),
            "--metrics-listen", "%s:%d" % (ADDRESSES[k], self.metrics_port),
            "--zmq-connect", self.collector.endpoint,
            "--topic-suffix", "/" + SERVERS[k],
            listen=False, zmq_bind=False)

    def metrics(self, k) -> str:
        status, text = get(self.gateways[k].ready_fields["metrics"], "/metrics")
        assert status == 200
        return text

    def tenant_events(self, k, tenant: bytes) -> int:
        m = re.search(r'^fwdgate_tenant_events_total\{tenant="%s"\} (\d+)$' % re.escape(tenant.decode()),
                      self.metrics(k), re.M)
        return int(m.group(1)) if m else 0

    def carrier(self) -> int:
        """The gateway that holds the client's one connection (HAProxy's checks go to
        the metrics port, so a gateway's forward connections are the clients')."""
        active = [int(re.search(r"^fwdgate_connections_active (\d+)$", self.metrics(k), re.M).group(1))
                  for k in range(len(self.gateways))]
        assert sorted(active) == [0, 0, 1], "the client's connection, per gateway: %r" % active
        return active.index(1)

    def wait_checkpoint(self, k, writes, timeout):
        """Until gateway ``k`` has written its spool checkpoint with ``writes`` different
        positions (`checkpoint` in the spool directory: "FWC1", the position published
        up to, a CRC). The first one may come as soon as the first line's grace is over;
        the next ones at most every checkpoint interval."""
        path = self.tmp_path / ("spool-%s" % SERVERS[k]) / "checkpoint"
        seen = set()
        deadline = time.monotonic() + timeout
        while len(seen) < writes:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                data = b""
            if len(data) == 16 and data[:4] == b"FWC1":
                seen.add(int.from_bytes(data[4:12], "big"))
            if time.monotonic() > deadline:
                fail("gateway %s wrote %d spool checkpoint positions within %.0fs, not %d"
                     % (SERVERS[k], len(seen), timeout, writes))
            time.sleep(0.05)

    def wait_all_checkpointed(self, k, timeout):
        """Until gateway ``k``'s checkpoint says its whole spool is published: its
        position is the end of the last segment (`<position of its first byte>.seg`)."""
        spool = self.tmp_path / ("spool-%s" % SERVERS[k])
        deadline = time.monotonic() + timeout
        while True:
            data = (spool / "checkpoint").read_bytes() if (spool / "checkpoint").exists() else b""
            at = int.from_bytes(data[4:12], "big") if len(data) == 16 and data[:4] == b"FWC1" else None
            try:
                end = max((int(p.stem) + p.stat().st_size for p in spool.glob("*.seg")), default=None)
            except FileNotFoundError:  # a published segment deleted meanwhile
                end = None
            if at is not None and at == end:
                return
            if time.monotonic() > deadline:
                fail("gateway %s: checkpoint at %r, spool ends at %r after %.0fs" % (SERVERS[k], at, end, timeout))
            time.sleep(0.05)

    def kill(self, k) -> float:
        """SIGKILL gateway ``k`` by its PID; returns the time just before the signal."""
        gw = self.gateways[k]
        at = time.monotonic()
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait(10)
        gw._reader.join(10)
        return at

    def restart(self, k) -> float:
        """Gateway ``k`` again, on its spool; returns the time just before its start."""
        at = time.monotonic()
        self.gateways[k] = self.start(k)
        return at

    def sync(self):
        """A probe sent to each gateway directly arrives after everything that gateway
        accepted before it (and, after a start, after what its spool held)."""
        for gw in self.gateways:
            marker = "haproxy-sync-%s" % uuid.uuid4().hex
            gw.send_probe(marker)
            self.collector.wait_probe(marker.encode(), timeout=60)

    def close(self):
        if self.haproxy is not None:
            self.haproxy.stop()
        self.collector.close()


@pytest.fixture
def fleet(start_gateway, tmp_path):
    f = Fleet(start_gateway, tmp_path)
    try:
        yield f
    finally:
        f.close()


# ------------------------------------------------------------------ the account


def account(fleet, tenant: bytes, want, victim, kill_at, restart_at):
    """Check every copy of ``tenant``'s lines the collector got against the lines
    ``want`` (in the order the lock-step client sent them), by who published it: the
    killed gateway before the kill, the gateways that stayed up, or the killed gateway's
    replay after its start. Returns the numbers for the report."""
    got = fleet.collector.lines(tenant)
    seq = {line: i for i, line in enumerate(want)}
    foreign = [x for _, _, x in got if x not in seq]
    assert foreign == [], "lines nobody sent: %r" % foreign[:5]
    killed = SERVERS[victim]
    before = [seq[x] for t, pub, x in got if pub == killed and t < restart_at]
    replay = [seq[x] for t, pub, x in got if pub == killed and t >= restart_at]
    others = [seq[x] for t, pub, x in got if pub != killed]
    early = [x for t, pub, x in got if pub != killed and t < kill_at]
    assert early == [], "published by another gateway before the kill: %r" % early[:5]
    everything = set(before) | set(replay) | set(others)
    missing = [want[i] for i in range(len(want)) if i not in everything]
    assert missing == [], "%d lines lost, e.g. %r" % (len(missing), missing[:5])

    def run(xs):
        return xs == list(range(xs[0], xs[0] + len(xs))) if xs else True

    # Until the kill, the killed gateway carried the client: the first lines, once each,
    # in order. The gateways that stayed up got the rest, once each, in order, from the
    # first line not acked at the kill. The replay is one run, in order, ending where
    # they began (or with that line: it was in flight, and in the spool).
    assert before and before[0] == 0 and run(before), "before the kill: %r ... %r" % (before[:5], before[-5:])
    assert others and others[-1] == len(want) - 1 and run(others), "others: %r ... %r" % (others[:5], others[-5:])
    assert replay and run(replay), "replay: %r ... %r" % (replay[:5], replay[-5:])
    resumed = others[0]
    assert replay[-1] in (resumed - 1, resumed), (replay[-1], resumed)
    # The replay began after the checkpoint, with a line first published at most a
    # checkpoint interval and grace before the kill.
    first_at = {}
    for t, pub, x in got:
        first_at.setdefault(seq[x], t)
    assert replay[0] > 0, "the replay began with the first line: the checkpoint was not honoured"
    began = kill_at - first_at[replay[0]]
    assert began <= REPLAY_WINDOW_S, "the replay began with a line first published %.2fs before the kill" % began
    # The only line the gateways that stayed up share with the killed one: the line in
    # flight at the kill (published before its ack got out, or in the spool).
    shared = sorted(set(others) & (set(before) | set(replay)))
    assert shared in ([], [resumed]), shared
    # The restarted gateway counts what it replayed.
    assert fleet.tenant_events(victim, tenant) == len(replay)
    copies = len(before) + len(replay) + len(others)
    return {"sent": len(want), "received": copies, "duplicates": copies - len(want),
            "before_kill": len(before), "replayed": len(replay),
            "replayed_published_before": len(set(replay) & set(before)),
            "replayed_only": len(set(replay) - set(before) - set(others)),
            "in_flight_twice": len(shared), "by_others": len(others),
            "replay_began_s_before_kill": round(began, 2)}


def run_through_haproxy(containers, port, signal_dir, tenant, script):
    """A container on Docker's fluentd driver with acks, its address HAProxy's, its
    tenant in TENANT_ID, running ``script`` with ``signal_dir`` at /signal."""
    return containers.run("--network", "host", "-v", "%s:/signal:ro" % signal_dir,
                          "--log-driver=fluentd", "--log-opt", "fluentd-address=127.0.0.1:%d" % port,
                          "--log-opt", "fluentd-request-ack=true", "--log-opt", "env=TENANT_ID",
                          "-e", "TENANT_ID=%s" % tenant, cmd=["sh", "-c", script])


def report(name, numbers):
    print("MEASURE %s = %r" % (name, numbers))


# ------------------------------------------------------------------ the tests


def kill_carrier_mid_stream(fleet, tenant, n):
    """Once the gateway carrying the client has written its spool checkpoint twice (so
    its restart replays only what it published since, not everything): SIGKILL it,
    wait until HAProxy's check marks it down, start it again on its spool, wait until
    it is marked up. Returns (victim, kill time, restart time)."""
    fleet.collector.wait_distinct(tenant, 1, timeout=120)
    victim = fleet.carrier()
    fleet.wait_checkpoint(victim, 2, timeout=30)
    kill_at = fleet.kill(victim)
    published = len(fleet.collector.distinct[tenant])
    assert published < n, "every line was published before the kill: it did not come mid-stream"
    fleet.haproxy.wait_servers({SERVERS[victim]: "DOWN"}, 20, "the killed gateway marked down")
    restart_at = fleet.restart(victim)
    fleet.haproxy.wait_servers({SERVERS[victim]: "UP"}, 20, "the restarted gateway marked up")
    return victim, kill_at, restart_at


def test_go_client_through_haproxy_loses_nothing_acked_when_its_gateway_is_killed(go_client, fleet):  # noqa: F811
    """fluent-logger-golang with RequestAck (sync: each line waits for its ack) through
    HAProxy; its gateway is killed mid-stream. It exits 0 only if every line was acked."""
    n = 30000
    tenant = b"thgo"
    client = subprocess.Popen(
        [go_client, "-host", "127.0.0.1", "-port", str(fleet.port), "-count", str(n), "-ack=true",
         "-tenant", tenant.decode(), "-service", "shgo", "-prefix", "hap", "-maxretry", "10"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        victim, kill_at, restart_at = kill_carrier_mid_stream(fleet, tenant, n)
        out, err = client.communicate(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    assert client.returncode == 0 and out == b"sent %d\n" % n, (client.returncode, out, err.decode())
    fleet.sync()
    numbers = account(fleet, tenant, [b"hap-%d" % i for i in range(n)], victim, kill_at, restart_at)
    numbers["acked"] = n
    numbers["client_errors"] = err.decode().count("Closing connection")
    report("haproxy go client", numbers)


def test_docker_through_haproxy_loses_nothing_acked_when_its_gateway_is_killed(fleet, containers, busybox_image,
                                                                               tmp_path):
    """A container on Docker's fluentd driver with fluentd-request-ack, its address
    HAProxy's; its gateway is killed mid-stream. The container prints its lines, then
    waits for a file the test makes once every line arrived, and exits 0."""
    n = 15000
    tenant = b"thdock"
    signal_dir = tmp_path / "signal"
    signal_dir.mkdir()
    script = ("i=1; while [ $i -le %d ]; do echo d$i; i=$((i+1)); done; "
              "while [ ! -e /signal/done ]; do sleep 0.05; done" % n)
    cid = run_through_haproxy(containers, fleet.port, signal_dir, tenant.decode(), script)

    victim, kill_at, restart_at = kill_carrier_mid_stream(fleet, tenant, n)
    want = [b"d%d" % i for i in range(1, n + 1)]
    fleet.collector.wait_distinct(tenant, n, timeout=120)
    (signal_dir / "done").write_text("")
    assert containers.wait(cid, timeout=60) == 0
    fleet.sync()
    numbers = account(fleet, tenant, want, victim, kill_at, restart_at)
    numbers["acked"] = n
    report("haproxy docker", numbers)


def test_quiet_container_through_haproxy_moves_on_after_its_gateway_died(fleet, containers, busybox_image,
                                                                        tmp_path):
    """Docker keeps a quiet container's connection open. Its gateway dies while the
    container prints nothing: the driver is not reading, so HAProxy holds the client's
    side of the session until its check marks the gateway down, and closes it then
    (`on-marked-down shutdown-sessions`, logged with termination state D). The
    container's next line gets no ack on that connection, and the driver resends it on
    a new one, which HAProxy gives to a gateway that is up. Every line once: the killed
    gateway had checkpointed all it published, so its restart publishes nothing again."""
    tenant = b"thquiet"
    signal_dir = tmp_path / "signal"
    signal_dir.mkdir()
    script = ("for i in 1 2 3 4 5 6 7 8 9 10; do echo q$i; done; "
              "while [ ! -e /signal/more ]; do sleep 0.05; done; "
              "for i in 11 12 13 14 15 16 17 18 19 20; do echo q$i; done; "
              "while [ ! -e /signal/done ]; do sleep 0.05; done")
    cid = run_through_haproxy(containers, fleet.port, signal_dir, tenant.decode(), script)
    fleet.collector.wait_distinct(tenant, 10, timeout=60)
    victim = fleet.carrier()
    fleet.wait_all_checkpointed(victim, timeout=30)
    fleet.kill(victim)
    fleet.haproxy.wait_servers({SERVERS[victim]: "DOWN"}, 20, "the killed gateway marked down")
    killed = SERVERS[victim]
    # tcplog: client, date, frontend, backend/server, Tw/Tc/Tt, bytes, termination state
    closed = r"(?m)^\S+ \[[^]]+\] forward gateways/%s \S+ \d+ D" % killed
    wait_for(lambda: re.search(closed, fleet.haproxy.log_text()),
             "HAProxy to close the session to the gateway marked down", timeout=10)
    (signal_dir / "more").write_text("")
    fleet.collector.wait_distinct(tenant, 20, timeout=60)
    restart_at = fleet.restart(victim)
    fleet.haproxy.wait_servers({SERVERS[victim]: "UP"}, 20, "the restarted gateway marked up")
    (signal_dir / "done").write_text("")
    assert containers.wait(cid, timeout=60) == 0
    fleet.sync()
    got = fleet.collector.lines(tenant)
    assert [x for _, pub, x in got if pub == killed] == [b"q%d" % i for i in range(1, 11)]
    assert [x for _, pub, x in got if pub != killed] == [b"q%d" % i for i in range(11, 21)]
    assert all(t < restart_at for t, _, _ in got)
    assert fleet.tenant_events(victim, tenant) == 0
