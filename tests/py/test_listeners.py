"""Listeners: the ready line, TCP, UDP heartbeat, unix sockets and their file mode."""

import json
import os
import re
import signal
import socket
import stat

import fwd
from fwd import ack, message, option

T0 = 1700000000


def test_ready_line_fields(start_gateway):
    gw = start_gateway()
    f = gw.ready_fields
    for key in ("tcp", "unix", "udp", "zmq_bind", "zmq_connect"):
        assert isinstance(f.get(key), str), (key, f)
    assert len(gw.tcp) == 1
    host, port = gw.tcp[0]
    assert host == "127.0.0.1" and port > 0
    assert gw.unix == []
    assert gw.zmq_connect == []
    assert len(gw.zmq_bind) == 1
    assert re.fullmatch(r"tcp://127\.0\.0\.1:[1-9][0-9]*", gw.zmq_bind[0]), gw.zmq_bind
    ready = [raw for raw, obj in gw.logs if isinstance(obj, dict) and fwd_fields(obj).get("message") == "fwdgate ready"]
    assert len(ready) == 1, ready


def fwd_fields(obj):
    return obj.get("fields", obj)


def test_udp_heartbeat(start_gateway):
    gw = start_gateway()
    assert len(gw.udp) == 1
    uhost, uport = gw.udp[0]
    assert (uhost, uport) == gw.tcp[0], "udp heartbeat is on the port number of the TCP listener"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5.0)
    try:
        for _ in range(3):
            s.sendto(b"\x00", (uhost, uport))
            data, src = s.recvfrom(65536)
            assert data == b"\x00"
            assert src == (uhost, uport)
    finally:
        s.close()


def test_two_tcp_listeners(start_gateway, subscribe):
    gw = start_gateway("--listen", "127.0.0.1:0")
    assert len(gw.tcp) == 2, gw.tcp
    assert gw.tcp[0] != gw.tcp[1]
    assert len(gw.udp) == 2
    assert sorted(gw.udp) == sorted(gw.tcp)
    sub = subscribe(gw)
    for i, addr in enumerate(gw.tcp):
        with gw.connect(addr) as c:
            c.send(message("l%d" % i, T0, fwd.rec("via %d" % i), option(chunk="l%d" % i)))
            assert c.recv_exact(len(ack("l%d" % i))) == ack("l%d" % i)
    assert sub.recv_n(2) == [[b"default", b"default", b"l0: via 0"], [b"default", b"default", b"l1: via 1"]]


def test_unix_socket(start_gateway, subscribe, tmp_path):
    path = str(tmp_path / "fwd.sock")
    gw = start_gateway("--unix", path)
    assert gw.unix == [path]
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    sub = subscribe(gw)
    with gw.connect(path) as c:
        c.send(message("unix.tag", T0, fwd.rec("over unix", tenant="tu", service="su"), option(chunk="ux")))
        assert c.recv_exact(len(ack("ux"))) == ack("ux")
        assert sub.recv_n(1) == [[b"tu", b"su", b"unix.tag: over unix"]]


def test_unix_socket_json_peer_is_string(start_gateway, subscribe, tmp_path):
    path = str(tmp_path / "fwdj.sock")
    gw = start_gateway("--unix", path, "--format", "json")
    sub = subscribe(gw)
    r = fwd.rec("unix json")
    with gw.connect(path) as c:
        c.send(message("u", fwd.t_event(T0, 7), r))
        [m] = sub.recv_n(1)
    obj = json.loads(m[2])
    assert isinstance(obj["peer"], str)
    assert obj["record"] == r
    assert obj["time_ns"] == T0 * 10**9 + 7
    assert obj["tag"] == "u"


def test_unix_socket_default_mode_0660(start_gateway, tmp_path):
    path = str(tmp_path / "mode.sock")
    start_gateway("--unix", path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660


def test_unix_socket_mode_flag(start_gateway, tmp_path):
    path = str(tmp_path / "mode600.sock")
    start_gateway("--unix", path, "--unix-mode", "0600")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_unix_and_tcp_together(start_gateway, subscribe, tmp_path):
    path = str(tmp_path / "both.sock")
    gw = start_gateway("--unix", path)
    sub = subscribe(gw)
    with gw.connect(path) as u, gw.connect() as t:
        u.send(message("u", T0, fwd.rec("unix line")))
        assert sub.recv_n(1) == [[b"default", b"default", b"u: unix line"]]
        t.send(message("t", T0, fwd.rec("tcp line")))
        assert sub.recv_n(1) == [[b"default", b"default", b"t: tcp line"]]


def test_sigterm_exits_promptly(start_gateway):
    gw = start_gateway()
    gw.proc.send_signal(signal.SIGTERM)
    gw.proc.wait(10)  # TimeoutExpired fails the test


def test_unix_socket_mode_env(start_gateway, tmp_path):
    path = str(tmp_path / "modeenv.sock")
    start_gateway("--unix", path, env={"FWDGATE_UNIX_MODE": "0600"})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_zmq_connect(start_gateway, subscribe):
    sub = subscribe.bound()
    gw = start_gateway("--zmq-connect", sub.endpoint, zmq_bind=False)
    assert gw.zmq_connect == [sub.endpoint]
    assert gw.zmq_bind == []
    sub.wait_ready(gw)
    with gw.connect() as c:
        c.send(message("zc", T0, fwd.rec("connected pub", tenant="tz", service="sz")))
    assert sub.recv_n(1) == [[b"tz", b"sz", b"zc: connected pub"]]


def test_two_zmq_binds(start_gateway, subscribe):
    gw = start_gateway("--zmq-bind", "tcp://127.0.0.1:*")
    assert len(gw.zmq_bind) == 2 and gw.zmq_bind[0] != gw.zmq_bind[1], gw.zmq_bind
    s1 = subscribe(gw, endpoint=gw.zmq_bind[0])
    s2 = subscribe(gw, endpoint=gw.zmq_bind[1])
    with gw.connect() as c:
        c.send(message("zb", T0, fwd.rec("to both", tenant="tb")))
    assert s1.recv_n(1) == [[b"tb", b"default", b"zb: to both"]]
    assert s2.recv_n(1) == [[b"tb", b"default", b"zb: to both"]]


def test_explicit_run_subcommand(start_gateway, subscribe):
    gw = start_gateway(command=("run",))
    sub = subscribe(gw)
    with gw.connect() as c:
        c.send(message("run", T0, fwd.rec("via run")))
    assert sub.recv_n(1) == [[b"default", b"default", b"run: via run"]]


def test_log_file_reopened_on_sighup(tmp_path):
    """--log-file writes the log to a file; SIGHUP reopens it (logrotate renames it)."""
    import signal as sig
    import subprocess
    import time

    from conftest import FWDGATE_BIN, clean_env

    log = tmp_path / "gw.log"
    proc = subprocess.Popen(
        [FWDGATE_BIN, "--listen", "127.0.0.1:0", "--zmq-bind", "tcp://127.0.0.1:*",
         "--log-format", "json", "--log-file", str(log)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=clean_env())

    def wait_text(path, text, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and text in path.read_text():
                return True
            time.sleep(0.05)
        return False

    try:
        assert wait_text(log, "fwdgate ready"), "no ready line in the log file"
        log.rename(tmp_path / "gw.log.1")
        proc.send_signal(sig.SIGHUP)
        assert wait_text(log, "log file reopened"), "SIGHUP did not reopen the log file"
        assert proc.poll() is None, "SIGHUP ended the process"
        proc.send_signal(sig.SIGTERM)
        assert proc.wait(10) == 0
        assert "fwdgate stopped" in log.read_text()
        assert "fwdgate stopped" not in (tmp_path / "gw.log.1").read_text()
        assert proc.stderr.read() == b"", "the log went to stderr too"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
