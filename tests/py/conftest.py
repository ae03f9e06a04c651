"""Fixtures for the fwdgate integration tests: a gateway process factory, a ZeroMQ
subscriber that synchronises with the gateway without sleeping, and a `fwdgate tail`
subprocess helper.

The binary is taken from $FWDGATE_BIN, else <repo>/target/debug/fwdgate.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fwd  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
FWDGATE_BIN = os.environ.get("FWDGATE_BIN", str(REPO_ROOT / "target" / "debug" / "fwdgate"))

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
PROBE_TENANT = "zzprobe"
PROBE_SERVICE = "zzprobe-svc"
PROBE_TAG = "probe"


def require_binary():
    if not os.access(FWDGATE_BIN, os.X_OK):
        pytest.fail("fwdgate binary not found at %s (set FWDGATE_BIN)" % FWDGATE_BIN, pytrace=False)


def terminate(proc):
    """SIGTERM a process still running and wait for it; SIGKILL it if it outlasts
    STOP_TIMEOUT."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(STOP_TIMEOUT)


def clean_env(extra=None) -> dict:
    """The test process environment without any FWDGATE_* or RUST_LOG variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FWDGATE_") and k != "RUST_LOG"}
    if extra:
        env.update(extra)
    return env


def run_fwdgate(args, env=None, timeout=20.0, cwd=None) -> subprocess.CompletedProcess:
    """Run a short-lived fwdgate command (check-config, failing starts) with a bound."""
    require_binary()
    return subprocess.run(
        [FWDGATE_BIN, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=clean_env(env),
        timeout=timeout,
        cwd=cwd,
    )


def _fields(obj):
    if not isinstance(obj, dict):
        return {}
    f = obj.get("fields")
    return f if isinstance(f, dict) else obj


def _split(v) -> list:
    if v is None:
        return []
    return [p.strip() for p in str(v).split(",") if p.strip()]


def _hostport(s: str):
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


def _arg_values(args, flag) -> list:
    out = []
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            out.append(args[i + 1])
        elif a.startswith(flag + "="):
            out.append(a[len(flag) + 1:])
    return out


_PATH_STEP = re.compile(r"""\.([^.\[\]'"]+)|\[(?:'([^']*)'|"([^"]*)")\]""")


def key_path(key: str) -> list:
    """The map keys a routing key names: a plain name is itself; a record_accessor path
    (`$.a.b`, `$['a.b']['c']`, `$a['b']`) its steps (array indices are not needed here)."""
    if not key.startswith("$"):
        return [key]
    text = key[1:]
    if text and text[0] not in ".[":
        text = "." + text
    steps, at = [], 0
    while at < len(text):
        m = _PATH_STEP.match(text, at)
        assert m, "routing key %r: cannot follow it at %d" % (key, at + 2)
        steps.append(next(g for g in m.groups() if g is not None))
        at = m.end()
    return steps


def set_key(record: dict, key: str, value):
    """Sets the value that routing key ``key`` reads in ``record``, making the maps on
    its path."""
    *inner, last = key_path(key)
    for step in inner:
        record = record.setdefault(step, {})
    record[last] = value


class Gateway:
    """One fwdgate process, started with JSON logs and ephemeral ports."""

    def __init__(self, args, env=None, listen=True, zmq_bind=True, tenant_keys=None,
                 service_keys=None, cwd=None, command=(), ready_message="fwdgate ready"):
        """``ready_message``: the log line that says the process is ready (`fwdgate
        proxy` logs "fwdgate proxy ready")."""
        self.args = list(args)
        self.ready_message = ready_message
        base = []
        if listen:
            base += ["--listen", "127.0.0.1:0"]
        if zmq_bind:
            base += ["--zmq-bind", "tcp://127.0.0.1:*"]
        base += ["--log-format", "json"]
        self.argv = [FWDGATE_BIN, *command, *base, *self.args]
        self.env = clean_env(env)
        self.cwd = cwd
        self.tenant_keys = tenant_keys or _arg_values(self.args, "--tenant-key") or ["TENANT_ID"]
        self.service_keys = service_keys or _arg_values(self.args, "--service-key") or ["SERVICE_ID"]
        suffix = _arg_values(self.args, "--topic-suffix")
        self.topic_suffix = suffix[-1].encode() if suffix else b""
        self.logs = []  # list of (raw line, parsed json or None)
        self._cond = threading.Condition()
        self._ready = None
        self._eof = False
        self.proc = None
        self._probe_client = None

    # ---------------------------------------------------------------- process
    def start(self):
        require_binary()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
        )
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + READY_TIMEOUT
        with self._cond:
            while self._ready is None and not self._eof:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        if self._ready is None:
            self.stop()
            pytest.fail(
                "fwdgate did not log %r within %.0fs (argv %r, exit %r); stderr so far:\n%s"
                % (self.ready_message, READY_TIMEOUT, self.argv, self.proc.returncode, self.stderr_text()),
                pytrace=False,
            )
        f = _fields(self._ready)
        self.ready_fields = f
        self.tcp = [_hostport(a) for a in _split(f.get("tcp"))]
        self.unix = _split(f.get("unix"))
        self.udp = [_hostport(a) for a in _split(f.get("udp"))]
        self.zmq_bind = _split(f.get("zmq_bind"))
        self.zmq_connect = _split(f.get("zmq_connect"))
        return self

    def _read_stderr(self):
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            with self._cond:
                self.logs.append((line, obj))
                if self._ready is None and _fields(obj).get("message") == self.ready_message:
                    self._ready = obj
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def stop(self):
        if self._probe_client is not None:
            self._probe_client.close()
            self._probe_client = None
        if self.proc is None:
            return
        terminate(self.proc)
        # The process has exited, but its last lines may still be in the pipe: wait for
        # the reader to reach the end, so the logs are complete when stop() returns.
        self._reader.join(STOP_TIMEOUT)

    # ---------------------------------------------------------------- logs
    def stderr_text(self) -> str:
        with self._cond:
            return "\n".join(l for l, _ in self.logs)

    def wait_log(self, pred, timeout=5.0):
        """Wait until a log line satisfies ``pred(raw, obj)``; return it or None."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                while seen < len(self.logs):
                    raw, obj = self.logs[seen]
                    seen += 1
                    if pred(raw, obj):
                        return raw
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    return None
                self._cond.wait(left)

    def log_lines(self, pred) -> list:
        with self._cond:
            return [raw for raw, obj in self.logs if pred(raw, obj)]

    @staticmethod
    def is_warn_about(text):
        def pred(raw, obj):
            return (isinstance(obj, dict) and str(obj.get("level", "")).upper() == "WARN"
                    and text in json.dumps(_fields(obj)))
        return pred

    # ---------------------------------------------------------------- clients
    @property
    def addr(self):
        return self.tcp[0]

    def connect(self, addr=None, timeout=10.0) -> fwd.Client:
        return fwd.Client(addr if addr is not None else self.addr, timeout=timeout)

    def probe_record(self, marker: str, tenant=PROBE_TENANT, service=PROBE_SERVICE) -> dict:
        r = {}
        for k in self.tenant_keys:
            set_key(r, k, tenant)
        for k in self.service_keys:
            set_key(r, k, service)
        r["log"] = marker
        return r

    def send_probe(self, marker: str, tenant=PROBE_TENANT, service=PROBE_SERVICE):
        if self._probe_client is None:
            self._probe_client = self.connect()
        self._probe_client.send(
            fwd.message(PROBE_TAG, int(time.time()), self.probe_record(marker, tenant, service), {})
        )


_CTX = None


def zmq_context():
    global _CTX
    if _CTX is None:
        _CTX = zmq.Context()
    return _CTX


class Subscriber:
    """A SUB socket on the gateway's PUB endpoint, with bounded receives."""

    def __init__(self, endpoint: str, prefixes, probe_prefix: bytes, bind=False):
        self.sock = zmq_context().socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.LINGER, 0)
        if bind:
            self.sock.bind(endpoint)
            self.endpoint = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        else:
            self.sock.connect(endpoint)
            self.endpoint = endpoint
        for p in prefixes:
            self.sock.setsockopt(zmq.SUBSCRIBE, p)
        self.sock.setsockopt(zmq.SUBSCRIBE, probe_prefix)
        self.probe_prefix = probe_prefix
        self.pending = []  # non-probe messages seen while synchronising

    def _recv_raw(self, timeout):
        if self.pending:
            return self.pending.pop(0)
        if self.sock.poll(int(timeout * 1000), zmq.POLLIN):
            return self.sock.recv_multipart(zmq.NOBLOCK)
        return None

    def recv(self, timeout=5.0):
        """One multipart message (list of bytes), or None when ``timeout`` expires.

        Probe messages (harness traffic, possibly sent for another subscriber) are skipped.
        """
        deadline = time.monotonic() + timeout
        while True:
            m = self._recv_raw(max(deadline - time.monotonic(), 0))
            if m is None or not self.is_probe(m):
                return m

    def recv_n(self, n: int, timeout=10.0) -> list:
        """Exactly ``n`` messages within ``timeout`` overall, else an assertion error."""
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            m = self.recv(max(left, 0)) if left > 0 else None
            if m is None:
                raise AssertionError(
                    "expected %d messages, got %d within %.1fs; last few: %r" % (n, len(out), timeout, out[-3:])
                )
            out.append(m)
        return out

    def expect_silence(self, timeout=0.3):
        m = self.recv(timeout)
        assert m is None, "unexpected publication: %r" % (m,)

    def is_probe(self, m) -> bool:
        return m[0].startswith(self.probe_prefix)

    def sync(self, gw: Gateway, timeout=10.0) -> list:
        """Send one probe through the gateway and collect every non-probe message that
        arrives before it. Everything the gateway had accepted before is delivered first."""
        marker = "probe-sync-" + uuid.uuid4().hex
        gw.send_probe(marker)
        others = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            m = self._recv_raw(left) if left > 0 else None
            if m is None:
                raise AssertionError("sync probe %s not received within %.1fs; got before it: %r"
                                     % (marker, timeout, others))
            if self.is_probe(m):
                if marker.encode() in m[2]:
                    return others
                continue
            others.append(m)

    def wait_ready(self, gw: Gateway, timeout=READY_TIMEOUT):
        """Defeat the slow-joiner problem: probe until one probe arrives, then drain."""
        deadline = time.monotonic() + timeout
        n = 0
        while True:
            if time.monotonic() > deadline:
                raise AssertionError("subscriber never received a probe within %.0fs; gateway stderr:\n%s"
                                     % (timeout, gw.stderr_text()))
            gw.send_probe("probe-wait-%d" % n)
            n += 1
            if self.sock.poll(100, zmq.POLLIN):
                m = self.sock.recv_multipart(zmq.NOBLOCK)
                if self.is_probe(m):
                    break
                self.pending.append(m)
        self.pending.extend(self.sync(gw, timeout=max(deadline - time.monotonic(), 5.0)))
        return self

    def close(self):
        self.sock.close(0)


class Tail:
    """`fwdgate tail ...` as a subprocess; stdout lines are queued as bytes without "\\n"."""

    def __init__(self, args, env=None, prefix=()):
        """``prefix``: a command that runs tail, e.g. ``unshare --pid --fork``."""
        require_binary()
        self.errfile = tempfile.TemporaryFile()
        self.argv = [*prefix, FWDGATE_BIN, "tail", *args]
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self.errfile, env=clean_env(env))
        self.q = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in iter(self.proc.stdout.readline, b""):
            self.q.put(raw[:-1] if raw.endswith(b"\n") else raw)
        self.q.put(None)

    def line(self, timeout=5.0):
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            return None

    def stderr_text(self) -> str:
        self.errfile.seek(0)
        return self.errfile.read().decode("utf-8", "replace")

    def wait_ready(self, gw: Gateway, tenant: str, service: str, timeout=READY_TIMEOUT):
        """Send probe lines for tenant/service until tail prints one, then drain up to a
        final marker. Returns every non-probe line printed meanwhile."""
        deadline = time.monotonic() + timeout
        n = 0
        others = []
        while True:
            if time.monotonic() > deadline:
                raise AssertionError("tail printed no probe within %.0fs; tail stderr:\n%s"
                                     % (timeout, self.stderr_text()))
            gw.send_probe("tailprobe-%d" % n, tenant=tenant, service=service)
            n += 1
            ln = self.line(0.1)
            if ln is None:
                if self.proc.poll() is not None:
                    raise AssertionError("tail exited with %r; stderr:\n%s" % (self.proc.returncode, self.stderr_text()))
                continue
            if b"tailprobe-" in ln:
                break
            others.append(ln)
        final = "tailprobe-final-" + uuid.uuid4().hex
        gw.send_probe(final, tenant=tenant, service=service)
        while True:
            left = deadline + 10 - time.monotonic()
            ln = self.line(left) if left > 0 else None
            if ln is None:
                raise AssertionError("tail did not print the final probe; stderr:\n%s" % self.stderr_text())
            if final.encode() in ln:
                return others
            if b"tailprobe-" not in ln:
                others.append(ln)

    def stop(self):
        terminate(self.proc)
        self.errfile.close()


# -------------------------------------------------------------------- fixtures


@pytest.fixture
def start_gateway(tmp_path):
    """Factory: ``start_gateway(*extra_args, env=None, ...)`` -> a ready :class:`Gateway`."""
    started = []

    def _start(*args, **kw):
        kw.setdefault("cwd", str(tmp_path))
        gw = Gateway(args, **kw)
        started.append(gw)
        return gw.start()

    yield _start
    for gw in started:
        gw.stop()


@pytest.fixture
def subscribe():
    """Factory: ``subscribe(gw, *prefixes, ready=True)`` -> a :class:`Subscriber`.

    With no prefixes it subscribes to everything. The probe tenant is always subscribed.
    """
    subs = []

    def _sub(gw, *prefixes, ready=True, endpoint=None):
        s = Subscriber(endpoint or gw.zmq_bind[0], prefixes or (b"",), PROBE_TENANT.encode())
        subs.append(s)
        if ready:
            s.wait_ready(gw)
        return s

    def _bound(*prefixes):
        """A SUB that binds an ephemeral endpoint (for --zmq-connect); call wait_ready later."""
        s = Subscriber("tcp://127.0.0.1:*", prefixes or (b"",), PROBE_TENANT.encode(), bind=True)
        subs.append(s)
        return s

    _sub.bound = _bound
    yield _sub
    for s in subs:
        s.close()


@pytest.fixture
def start_tail():
    tails = []

    def _start(*args, **kw):
        t = Tail(list(args), **kw)
        tails.append(t)
        return t

    yield _start
    for t in tails:
        t.stop()


@pytest.fixture
def gw(start_gateway):
    """A gateway in the default (seed) format."""
    return start_gateway()


@pytest.fixture
def jgw(start_gateway):
    """A gateway in the json format."""
    return start_gateway("--format", "json")


@pytest.fixture
def sub(gw, subscribe):
    return subscribe(gw)


@pytest.fixture
def jsub(jgw, subscribe):
    return subscribe(jgw)


@pytest.fixture(scope="session")
def gzip_bomb_bytes():
    return fwd.gzip_bomb()


def pytest_sessionfinish(session, exitstatus):
    global _CTX
    if _CTX is not None:
        _CTX.term()
        _CTX = None


# -------------------------------------------------------------------- markers
# `docker`: the test needs a Docker daemon (it uses one of the fixtures below); `release`:
# it needs the release build or what is made from it (the .deb, the image, the README's
# `cargo install`). `scripts/test-all.sh --quick` runs the tests that are neither.
DOCKER_FIXTURES = {"dockerd", "empty_dockerd", "busybox_image", "containers", "swarm"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if DOCKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.docker)


# -------------------------------------------------------------------- real peers (Docker)
# Session-wide: the Docker daemon (the private one the test command started and named in
# DOCKER_HOST, else one started here and stopped at the end) and the local busybox image.
# Per test: `empty_dockerd`, another private daemon with nothing in it.


@pytest.fixture(scope="session")
def dockerd():
    import peers

    d = peers.Dockerd().ensure()
    yield d
    d.stop()


@pytest.fixture
def empty_dockerd(dockerd):
    """A second private Docker daemon, started for this test with an empty image store
    (what a fresh machine has), and stopped with its data removed afterwards."""
    import peers

    d = peers.PrivateDockerd().start()
    yield d
    d.stop()


@pytest.fixture(scope="session")
def busybox_image(dockerd):
    import peers

    peers.ensure_busybox_image()
    return peers.BUSYBOX_IMAGE


@pytest.fixture(scope="module")
def swarm(dockerd):
    """A single-node swarm (on 127.0.0.1) for the module's tests: initialised once for
    the module and left afterwards, pass or fail, unless the daemon was already in a
    swarm before (then it is used and left as it was). Yields "ours" or "existing"."""
    import peers

    with peers.single_node_swarm() as how:
        yield how


@pytest.fixture
def containers(dockerd):
    """Tracks containers a test starts; removes them by id afterwards, pass or fail."""
    import peers

    c = peers.Containers()
    yield c
    c.remove_all()
