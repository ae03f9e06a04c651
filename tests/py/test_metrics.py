"""The operations endpoint: /metrics, /healthz, /readyz."""

import http.client
import re
import time

import fwd
from conftest import _hostport
from fwd import ack, message, option

T0 = 1700000000


def get(addr, path):
    host, port = _hostport(addr)
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def metric(text, name):
    m = re.search(r"^%s (\d+)$" % re.escape(name), text, re.M)
    assert m, "no %s in:\n%s" % (name, text)
    return int(m.group(1))


def wait_for(pred, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0fs waiting for %s" % (timeout, what))
        time.sleep(0.05)


def test_metrics_health_and_ready(start_gateway, subscribe):
    gw = start_gateway("--metrics-listen", "127.0.0.1:0")
    addr = gw.ready_fields["metrics"]
    assert get(addr, "/healthz") == (200, "ok\n")
    assert get(addr, "/readyz") == (200, "ready\n")
    assert get(addr, "/nope")[0] == 404
    sub = subscribe(gw, b"tm")
    with gw.connect() as c:
        for i in range(10):
            c.send(message("app", T0, fwd.rec("m%d" % i, tenant="tm1"), option(chunk="a%d" % i)))
            assert c.recv_exact(len(ack("a%d" % i))) == ack("a%d" % i)
        c.send(message("app", T0, fwd.rec("x", tenant="tm2")))
        c.send(fwd.forward("app", [(T0, {"log": "ok", "TENANT_ID": "tm2"}), (T0, "not a map")],
                           option(chunk="f")))
        assert c.recv_exact(len(ack("f"))) == ack("f")
        assert len(sub.recv_n(12)) == 12
        status, text = get(addr, "/metrics")
        assert status == 200
        assert 'fwdgate_tenant_events_total{tenant="tm1"} 10\n' in text, text
        assert 'fwdgate_tenant_events_total{tenant="tm2"} 2\n' in text, text
        assert 'fwdgate_events_dropped_total{reason="invalid"} 1\n' in text, text
        assert metric(text, "fwdgate_acks_sent_total") == 11
        # the probes of the subscriber's synchronisation count as requests too
        assert metric(text, "fwdgate_requests_total") >= 12
        assert metric(text, "fwdgate_connections_active") >= 1
        assert metric(text, "fwdgate_zmq_peers") >= 1
        assert metric(text, "fwdgate_queue_requests") == 0
    wait_for(lambda: metric(get(addr, "/metrics")[1], "fwdgate_connections_active") <= 1,
             "the client connection to be counted as closed")


def test_tenant_series_are_capped(start_gateway, subscribe, tmp_path):
    cfg = tmp_path / "cap.toml"
    cfg.write_text('[metrics]\nlisten = "127.0.0.1:0"\nmax_tenants = 2\n')
    gw = start_gateway("--config", str(cfg))
    addr = gw.ready_fields["metrics"]
    sub = subscribe(gw, b"cap")
    # the subscriber's probe tenant already holds one of the two series
    with gw.connect() as c:
        for t in ["cap1", "cap2", "cap3"]:
            c.send(message("app", T0, fwd.rec("x", tenant=t), option(chunk=t)))
            assert c.recv_exact(len(ack(t))) == ack(t)
    assert len(sub.recv_n(3)) == 3
    text = get(addr, "/metrics")[1]
    series = re.findall(r'^fwdgate_tenant_events_total\{tenant="([^"]*)"\} (\d+)$', text, re.M)
    assert len(series) == 3, series
    assert series[-1][0] == "_other"
    assert sum(int(n) for t, n in series if t.startswith("cap") or t == "_other") >= 3


def test_readyz_waits_for_a_connected_peer(start_gateway, subscribe):
    bound = subscribe.bound(b"")
    gw = start_gateway("--zmq-connect", "tcp://127.0.0.1:1", "--metrics-listen", "127.0.0.1:0",
                       zmq_bind=False)
    addr = gw.ready_fields["metrics"]
    status, body = get(addr, "/readyz")
    assert (status, body) == (503, "not ready: no ZeroMQ peer connected\n")
    gw.stop()
    gw2 = start_gateway("--zmq-connect", bound.endpoint, "--metrics-listen", "127.0.0.1:0",
                        zmq_bind=False)
    addr2 = gw2.ready_fields["metrics"]
    wait_for(lambda: get(addr2, "/readyz") == (200, "ready\n"), "readyz to turn ready")
