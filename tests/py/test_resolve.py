"""Collectors by name: a ``zmq_connect`` endpoint whose host name resolves to several
addresses is connected at every one of them, and the name is resolved again every
``output.resolve_interval_ms``: an address added under the name is connected within
two intervals, one removed is let go, without a restart.

The name lives in /etc/hosts (as root; the file is restored afterwards), where each
collector, a libzmq SUB socket, binds its own address 127.0.0.x on one port."""

import os
import time
import uuid

import pytest

import fwd
from conftest import PROBE_TENANT, Subscriber
from fwd import ack, message, option
from peers import free_port
from test_metrics import get, metric, wait_for

T0 = 1700000000
NAME = "fwdgate-collectors-%s.test" % uuid.uuid4().hex[:8]
INTERVAL_MS = 500

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="edits /etc/hosts (root)")


class Hosts:
    """Lines for NAME added to /etc/hosts; the file is written in place (it may be a
    bind mount) and restored as it was."""

    def __init__(self):
        with open("/etc/hosts") as f:
            self.original = f.read()
        self.addresses = []

    def set(self, *addresses):
        self.addresses = list(addresses)
        lines = "".join("%s %s\n" % (a, NAME) for a in addresses)
        base = self.original if self.original.endswith("\n") else self.original + "\n"
        with open("/etc/hosts", "w") as f:
            f.write(base + lines)

    def restore(self):
        with open("/etc/hosts", "w") as f:
            f.write(self.original)


@pytest.fixture
def hosts():
    h = Hosts()
    try:
        yield h
    finally:
        h.restore()


@pytest.fixture
def collectors():
    made = []

    def make(address, port):
        s = Subscriber("tcp://%s:%d" % (address, port), (b"fleet",), PROBE_TENANT.encode(), bind=True)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def config(tmp_path, port):
    p = tmp_path / "resolve.toml"
    p.write_text(
        '[output]\nzmq_connect = ["tcp://%s:%d"]\nresolve_interval_ms = %d\n'
        '[metrics]\nlisten = "127.0.0.1:0"\n[shutdown]\ntimeout_ms = 500\n' % (NAME, port, INTERVAL_MS))
    return str(p)


def addresses(gw):
    return metric(get(gw.ready_fields["metrics"], "/metrics")[1], "fwdgate_zmq_connect_addresses")


def send_lines(gw, n, prefix):
    with gw.connect() as c:
        for i in range(n):
            chunk = "%s-%d" % (prefix, i)
            c.send(message("app", T0, fwd.rec("%s %d" % (prefix, i), tenant="fleet"), option(chunk=chunk)))
            assert c.recv_exact(len(ack(chunk)), timeout=10) == ack(chunk)


def lines_of(msgs):
    return sorted(m[2] for m in msgs)


def test_every_address_of_a_name_is_connected_and_followed(start_gateway, hosts, collectors, tmp_path):
    port = free_port()
    hosts.set("127.0.0.2", "127.0.0.3")
    a = collectors("127.0.0.2", port)
    b = collectors("127.0.0.3", port)
    gw = start_gateway("--config", config(tmp_path, port), zmq_bind=False)
    wait_for(lambda: addresses(gw) == 2, "both addresses of the name to be connected")
    a.wait_ready(gw)
    b.wait_ready(gw)
    send_lines(gw, 20, "both")
    got_a, got_b = a.recv_n(20), b.recv_n(20)
    assert lines_of(got_a) == lines_of(got_b)
    assert len(set(lines_of(got_a))) == 20

    # A third collector joins under the name: connected within two intervals.
    c = collectors("127.0.0.4", port)
    hosts.set("127.0.0.2", "127.0.0.3", "127.0.0.4")
    added = time.monotonic()
    c.wait_ready(gw, timeout=10)
    took = time.monotonic() - added
    assert took < 2 * INTERVAL_MS / 1000 + 0.5, "the new collector received after %.2fs" % took
    assert addresses(gw) == 3

    # One leaves the name: let go, the others keep everything.
    hosts.set("127.0.0.2", "127.0.0.4")
    wait_for(lambda: addresses(gw) == 2, "the removed address to be let go", timeout=5)
    assert gw.wait_log(lambda raw, obj: "no longer configured or resolved" in raw and "127.0.0.3" in raw, timeout=5)
    while b.recv(0.2) is not None:  # probes already on their way
        pass
    send_lines(gw, 10, "after")
    assert len(a.recv_n(10)) == 10
    assert len(c.recv_n(10)) == 10
    assert b.recv(0.5) is None, "a collector no longer under the name still receives"


def test_a_name_that_does_not_resolve_yet_is_connected_once_it_does(start_gateway, hosts, collectors, tmp_path):
    port = free_port()
    hosts.set()
    gw = start_gateway("--config", config(tmp_path, port), zmq_bind=False)
    assert gw.wait_log(lambda raw, obj: "does not resolve" in raw and NAME in raw, timeout=5)
    assert addresses(gw) == 0
    a = collectors("127.0.0.2", port)
    hosts.set("127.0.0.2")
    wait_for(lambda: addresses(gw) == 1, "the address to be connected once the name resolves", timeout=5)
    assert gw.wait_log(lambda raw, obj: "resolves again" in raw, timeout=5)
    a.wait_ready(gw)
    send_lines(gw, 5, "late")
    assert len(a.recv_n(5)) == 5


def test_zero_interval_leaves_the_name_to_libzmq(start_gateway, hosts, collectors, tmp_path):
    port = free_port()
    hosts.set("127.0.0.2")
    a = collectors("127.0.0.2", port)
    p = tmp_path / "once.toml"
    p.write_text('[output]\nzmq_connect = ["tcp://%s:%d"]\nresolve_interval_ms = 0\n'
                 '[metrics]\nlisten = "127.0.0.1:0"\n[shutdown]\ntimeout_ms = 500\n' % (NAME, port))
    gw = start_gateway("--config", str(p), zmq_bind=False)
    a.wait_ready(gw)
    assert addresses(gw) == 0, "the gateway resolved a name it should have left to libzmq"
    send_lines(gw, 5, "once")
    assert len(a.recv_n(5)) == 5
