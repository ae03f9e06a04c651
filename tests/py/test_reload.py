"""SIGHUP reloads the configuration: routing rules, keys, limits and the ZeroMQ endpoints
change while client connections stay open; what needs a restart is named and left as
it was; a configuration that does not load changes nothing."""

import re
import signal

import fwd
from conftest import Subscriber, PROBE_TENANT
from fwd import ack, message, option
from peers import free_port
from test_handshake import Peer
from test_metrics import get, metric, wait_for

T0 = 1700000000


def write(path, text):
    path.write_text(text + '\n[metrics]\nlisten = "127.0.0.1:0"\n[shutdown]\ntimeout_ms = 500\n')


def reload(gw, after, what="configuration reloaded"):
    """Sends SIGHUP and waits for the gateway's answer, logged after line `after`."""
    gw.proc.send_signal(signal.SIGHUP)
    found = gw.wait_log(lambda raw, obj: what in raw and raw not in after, timeout=10)
    assert found, "no %r after SIGHUP; log:\n%s" % (what, gw.stderr_text()[-3000:])
    return found


def seen(gw):
    return {raw for raw, _ in gw.logs}


def acked(c, chunk, record):
    c.send(message("app", T0, record, option(chunk=chunk)))
    assert c.recv_exact(len(ack(chunk)), timeout=10) == ack(chunk), "%s not acked" % chunk


def publisher_reloaded(gw, before):
    assert gw.wait_log(lambda raw, obj: "publisher: reloaded" in raw and raw not in before, timeout=10)


def started(start_gateway, tmp_path, prefix):
    """A gateway whose configuration file binds one endpoint, and a subscriber there."""
    port = free_port()
    cfg = tmp_path / "gw.toml"
    write(cfg, '[output]\nzmq_bind = ["tcp://127.0.0.1:%d"]\n' % port)
    gw = start_gateway("--config", str(cfg), zmq_bind=False)
    sub = Subscriber("tcp://127.0.0.1:%d" % port, (prefix,), PROBE_TENANT.encode())
    return cfg, port, gw, sub


def test_routes_limits_and_endpoints_change_while_connections_stay(start_gateway, tmp_path):
    cfg, _, gw, a = started(start_gateway, tmp_path, b"")
    p2 = free_port()
    try:
        a.wait_ready(gw)
        c = gw.connect()
        acked(c, "v1", fwd.rec("before", tenant="t1", OTHER="o1"))
        assert a.recv(5)[0] == b"t1"

        # Routed by OTHER first now, on another endpoint, with a tenant rate limit; and
        # a setting that needs a restart.
        write(cfg, '[route]\ntenant_keys = ["OTHER", "TENANT_ID"]\n'
                   '[output]\nzmq_bind = ["tcp://127.0.0.1:%d"]\n'
                   '[limits]\ntenant_events_per_second = 1\ntenant_burst = 3\n'
                   '[input]\nmax_frame_size = 1048576\n' % p2)
        before = seen(gw)
        line = reload(gw, before)
        publisher_reloaded(gw, before)
        assert "route.tenant_keys" in line and "output.zmq_bind" in line
        assert "limits.tenant_events_per_second" in line
        kept = gw.wait_log(lambda raw, obj: "only at a restart" in raw and raw not in before, timeout=5)
        assert kept and "input.max_frame_size" in kept and "route" not in kept

        b = Subscriber("tcp://127.0.0.1:%d" % p2, (b"",), PROBE_TENANT.encode())
        try:
            b.wait_ready(gw)
            # The connection opened before the reload is still served, with the new routes.
            acked(c, "v2", fwd.rec("after", tenant="t1", OTHER="o1"))
            m = b.recv(5)
            assert m is not None and m[0] == b"o1"
            assert a.recv(0.5) is None, "the unbound endpoint still publishes"
            # 20 lines of one tenant at once: the burst of 3 passes (4 if a second
            # went by), the rest is dropped and counted.
            for i in range(20):
                acked(c, "rl%d" % i, fwd.rec("rl %d" % i, tenant="trl"))
            got = []
            while (m := b.recv(0.5)) is not None:
                got.append(m)
            limited = metric(get(gw.ready_fields["metrics"], "/metrics")[1],
                             'fwdgate_tenant_events_rate_limited_total{tenant="trl"}')
            assert 3 <= len(got) <= 4 and len(got) + limited == 20, (len(got), limited)

            # A configuration that does not load changes nothing.
            cfg.write_text("[route\n")
            before = seen(gw)
            reload(gw, before, "configuration not reloaded")
            acked(c, "v3", fwd.rec("still", tenant="t1", OTHER="o2"))
            m = b.recv(5)
            assert m is not None and m[0] == b"o2"
        finally:
            b.close()
        c.close()
    finally:
        a.close()


def test_a_new_key_applies_to_new_connections_only(start_gateway, tmp_path):
    cfg, port, gw, sub = started(start_gateway, tmp_path, b"tkey")
    try:
        sub.wait_ready(gw)
        old = gw.connect()
        acked(old, "k0", fwd.rec("open before", tenant="tkey"))
        write(cfg, '[output]\nzmq_bind = ["tcp://127.0.0.1:%d"]\n'
                   '[security]\nshared_key = "n3w"\nself_hostname = "gw"\n' % port)
        before = seen(gw)
        line = reload(gw, before)
        assert "security.shared_key" in line
        # A new connection must pass the handshake with the new key.
        p = Peer(gw)
        helo = p.read_value()
        assert helo[0] == "HELO"
        pong = p.ping("n3w", nonce=helo[1]["nonce"])
        assert pong[:2] == ["PONG", True]
        acked(p.c, "k1", fwd.rec("new key", tenant="tkey"))
        wrong = Peer(gw)
        nonce = wrong.read_value()[1]["nonce"]
        assert wrong.ping("old-or-none", nonce=nonce)[:2] == ["PONG", False]
        # The connection that was open goes on without a handshake.
        acked(old, "k2", fwd.rec("still open", tenant="tkey"))
        lines = sorted(m[2] for m in sub.recv_n(3))
        assert [re.sub(rb"^[^:]*: ", b"", l) for l in lines] == [b"new key", b"open before", b"still open"]
        p.c.close()
        wrong.c.close()
        old.close()
    finally:
        sub.close()
