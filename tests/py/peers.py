"""Helpers for the tests against real peers: the Docker daemon (its fluentd log driver,
swarm mode, compose), the local busybox image, containers cleaned up by id, and waits on
the gateway's own connection log so that "nothing more arrived" is a checked fact rather
than a pause.

Every wait here is bounded and fails with a message naming the peer and what was awaited.
"""

from __future__ import annotations

import calendar
import collections
import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = REPO_ROOT / "scripts"
BUSYBOX_IMAGE = "local/busybox:latest"
# every container, service and compose project a test creates carries this label value,
# so that a leftover can be traced to its run (cleanup itself is always by id)
RUN_ID = uuid.uuid4().hex[:10]
TEST_LABEL = "fwdgate-test=%s" % RUN_ID

DOCKER_TIMEOUT = 60.0


def fail(msg):
    pytest.fail(msg, pytrace=False)


# ------------------------------------------------------------------ commands


def docker_bin() -> str:
    b = shutil.which("docker")
    if b is None:
        fail("peer Docker: no `docker` CLI on PATH (scripts/install-test-deps.sh installs docker.io)")
    return b


def run_cmd(argv, peer, timeout=DOCKER_TIMEOUT, check=True, input=None, env=None, cwd=None):
    """Run a peer's command line, bounded; fail naming the peer on timeout or error."""
    try:
        p = subprocess.run(argv, input=input, capture_output=True, timeout=timeout, env=env, cwd=cwd)
    except subprocess.TimeoutExpired as e:
        fail("peer %s: `%s` did not finish within %.0fs; stderr so far: %s"
             % (peer, " ".join(map(str, argv)), timeout, (e.stderr or b"").decode("utf-8", "replace")))
    if check and p.returncode != 0:
        fail("peer %s: `%s` exited with %d; stderr: %s; stdout: %s"
             % (peer, " ".join(map(str, argv)), p.returncode,
                p.stderr.decode("utf-8", "replace").strip(), p.stdout.decode("utf-8", "replace").strip()[-2000:]))
    return p


def docker(*args, timeout=DOCKER_TIMEOUT, check=True, input=None) -> subprocess.CompletedProcess:
    return run_cmd([docker_bin(), *map(str, args)], "Docker", timeout=timeout, check=check, input=input)


def docker_out(*args, **kw) -> str:
    return docker(*args, **kw).stdout.decode().strip()


# ------------------------------------------------------------------ the daemon


class PrivateDockerd:
    """A Docker daemon of our own, started by scripts/start-dockerd.sh in a new
    directory: an empty image store, no containers, no swarm, its own socket
    (``host``, a DOCKER_HOST value); stopped, and its data removed, by
    scripts/stop-dockerd.sh. The machine's own daemon, if one runs, is left alone."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="fwdgate-dockerd-")
        self.host = None

    def start(self):
        env = dict(os.environ, FWDGATE_DOCKERD_DIR=self.dir)
        p = subprocess.run([str(SCRIPTS / "start-dockerd.sh")], capture_output=True, env=env, timeout=120)
        if p.returncode != 0:
            self.stop()
            fail("peer Docker daemon: scripts/start-dockerd.sh failed (exit %d): %s"
                 % (p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")))
        with open(os.path.join(self.dir, "docker-host")) as f:
            self.host = f.read().strip()
        return self

    def env(self, base=None) -> dict:
        """``base`` (default: this process's environment) with DOCKER_HOST set to it."""
        return dict(os.environ if base is None else base, DOCKER_HOST=self.host)

    def stop(self):
        if self.dir is None:
            return
        env = dict(os.environ, FWDGATE_DOCKERD_DIR=self.dir)
        subprocess.run([str(SCRIPTS / "stop-dockerd.sh")], env=env, timeout=120)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None


class Dockerd:
    """The Docker daemon for this test session: the one DOCKER_HOST names (the test
    command starts a private one and sets it), else a private one started here
    (`PrivateDockerd`) and stopped at the end of the session. The machine's own daemon,
    if one runs, is never used."""

    def __init__(self):
        self.private = None
        self.info = None

    def _info(self):
        try:
            p = subprocess.run([docker_bin(), "info", "--format", "{{json .}}"], capture_output=True, timeout=30)
        except subprocess.TimeoutExpired:
            return None, "`docker info` did not answer within 30s"
        if p.returncode != 0:
            return None, p.stderr.decode("utf-8", "replace").strip()
        return json.loads(p.stdout), None

    def ensure(self):
        if not os.environ.get("DOCKER_HOST"):
            self.private = PrivateDockerd().start()
            os.environ["DOCKER_HOST"] = self.private.host
        info, why = self._info()
        if info is None:
            self.stop()
            fail("peer Docker daemon at %s does not answer `docker info`: %s" % (os.environ.get("DOCKER_HOST"), why))
        self.info = info
        if "fluentd" not in json.dumps(info.get("Plugins", {}).get("Log", [])):
            fail("peer Docker daemon %s has no fluentd log driver: %r"
                 % (info.get("ServerVersion"), info.get("Plugins")))
        return self

    def stop(self):
        if self.private is None:
            return
        self.private.stop()
        os.environ.pop("DOCKER_HOST", None)
        self.private = None


def ensure_busybox_image():
    """local/busybox:latest from the host's static busybox, made by the shipped
    scripts/make-busybox-image.sh (the README's quick start uses it too), unless it
    exists already."""
    if docker("image", "inspect", BUSYBOX_IMAGE, check=False).returncode == 0:
        return
    run_cmd([str(SCRIPTS / "make-busybox-image.sh"), BUSYBOX_IMAGE], "Docker (import of local/busybox)",
            timeout=120, env=dict(os.environ, DOCKER=docker_bin()))


# ------------------------------------------------------------------ swarm mode

SWARM_PORT = 2377  # cluster management; 7946 is the node-to-node gossip port
SWARM_PORTS = [2377, 7946]


def swarm_state():
    return docker_out("info", "--format", "{{.Swarm.LocalNodeState}}")


def gwbridge_id():
    return docker_out("network", "ls", "--quiet", "--filter", "name=^docker_gwbridge$")


@contextlib.contextmanager
def single_node_swarm():
    """A single-node swarm on 127.0.0.1: initialised here and left afterwards, pass or
    fail, unless the daemon was already in a swarm (then it is used and left as it was).
    Yields "ours" or "existing"."""
    state = swarm_state()
    if state == "active":
        yield "existing"
        return
    if state != "inactive":
        fail("peer Docker swarm: node state is %r; expected inactive (or active)" % state)
    for port in SWARM_PORTS:
        busy = port_in_use(port)
        if busy:
            fail("peer Docker swarm: swarm mode needs port %d on 127.0.0.1, which is taken (%s)" % (port, busy))
    had_gwbridge = gwbridge_id()
    try:
        docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:%d" % SWARM_PORT,
               timeout=60)
        yield "ours"
    finally:
        docker("swarm", "leave", "--force", timeout=60, check=False)
        left = swarm_state()
        # swarm init created the docker_gwbridge network; remove it by id if it was not there before
        gw_id = gwbridge_id()
        if gw_id and not had_gwbridge:
            docker("network", "rm", gw_id, check=False)
        assert left == "inactive", "could not leave the swarm: state %r" % left


# ------------------------------------------------------------------ containers


class Containers:
    """Containers started by one test; all removed by id at teardown."""

    def __init__(self):
        self.ids = []

    def run(self, *args, image=BUSYBOX_IMAGE, cmd=(), timeout=DOCKER_TIMEOUT) -> str:
        """`docker run -d ARGS IMAGE CMD`; returns the full container id."""
        p = docker("run", "-d", "--label", TEST_LABEL, *args, image, *cmd, timeout=timeout, check=False)
        cid = p.stdout.decode().strip()
        if len(cid) == 64:
            self.ids.append(cid)
        if p.returncode != 0:
            fail("peer Docker: `docker run -d %s` exited with %d: %s"
                 % (" ".join(args), p.returncode, p.stderr.decode("utf-8", "replace").strip()))
        assert len(cid) == 64 and all(c in "0123456789abcdef" for c in cid), "docker run -d printed %r" % cid
        return cid

    def wait(self, cid, timeout=60.0, what="") -> int:
        """`docker wait`, bounded; returns the exit status."""
        p = run_cmd([docker_bin(), "wait", cid], "Docker container %s%s" % (cid[:12], what),
                    timeout=timeout, check=False)
        if p.returncode != 0:
            fail("peer Docker: `docker wait %s` failed: %s" % (cid[:12], p.stderr.decode().strip()))
        return int(p.stdout.decode().strip())

    def inspect(self, cid, fmt):
        return docker_out("inspect", "--format", fmt, cid)

    def remove_all(self):
        if self.ids:
            docker("rm", "-f", "-v", *self.ids, check=False, timeout=120)
            self.ids = []


class DockerLogs:
    """`docker logs -f` of one container (the daemon's local cache, which Docker 20.10
    keeps for drivers that cannot be read), line by line in a thread."""

    def __init__(self, cid):
        self.cid = cid
        self.proc = subprocess.Popen([docker_bin(), "logs", "-f", cid], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        self.lines = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in iter(self.proc.stdout.readline, b""):
            with self.cond:
                self.lines.append(raw.rstrip(b"\n"))
                self.cond.notify_all()

    def wait_for(self, line, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while line not in self.lines:
                left = deadline - time.monotonic()
                if left <= 0:
                    fail("peer Docker: `docker logs -f %s` did not show %r within %.0fs (got %d lines, last %r)"
                         % (self.cid[:12], line, timeout, len(self.lines), self.lines[-3:]))
                self.cond.wait(left)

    def wait_count(self, n, timeout, what):
        """The first ``n`` lines, once there are that many."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.lines) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    fail("peer %s: awaited %d lines in `docker logs -f %s` within %.0fs, got %d: %r"
                         % (what, n, self.cid[:12], timeout, len(self.lines), self.lines[-5:]))
                self.cond.wait(left)
            return list(self.lines[:n])

    def snapshot(self):
        with self.cond:
            return list(self.lines)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


# ------------------------------------------------------------------ gateway-side waits


def _fields(obj):
    if not isinstance(obj, dict):
        return {}
    f = obj.get("fields")
    return f if isinstance(f, dict) else obj


CLOSE_MESSAGES = ("connection closed", "closing connection", "connection ended")


def connection_counts(gw):
    """(accepted per peer, still open per peer) from the gateway's debug log."""
    with gw._cond:
        return connection_counts_locked(gw)


def probe_peer(gw):
    c = getattr(gw, "_probe_client", None)
    return c.local if c is not None else None


def wait_peer_connections_closed(gw, peer, min_accepted=1, timeout=30.0):
    """Wait until the gateway has accepted at least ``min_accepted`` connections besides the
    harness's probe connection, and every one of them is closed. The gateway logs the close
    only after every request read on that connection was handed to the publisher, so after
    this a probe sync proves nothing of the peer's is still on its way.

    Needs the gateway started with ``--log-level debug``.
    """
    mine = probe_peer(gw)
    deadline = time.monotonic() + timeout
    with gw._cond:
        while True:
            accepted, open_ = connection_counts_locked(gw)
            n = sum(c for p, c in accepted.items() if p != mine)
            still = {p: c for p, c in open_.items() if c and p != mine}
            if n >= min_accepted and not still:
                return n
            left = deadline - time.monotonic()
            if left <= 0:
                fail("peer %s: awaited %d closed connection(s) at the gateway within %.0fs; accepted %d, "
                     "still open %r" % (peer, min_accepted, timeout, n, still))
            gw._cond.wait(min(left, 1.0))


def connection_counts_locked(gw):
    accepted, open_ = collections.Counter(), collections.Counter()
    for _, obj in gw.logs:
        f = _fields(obj)
        msg, p = f.get("message"), f.get("peer")
        if msg == "connection accepted":
            accepted[p] += 1
            open_[p] += 1
        elif msg in CLOSE_MESSAGES:
            open_[p] -= 1
    return accepted, open_


def recv_n(sub, n, timeout, peer, what="publications"):
    """Exactly ``n`` non-probe messages at the pyzmq subscriber within ``timeout``."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        m = sub.recv(left) if left > 0 else None
        if m is None:
            fail("peer %s: awaited %d %s at the pyzmq subscriber, got %d within %.0fs; last: %r"
                 % (peer, n, what, len(out), timeout, [x[:2] + [x[2][:200]] for x in out[-3:]]))
        out.append(m)
    return out


def settle(gw, sub, peer, min_accepted=1, timeout=30.0):
    """After the peer closed its connections: every message the gateway still had from it,
    as a list (expected: empty)."""
    wait_peer_connections_closed(gw, peer, min_accepted=min_accepted, timeout=timeout)
    return sub.sync(gw)


# ------------------------------------------------------------------ ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, close)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def port_in_use(port: int, kind=socket.SOCK_STREAM) -> str | None:
    """None when ``port`` can be bound on 127.0.0.1 (and on all interfaces), else why not."""
    for host in ("127.0.0.1", "0.0.0.0"):
        s = socket.socket(socket.AF_INET, kind)
        if kind == socket.SOCK_STREAM:
            # as the gateway and libzmq bind: a listener on the port still makes bind
            # fail, a connection of an earlier run in TIME_WAIT does not
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return "%s %s:%d: %s" % ("tcp" if kind == socket.SOCK_STREAM else "udp", host, port, e)
        finally:
            s.close()
    return None


# ------------------------------------------------------------------ frames


def cid12(cid: str) -> bytes:
    return cid[:12].encode()


def seed_lines(msgs, cid):
    """The lines of one container from seed-format messages (frame 3 "<id12>: <line>")."""
    prefix = cid12(cid) + b": "
    return [m[2][len(prefix):] for m in msgs if m[2].startswith(prefix)]


def parse_rfc3339_ns(s: str) -> int:
    """"2026-11-25T21:03:33.123456789Z" -> ns since the epoch, exactly."""
    assert s.endswith("Z") and len(s) == 30 and s[19] == ".", "not RFC 3339 with 9 fraction digits: %r" % s
    secs = calendar.timegm(time.strptime(s[:19], "%Y-%m-%dT%H:%M:%S"))
    return secs * 10**9 + int(s[20:29])
