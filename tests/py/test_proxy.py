"""`fwdgate proxy`: libzmq's XSUB/XPUB proxy between gateways and subscribers.

Real processes throughout: fwdgate gateways whose PUB connects to the proxy's XSUB side,
and pyzmq (libzmq, the reference implementation) as the independent subscriber on the
XPUB side and as a publisher standing where a gateway would, reading the subscription
messages that reach it. Every endpoint is an ephemeral loopback port, learned from the
proxy's ready line; every wait is bounded and waits on a condition it can observe.
"""

import re
import signal
import socket
import subprocess
import time

import pytest
import zmq

import fwd
from conftest import Gateway, run_fwdgate, zmq_context
from fwd import ack, message, option
from test_metrics import get

T0 = 1700000000
WAIT = 10.0
# what libzmq adds to the stop: ZMQ_LINGER of the proxy's sockets is one second
STOP_BOUND = 5.0
LOOPBACK = ["--xsub-bind", "tcp://127.0.0.1:*", "--xpub-bind", "tcp://127.0.0.1:*"]


class Proxy(Gateway):
    """`fwdgate proxy` on ephemeral loopback endpoints, with its metrics endpoint."""

    def __init__(self, args=(), cwd=None):
        super().__init__([*LOOPBACK, "--metrics-listen", "127.0.0.1:0", *args], listen=False,
                         zmq_bind=False, cwd=cwd, command=("proxy",), ready_message="fwdgate proxy ready")

    def start(self):
        super().start()
        self.xsub = self.ready_fields["xsub"]
        self.xpub = self.ready_fields["xpub"]
        self.metrics_addr = self.ready_fields["metrics"]
        return self

    def get(self, path):
        return get(self.metrics_addr, path)

    def metrics(self) -> dict:
        """Every sample of /metrics by its name with labels, e.g.
        ``fwdgate_proxy_subscription_messages_total{kind="subscribe"}``."""
        status, text = self.get("/metrics")
        assert status == 200, text
        samples = {}
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            m = re.fullmatch(r"(fwdgate_proxy_\w+(?:\{[^}]*\})?) (\d+)", line)
            assert m, "not a sample: %r" % line
            assert m.group(1) not in samples, "%s twice" % m.group(1)
            samples[m.group(1)] = int(m.group(2))
        return samples

    def wait_metrics(self, expected: dict, timeout=WAIT) -> dict:
        """Wait until every metric in ``expected`` has its value (gauges follow libzmq's
        monitor events, which arrive a moment after a connection is made)."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            if all(m.get(k) == v for k, v in expected.items()):
                return m
            if time.monotonic() > deadline:
                raise AssertionError("metrics did not reach %r within %.0fs: %r" % (expected, timeout, m))
            time.sleep(0.05)


@pytest.fixture
def start_proxy(tmp_path):
    started = []

    def _start(*args):
        p = Proxy(args, cwd=str(tmp_path))
        started.append(p)
        return p.start()

    yield _start
    for p in started:
        p.stop()


@pytest.fixture
def sockets():
    """pyzmq sockets made by a test, closed at its end (linger 0)."""
    made = []

    def _socket(kind, **options):
        s = zmq_context().socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        for name, value in options.items():
            s.setsockopt(getattr(zmq, name), value)
        made.append(s)
        return s

    yield _socket
    for s in made:
        s.close(0)


def recv_bounded(sock, timeout=WAIT, what="a message"):
    if not sock.poll(int(timeout * 1000), zmq.POLLIN):
        raise AssertionError("no %s within %.0fs" % (what, timeout))
    return sock.recv_multipart(zmq.NOBLOCK)


def upstream_sees(up, expected: bytes, seen: list):
    """The next subscription message at the upstream XPUB is ``expected``."""
    [msg] = recv_bounded(up, what="subscription message %r upstream (seen so far %r)" % (expected, seen))
    seen.append(msg)
    assert msg == expected, "upstream saw %r, expected %r; all so far: %r" % (msg, expected, seen)


def wait_exit(proc, timeout):
    started = time.monotonic()
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError("the proxy did not exit within %.0fs of the signal" % timeout)
    return code, time.monotonic() - started


# ------------------------------------------------------------------ data through the proxy


def test_two_gateways_reach_a_subscriber_through_the_proxy(start_proxy, start_gateway, subscribe):
    proxy = start_proxy()
    gateways = [start_gateway("--zmq-connect", proxy.xsub, zmq_bind=False) for _ in range(2)]
    sub = subscribe(gateways[0], b"alpha", b"beta", ready=False, endpoint=proxy.xpub)
    # The probe tenant is subscribed after alpha and beta, on the same path: once a
    # gateway's probe arrives, that gateway has every subscription, and nothing it
    # sends from now on is dropped for want of one (slow joiner).
    others = []
    for gw in gateways:
        sub.wait_ready(gw)
        others += sub.pending
        sub.pending = []
    assert others == []
    before = proxy.metrics()

    lines = 5
    sent = {}
    for g, gw in enumerate(gateways):
        with gw.connect() as c:
            for i in range(lines):
                # "alph" is no match for the subscription "alpha" (a prefix of it, not
                # prefixed by it)
                for tenant in ("alpha", "beta", "gamma", "delta", "alph"):
                    line = "gw%d %s line %d" % (g, tenant, i)
                    chunk = "g%d-%s-%d" % (g, tenant, i)
                    c.send(message("app", T0, fwd.rec(line, tenant=tenant), option(chunk=chunk)))
                    assert c.recv_exact(len(ack(chunk))) == ack(chunk)
                    sent.setdefault((g, tenant), []).append(line)
    # a probe through each gateway after its lines: what arrives before it is all
    received = []
    for gw in gateways:
        received += sub.sync(gw)

    expected = sorted(
        [t.encode(), b"default", b"app: " + line.encode()]
        for (g, t), ls in sent.items() if t in ("alpha", "beta") for line in ls
    )
    assert sorted(received) == expected
    # each gateway's lines of one tenant in the order it sent them
    for (g, t), ls in sent.items():
        if t in ("alpha", "beta"):
            got = [m[2][len(b"app: "):].decode() for m in received
                   if m[0] == t.encode() and m[2].startswith(b"app: gw%d " % g)]
            assert got == ls

    after = proxy.wait_metrics({"fwdgate_proxy_publishers": 2, "fwdgate_proxy_subscribers": 1,
                                "fwdgate_proxy_subscriptions": 3})
    # the gateways publish only what somebody subscribes to: alpha's and beta's lines,
    # and the two probes of the syncs; gamma, delta and "alph" never reach the proxy
    delta = {k: after[k] - before[k] for k in ("fwdgate_proxy_messages_in_total", "fwdgate_proxy_messages_out_total")}
    assert delta == {"fwdgate_proxy_messages_in_total": 2 * 2 * lines + 2,
                     "fwdgate_proxy_messages_out_total": 2 * 2 * lines + 2}
    assert after["fwdgate_proxy_bytes_in_total"] == after["fwdgate_proxy_bytes_out_total"]
    assert after['fwdgate_proxy_subscription_messages_total{kind="subscribe"}'] == 3
    assert after['fwdgate_proxy_subscription_messages_total{kind="unsubscribe"}'] == 0


def test_metrics_count_messages_and_bytes_exactly(start_proxy, sockets):
    proxy = start_proxy()
    assert proxy.get("/healthz") == (200, "ok\n")
    assert proxy.get("/readyz") == (200, "ready\n")
    assert proxy.get("/nope")[0] == 404
    status, _ = proxy.get("/metrics")
    assert status == 200
    assert proxy.metrics() == {
        "fwdgate_proxy_messages_in_total": 0,
        "fwdgate_proxy_bytes_in_total": 0,
        "fwdgate_proxy_messages_out_total": 0,
        "fwdgate_proxy_bytes_out_total": 0,
        "fwdgate_proxy_publishers": 0,
        "fwdgate_proxy_subscribers": 0,
        "fwdgate_proxy_subscriptions": 0,
        'fwdgate_proxy_subscription_messages_total{kind="subscribe"}': 0,
        'fwdgate_proxy_subscription_messages_total{kind="unsubscribe"}': 0,
    }

    # a publisher where a gateway stands: an XPUB, so that it can tell when the
    # subscription has reached it and its filter is in place
    pub = sockets(zmq.XPUB)
    pub.connect(proxy.xsub)
    sub = sockets(zmq.SUB, RCVHWM=0)
    sub.connect(proxy.xpub)
    sub.setsockopt(zmq.SUBSCRIBE, b"m1")
    assert recv_bounded(pub, what="the subscription upstream") == [b"\x01m1"]

    n = 50
    sent = []
    for i in range(n):
        msg = [b"m1", b"svc", b"x" * (i * 37)]
        pub.send_multipart(msg)
        sent.append(msg)
        # never subscribed: the publisher's own filter drops it, the proxy never sees it
        pub.send_multipart([b"other", b"svc", b"y" * 100])
    got = [recv_bounded(sub, what="message %d of %d" % (i + 1, n)) for i in range(n)]
    assert got == sent
    size = sum(len(f) for m in sent for f in m)
    proxy.wait_metrics({
        "fwdgate_proxy_messages_in_total": n,
        "fwdgate_proxy_bytes_in_total": size,
        "fwdgate_proxy_messages_out_total": n,
        "fwdgate_proxy_bytes_out_total": size,
        "fwdgate_proxy_publishers": 1,
        "fwdgate_proxy_subscribers": 1,
        "fwdgate_proxy_subscriptions": 1,
        'fwdgate_proxy_subscription_messages_total{kind="subscribe"}': 1,
        'fwdgate_proxy_subscription_messages_total{kind="unsubscribe"}': 0,
    }, timeout=2.0)

    # the subscriber goes: its subscription is withdrawn upstream, the gauges follow
    sub.close(0)
    assert recv_bounded(pub, what="the unsubscription upstream") == [b"\x00m1"]
    proxy.wait_metrics({
        "fwdgate_proxy_subscribers": 0,
        "fwdgate_proxy_subscriptions": 0,
        'fwdgate_proxy_subscription_messages_total{kind="unsubscribe"}': 1,
    })


# ------------------------------------------------------------------ subscriptions upstream


def test_subscriptions_reach_upstream_once_per_topic(start_proxy, sockets):
    proxy = start_proxy()
    # standing where a gateway stands; VERBOSER so that it reports every subscription
    # message that reaches it, duplicates included, not only the changes
    up = sockets(zmq.XPUB, XPUB_VERBOSER=1)
    up.connect(proxy.xsub)
    seen = []

    sub1 = sockets(zmq.SUB)
    sub1.connect(proxy.xpub)
    sub1.setsockopt(zmq.SUBSCRIBE, b"upx")
    upstream_sees(up, b"\x01upx", seen)

    # a second subscriber of the same topic: not passed on again (the marker topic
    # after it, on the same path, shows that nothing came before it)
    sub2 = sockets(zmq.SUB)
    sub2.connect(proxy.xpub)
    sub2.setsockopt(zmq.SUBSCRIBE, b"upx")
    sub2.setsockopt(zmq.SUBSCRIBE, b"mark1")
    upstream_sees(up, b"\x01mark1", seen)
    proxy.wait_metrics({"fwdgate_proxy_subscribers": 2, "fwdgate_proxy_subscriptions": 2})

    # the first leaves: upx still has a subscriber, nothing goes upstream for it
    sub1.close(0)
    proxy.wait_metrics({"fwdgate_proxy_subscribers": 1})
    sub2.setsockopt(zmq.UNSUBSCRIBE, b"mark1")
    upstream_sees(up, b"\x00mark1", seen)

    # the last leaves: now upx is withdrawn upstream
    sub2.close(0)
    upstream_sees(up, b"\x00upx", seen)

    # and nothing else was on its way: the next message is a new subscriber's
    sub3 = sockets(zmq.SUB)
    sub3.connect(proxy.xpub)
    sub3.setsockopt(zmq.SUBSCRIBE, b"mark3")
    upstream_sees(up, b"\x01mark3", seen)
    assert seen == [b"\x01upx", b"\x01mark1", b"\x00mark1", b"\x00upx", b"\x01mark3"]

    # a publisher that connects later is told every subscription standing
    late = sockets(zmq.XPUB, XPUB_VERBOSER=1)
    late.connect(proxy.xsub)
    assert recv_bounded(late, what="the standing subscription at a late publisher") == [b"\x01mark3"]

    proxy.wait_metrics({
        "fwdgate_proxy_publishers": 2,
        "fwdgate_proxy_subscribers": 1,
        "fwdgate_proxy_subscriptions": 1,
        'fwdgate_proxy_subscription_messages_total{kind="subscribe"}': 3,
        'fwdgate_proxy_subscription_messages_total{kind="unsubscribe"}': 2,
    })
    assert not up.poll(0), "upstream got more: %r" % up.recv_multipart()


# ------------------------------------------------------------------ stopping


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_promptly_with_a_stuck_subscriber(start_proxy, sockets, sig):
    """A subscriber that reads nothing holds queued messages at the proxy; the stop
    still ends within the linger bound, and exits 0."""
    proxy = start_proxy()
    pub = sockets(zmq.XPUB, SNDHWM=0)
    pub.connect(proxy.xsub)
    stuck = sockets(zmq.SUB, RCVHWM=1, RCVBUF=4096)
    stuck.connect(proxy.xpub)
    stuck.setsockopt(zmq.SUBSCRIBE, b"s")
    assert recv_bounded(pub, what="the subscription upstream") == [b"\x01s"]
    n = 5000
    body = b"z" * 4096
    for _ in range(n):
        pub.send_multipart([b"s", body])
    # the proxy has taken all of them: what the subscriber cannot take is queued at the
    # proxy (up to its high-water mark) or dropped there
    proxy.wait_metrics({"fwdgate_proxy_messages_in_total": n}, timeout=30)
    proxy.proc.send_signal(sig)
    code, took = wait_exit(proxy.proc, STOP_BOUND)
    assert code == 0, proxy.stderr_text()[-2000:]
    print("stopped %.2fs after the signal" % took)
    proxy._reader.join(5)
    stopped = proxy.log_lines(lambda raw, obj: "fwdgate proxy stopped" in raw)
    assert len(stopped) == 1, proxy.stderr_text()[-2000:]
    assert "messages_in=%d " % n in stopped[0]
    # the sockets closed within the bound, with nothing left hanging
    warnings = proxy.log_lines(lambda raw, obj: '"WARN"' in raw or "ERROR" in raw)
    assert warnings == [], warnings


def test_sigterm_right_after_ready_stops_cleanly(start_proxy):
    """The handlers are in place before the ready line."""
    for _ in range(10):
        proxy = start_proxy()
        proxy.proc.send_signal(signal.SIGTERM)
        code, _ = wait_exit(proxy.proc, STOP_BOUND)
        assert code == 0, proxy.stderr_text()[-2000:]
        proxy._reader.join(5)
        assert proxy.log_lines(lambda raw, obj: "fwdgate proxy stopped" in raw), proxy.stderr_text()


# ------------------------------------------------------------------ errors and help


def taken_port():
    """A loopback port with a listener on it, and the listener (close it after)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s, s.getsockname()[1]


@pytest.mark.parametrize("case", ["bad-transport", "bad-port-variable", "metrics-address", "port-taken",
                                  "metrics-port-taken", "log-level", "log-format-variable"])
def test_a_bad_value_is_one_clear_error(tmp_path, case):
    listener, port = taken_port()
    try:
        args, env = list(LOOPBACK), {}
        if case == "bad-transport":
            args += ["--xsub-bind", "bogus://x"]
            want = 'flag --xsub-bind: cannot bind ZeroMQ endpoint "bogus://x": Protocol not supported'
        elif case == "bad-port-variable":
            args = ["--xsub-bind", "tcp://127.0.0.1:*"]
            env = {"FWDGATE_PROXY_XPUB_BIND": "tcp://127.0.0.1:notaport"}
            want = ('environment variable FWDGATE_PROXY_XPUB_BIND: cannot bind ZeroMQ endpoint '
                    '"tcp://127.0.0.1:notaport": Invalid argument')
        elif case == "metrics-address":
            args += ["--metrics-listen", "nope"]
            want = 'flag --metrics-listen: "nope" is not a host:port address'
        elif case == "port-taken":
            args += ["--xpub-bind", "tcp://127.0.0.1:%d" % port]
            want = ('flag --xpub-bind: cannot bind ZeroMQ endpoint "tcp://127.0.0.1:%d": '
                    "Address already in use" % port)
        elif case == "metrics-port-taken":
            env = {"FWDGATE_PROXY_METRICS_LISTEN": "127.0.0.1:%d" % port}
            want = ("environment variable FWDGATE_PROXY_METRICS_LISTEN: cannot listen on 127.0.0.1:%d: "
                    "Address already in use (os error 98)" % port)
        elif case == "log-level":
            args += ["--log-level", "x=y=z"]
            want = 'flag --log-level: invalid log level "x=y=z"'
        else:
            # the gateway's --log-format has another variable: the proxy's is named
            env = {"FWDGATE_PROXY_LOG_FORMAT": "xml"}
            want = 'environment variable FWDGATE_PROXY_LOG_FORMAT: invalid value "xml" (possible values: text, json)'
        p = run_fwdgate(["proxy", *args], env=env, cwd=tmp_path)
    finally:
        listener.close()
    err = p.stderr.decode()
    assert p.returncode == 1, err
    assert p.stdout == b""
    assert len(err.splitlines()) == 1, err
    assert err.startswith("fwdgate: error: " + want), err


def test_proxy_help_lists_its_options_and_variables(tmp_path):
    p = run_fwdgate(["proxy", "--help"], cwd=tmp_path)
    assert p.returncode == 0
    text = p.stdout.decode()
    options = sorted(set(re.findall(r"^\s+(?:-\w, )?(--[\w-]+)", text, re.M)))
    assert options == sorted(["--xsub-bind", "--xpub-bind", "--send-hwm", "--metrics-listen", "--log-format",
                              "--log-level", "--help"])
    for variable in ("FWDGATE_PROXY_XSUB_BIND", "FWDGATE_PROXY_XPUB_BIND", "FWDGATE_PROXY_SEND_HWM",
                     "FWDGATE_PROXY_METRICS_LISTEN", "FWDGATE_PROXY_LOG_FORMAT", "FWDGATE_PROXY_LOG_LEVEL"):
        assert "[env: %s=" % variable in text, variable
    assert "[default: tcp://0.0.0.0:6363]" in text and "[default: tcp://0.0.0.0:6364]" in text
    assert "[default: 100000]" in text
