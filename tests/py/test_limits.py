"""Limits against abuse of an open port: source allow/deny, connection caps, idle
timeout and slow-sender protection; each counted, each leaving other clients alone."""

import re
import socket
import time

import fwd
from conftest import Gateway
from fwd import ack, message, option

T0 = 1700000000


def config(tmp_path, text):
    # Nobody subscribes in these tests: a short shutdown keeps the gateway from waiting
    # for a subscriber to take what it holds.
    p = tmp_path / "limits.toml"
    p.write_text(text + "\n[shutdown]\ntimeout_ms = 300\n")
    return str(p)


def stopped(gw):
    gw.stop()
    raw = gw.wait_log(lambda raw, obj: "fwdgate stopped" in raw, timeout=10)
    assert raw is not None, "no 'fwdgate stopped' line (exit %r); log:\n%s" % (
        gw.proc.returncode, gw.stderr_text()[-3000:])
    return raw


def acked(c, chunk, line="x"):
    c.send(message("app", T0, fwd.rec(line, tenant="tlim"), option(chunk=chunk)))
    return c.recv_exact(len(ack(chunk)), timeout=5) == ack(chunk)


def refused(c):
    closed, data = c.wait_closed(5)
    return closed and data == b""


def test_deny_and_allow_networks(start_gateway, tmp_path):
    gw = start_gateway("--config", config(tmp_path, '[input]\ndeny = ["127.0.0.0/8"]\n'))
    c = gw.connect()
    assert refused(c)
    c.close()
    gw2 = start_gateway("--config", config(tmp_path, '[input]\nallow = ["10.0.0.0/8", "::1"]\n'))
    c = gw2.connect()
    assert refused(c)
    c.close()
    assert gw2.wait_log(lambda raw, obj: "not in input.allow" in raw, timeout=5) is not None
    gw3 = start_gateway("--config", config(tmp_path, '[input]\nallow = ["127.0.0.1"]\n'))
    with gw3.connect() as c:
        assert acked(c, "ok")


def test_connection_caps(start_gateway, tmp_path):
    gw = start_gateway("--config", config(
        tmp_path, "[limits]\nmax_connections = 3\nmax_connections_per_source = 2\n"))
    a, b = gw.connect(), gw.connect()
    assert acked(a, "a") and acked(b, "b")
    third = gw.connect()
    assert refused(third), "a third connection from one source was accepted"
    third.close()
    a.close()
    # once a place is free, a new connection gets it
    deadline = time.monotonic() + 5
    while True:
        c = gw.connect()
        if acked_or_closed(c):
            break
        c.close()
        assert time.monotonic() < deadline, "the freed place was never given out"
    assert acked(b, "b2"), "the established connection was disturbed"
    c.close()
    b.close()
    raw = stopped(gw)
    assert re.search(r"connections=\d+", raw)


def acked_or_closed(c):
    try:
        return acked(c, "probe")
    except OSError:
        return False


def test_idle_timeout_closes_quiet_connections(start_gateway, tmp_path):
    gw = start_gateway("--config", config(tmp_path, "[limits]\nidle_timeout_ms = 300\n"))
    quiet = gw.connect()
    busy = gw.connect()
    start = time.monotonic()
    # keep the busy one busy while the quiet one times out
    while time.monotonic() - start < 1.0:
        assert acked(busy, "b%f" % time.monotonic())
        time.sleep(0.1)  # the pace of this client, not a synchronisation
    assert refused(quiet)
    assert acked(busy, "still")
    busy.close()
    quiet.close()


def test_slow_sender_is_cut_off(start_gateway, tmp_path):
    gw = start_gateway("--config", config(tmp_path, "[limits]\nrequest_timeout_ms = 500\n"))
    slow = gw.connect()
    peer = slow.local
    data = message("app", T0, fwd.rec("drip", tenant="tlim"), option(chunk="d"))
    slow.send(data[:5])
    good = gw.connect()
    assert acked(good, "g1")
    assert refused(slow)
    assert gw.wait_log(Gateway.is_warn_about(peer), timeout=5) is not None
    assert acked(good, "g2")
    good.close()
    slow.close()


def test_tenant_rate_limit_drops_and_counts_per_tenant(start_gateway, subscribe, tmp_path):
    """A noisy tenant past its rate loses the excess (counted for it); others pass."""
    import http.client

    cfg = tmp_path / "rate.toml"
    cfg.write_text('[limits]\ntenant_events_per_second = 100\ntenant_burst = 100\n'
                   '[metrics]\nlisten = "127.0.0.1:0"\n')
    gw = start_gateway("--config", str(cfg))
    sub = subscribe(gw, b"tnoisy", b"tquiet")
    noisy = [(T0, fwd.rec("noisy %03d" % i, tenant="tnoisy")) for i in range(500)]
    quiet = [(T0, fwd.rec("quiet %03d" % i, tenant="tquiet")) for i in range(50)]
    with gw.connect() as c:
        c.send(fwd.forward("app", noisy, option(chunk="n")))
        assert c.recv_exact(len(ack("n"))) == ack("n")
        c.send(fwd.forward("app", quiet, option(chunk="q")))
        assert c.recv_exact(len(ack("q"))) == ack("q")
    got = sub.recv_n(150)
    assert sub.sync(gw) == [], "more than the rate got through"
    lines = [m[2].split(b": ", 1)[1].decode() for m in got]
    assert lines == ["noisy %03d" % i for i in range(100)] + ["quiet %03d" % i for i in range(50)]
    host, _, port = gw.ready_fields["metrics"].rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    assert 'fwdgate_tenant_events_rate_limited_total{tenant="tnoisy"} 400\n' in text, text
    assert 'tenant="tquiet"} ' not in text.split("fwdgate_tenant_events_rate_limited_total", 1)[1]
    assert 'fwdgate_events_dropped_total{reason="tenant_rate_limit"} 400\n' in text
