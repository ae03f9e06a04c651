"""The forward protocol handshake (HELO/PING/PONG) with a shared key, user auth and
per-network clients; digests computed here independently with hashlib. And Node's
fluent-logger, a client library that implements the handshake, end to end."""

import hashlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import msgpack

import fwd
from conftest import Gateway
from fwd import ack, message, option

T0 = 1700000000
NODE_DIR = Path(__file__).resolve().parents[1] / "node"


def sha512_hex(*parts):
    h = hashlib.sha512()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode())
    return h.hexdigest()


def config(tmp_path, text):
    p = tmp_path / "sec.toml"
    p.write_text(text)
    return str(p)


class Peer:
    """A raw forward-protocol client that does the handshake by hand."""

    def __init__(self, gw):
        self.c = gw.connect()
        self.unpacker = msgpack.Unpacker(raw=False)

    def read_value(self, timeout=5):
        deadline = time.monotonic() + timeout
        while True:
            for v in self.unpacker:
                return v
            left = deadline - time.monotonic()
            assert left > 0, "no complete msgpack value from the gateway"
            self.c.sock.settimeout(left)
            data = self.c.sock.recv(65536)
            assert data, "gateway closed the connection"
            self.unpacker.feed(data)

    def ping(self, key, hostname="py-client", salt="salt-1234", user="", password=None, nonce=None, auth=None):
        pw = sha512_hex(auth, user, password) if password is not None else ""
        self.c.send(msgpack.packb(["PING", hostname, salt, sha512_hex(salt, hostname, nonce, key), user, pw]))
        return self.read_value()


def test_helo_ping_pong_then_requests(start_gateway, subscribe, tmp_path):
    gw = start_gateway("--config", config(tmp_path, '[security]\nshared_key = "k3y"\nself_hostname = "gw-host"\n'))
    # The subscriber's probes go through the gateway too, so they must pass the handshake:
    # use a subscriber that is synchronised with a handshaking peer below instead.
    import zmq
    s = zmq.Context.instance().socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 0)
    s.subscribe(b"tsec")
    s.connect(gw.zmq_bind[0])
    try:
        p = Peer(gw)
        helo = p.read_value()
        assert helo[0] == "HELO"
        opts = helo[1]
        assert isinstance(opts["nonce"], bytes) and len(opts["nonce"]) == 16
        assert opts["auth"] == b"" and opts["keepalive"] is True
        pong = p.ping("k3y", nonce=opts["nonce"])
        assert pong == ["PONG", True, "", "gw-host", sha512_hex("salt-1234", "gw-host", opts["nonce"], "k3y")]
        for i in range(100):
            p.c.send(message("app", T0, fwd.rec("secure %d" % i, tenant="tsec"), option(chunk="c%d" % i)))
            assert p.c.recv_exact(len(ack("c%d" % i))) == ack("c%d" % i)
            if s.poll(20):
                break
        else:
            raise AssertionError("subscriber never received a line")
        # a second connection gets a different nonce
        p2 = Peer(gw)
        assert p2.read_value()[1]["nonce"] != opts["nonce"]
        p.c.close()
        p2.c.close()
    finally:
        s.close(0)


def test_wrong_key_gets_pong_false_and_close(start_gateway, tmp_path):
    gw = start_gateway("--config", config(tmp_path, '[security]\nshared_key = "right"\n'))
    p = Peer(gw)
    nonce = p.read_value()[1]["nonce"]
    pong = p.ping("wrong", nonce=nonce)
    assert pong[:3] == ["PONG", False, "shared_key mismatch"]
    closed, data = p.c.wait_closed(5)
    assert closed and data == b""
    assert gw.wait_log(Gateway.is_warn_about(p.c.local), timeout=5) is not None


def test_requests_before_the_handshake_are_refused(start_gateway, tmp_path):
    gw = start_gateway("--config", config(tmp_path, '[security]\nshared_key = "k"\n'))
    p = Peer(gw)
    p.read_value()  # HELO
    p.c.send(message("app", T0, fwd.rec("sneaky", tenant="tsec"), option(chunk="x")))
    pong = p.read_value()
    assert pong[0] == "PONG" and pong[1] is False
    closed, _ = p.c.wait_closed(5)
    assert closed


def test_user_auth(start_gateway, tmp_path):
    gw = start_gateway("--config", config(tmp_path, (
        '[security]\nshared_key = "k"\nuser_auth = true\n'
        'users = [{ username = "alice", password = "wonder" }, { username = "bob", password = "builder" }]\n')))
    for user, password, ok in [("bob", "builder", True), ("alice", "nope", False), ("carol", "wonder", False)]:
        p = Peer(gw)
        helo = p.read_value()[1]
        assert isinstance(helo["auth"], bytes) and len(helo["auth"]) == 16
        pong = p.ping("k", nonce=helo["nonce"], user=user, password=password, auth=helo["auth"])
        assert pong[1] is ok, (user, pong)
        if not ok:
            assert pong[2] == "username/password mismatch"
        p.c.close()


def test_per_network_keys_and_anonymous_sources(start_gateway, tmp_path):
    gw = start_gateway("--config", config(tmp_path, (
        '[security]\nshared_key = "global"\n'
        'clients = [{ network = "127.0.0.0/8", shared_key = "loopback-key" }]\n')))
    p = Peer(gw)
    nonce = p.read_value()[1]["nonce"]
    assert p.ping("loopback-key", nonce=nonce)[1] is True
    p = Peer(gw)
    nonce = p.read_value()[1]["nonce"]
    assert p.ping("global", nonce=nonce)[1] is False, "the network's own key replaces the global one"
    gw2 = start_gateway("--config", config(tmp_path, (
        '[security]\nshared_key = "global"\nallow_anonymous_source = false\n'
        'clients = [{ network = "10.0.0.0/8" }]\n')))
    p = Peer(gw2)
    nonce = p.read_value()[1]["nonce"]
    pong = p.ping("global", nonce=nonce)
    assert pong[:3] == ["PONG", False, "source 127.0.0.1 is not allowed"]


def test_handshake_timeout_closes(start_gateway, tmp_path):
    gw = start_gateway("--config", config(tmp_path, '[security]\nshared_key = "k"\nhandshake_timeout_ms = 300\n'))
    p = Peer(gw)
    p.read_value()
    start = time.monotonic()
    closed, _ = p.c.wait_closed(5)
    assert closed and time.monotonic() - start < 3


def test_node_fluent_logger_with_shared_key_and_user(start_gateway, subscribe, tmp_path):
    node = shutil.which("node")
    assert node, "peer node: not on PATH"
    assert (NODE_DIR / "node_modules" / "fluent-logger").is_dir(), \
        "peer fluent-logger (node): not installed (scripts/install-test-deps.sh runs npm ci in tests/node)"
    gw = start_gateway("--config", config(tmp_path, (
        '[security]\nshared_key = "node-secret"\nuser_auth = true\n'
        'users = [{ username = "nodeuser", password = "nodepass" }]\n')))
    import zmq
    s = zmq.Context.instance().socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 0)
    s.subscribe(b"tnode")
    s.connect(gw.zmq_bind[0])
    host, port = gw.addr
    try:
        # Wait for the subscription by a first run whose lines may or may not arrive.
        n = 200
        deadline = time.monotonic() + 30
        while True:
            r = subprocess.run([node, str(NODE_DIR / "send.js"), host, str(port), "node.app", "1",
                                "node-secret", "nodeuser", "nodepass"],
                               capture_output=True, timeout=60, cwd=str(NODE_DIR))
            assert r.returncode == 0, "peer node fluent-logger failed: %s" % r.stderr.decode()
            if s.poll(200):
                while s.poll(100):
                    s.recv_multipart()
                break
            assert time.monotonic() < deadline, "no line from the node client reached the subscriber"
        r = subprocess.run([node, str(NODE_DIR / "send.js"), host, str(port), "node.app", str(n),
                            "node-secret", "nodeuser", "nodepass"],
                           capture_output=True, timeout=60, cwd=str(NODE_DIR))
        assert r.returncode == 0, "peer node fluent-logger failed: %s" % r.stderr.decode()
        got = []
        while len(got) < n and s.poll(5000):
            got.append(s.recv_multipart())
        assert got == [[b"tnode", b"default", b"node.app: node line %d" % i] for i in range(n)]
        # the wrong key is refused
        r = subprocess.run([node, str(NODE_DIR / "send.js"), host, str(port), "node.app", "1",
                            "wrong-secret", "nodeuser", "nodepass"],
                           capture_output=True, timeout=60, cwd=str(NODE_DIR))
        assert r.returncode != 0
    finally:
        s.close(0)


def test_client_matched_by_host_name(start_gateway, tmp_path):
    """A security.clients entry may name the client's host (its reverse DNS name) instead
    of a network, as Fluentd's <client> host does."""
    try:
        name = socket.gethostbyaddr("127.0.0.1")[0]
    except OSError:
        name = None
    gw = start_gateway("--config", config(tmp_path, (
        '[security]\nshared_key = "global"\nallow_anonymous_source = false\n'
        'clients = [{ host = "%s", shared_key = "host-key" }]\n' % (name or "no-such-host.invalid").upper())))
    p = Peer(gw)
    nonce = p.read_value()[1]["nonce"]
    pong = p.ping("host-key", nonce=nonce)
    if name is None:
        # 127.0.0.1 has no name here, so no entry matches and the source is refused.
        assert pong[:3] == ["PONG", False, "source 127.0.0.1 is not allowed"]
    else:
        assert pong[1] is True, pong
        p2 = Peer(gw)
        nonce = p2.read_value()[1]["nonce"]
        assert p2.ping("global", nonce=nonce)[1] is False, "the host's own key replaces the global one"


def test_deny_keepalive(start_gateway, tmp_path):
    """deny_keepalive: HELO says keepalive false; the connection closes after one request,
    which is still published and acked."""
    gw = start_gateway("--config", config(tmp_path, '[security]\nshared_key = "k"\ndeny_keepalive = true\n[shutdown]\ntimeout_ms = 300\n'))
    p = Peer(gw)
    helo = p.read_value()[1]
    assert helo["keepalive"] is False
    assert p.ping("k", nonce=helo["nonce"])[1] is True
    p.c.send(message("app", T0, fwd.rec("only one", tenant="tka"), option(chunk="one")))
    assert p.c.recv_exact(len(ack("one"))) == ack("one")
    closed, data = p.c.wait_closed(5)
    assert closed and data == b""
