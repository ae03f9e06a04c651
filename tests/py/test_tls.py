"""TLS listeners (rustls), driven by Python's ssl module (OpenSSL) as the independent
client: server certificates, mutual TLS, and bad clients beside a good one."""

import socket
import ssl
import subprocess

import pytest

import fwd
from conftest import Gateway, run_fwdgate
from fwd import ack, message, option

T0 = 1700000000


def openssl(*args, cwd):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, timeout=60)
    assert r.returncode == 0, "openssl %s: %s" % (args[0], r.stderr.decode())


def issue(d, name, ca, ext):
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "%s.key" % name, "-out", "%s.csr" % name, "-subj", "/CN=%s" % name, cwd=d)
    (d / ("%s.ext" % name)).write_text(ext)
    openssl("x509", "-req", "-in", "%s.csr" % name, "-CA", "%s.crt" % ca, "-CAkey", "%s.key" % ca,
            "-CAcreateserial", "-out", "%s.crt" % name, "-days", "2", "-extfile", "%s.ext" % name, cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    for ca in ["ca", "other-ca"]:
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", "%s.key" % ca, "-out", "%s.crt" % ca, "-days", "2", "-subj", "/CN=%s" % ca,
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    issue(d, "server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    issue(d, "client", "ca", "extendedKeyUsage=clientAuth\n")
    issue(d, "stranger", "other-ca", "extendedKeyUsage=clientAuth\n")
    return d


def tls_config(tmp_path, pki, mutual=False):
    text = ('[input.tls]\nlisten = ["127.0.0.1:0"]\ncert_file = "%s"\nkey_file = "%s"\n'
            % (pki / "server.crt", pki / "server.key"))
    if mutual:
        text += 'client_ca_file = "%s"\n' % (pki / "ca.crt")
    p = tmp_path / "tls.toml"
    p.write_text(text)
    return str(p)


def tls_addr(gw):
    host, _, port = gw.ready_fields["tls"].rpartition(":")
    return host, int(port)


def tls_client(gw, pki, cert=None):
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if cert:
        ctx.load_cert_chain(str(pki / ("%s.crt" % cert)), str(pki / ("%s.key" % cert)))
    raw = socket.create_connection(tls_addr(gw), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def roundtrip(s, sub, line, chunk):
    s.sendall(message("tls", T0, fwd.rec(line, tenant="ttls"), option(chunk=chunk)))
    want = ack(chunk)
    got = b""
    while len(got) < len(want):
        data = s.recv(len(want) - len(got))
        assert data, "TLS connection closed before the ack"
        got += data
    assert got == want
    assert sub.recv_n(1) == [[b"ttls", b"default", ("tls: " + line).encode()]]


def test_forward_over_tls(start_gateway, subscribe, tmp_path, pki):
    gw = start_gateway("--config", tls_config(tmp_path, pki))
    sub = subscribe(gw, b"ttls")
    with tls_client(gw, pki) as s:
        assert s.version() in ("TLSv1.2", "TLSv1.3")
        for i in range(20):
            roundtrip(s, sub, "over tls %d" % i, "t%d" % i)


def test_plaintext_on_the_tls_port_is_refused_others_unaffected(start_gateway, subscribe, tmp_path, pki):
    gw = start_gateway("--config", tls_config(tmp_path, pki))
    sub = subscribe(gw, b"ttls")
    with tls_client(gw, pki) as good:
        roundtrip(good, sub, "before", "b")
        plain = fwd.Client(tls_addr(gw))
        peer = plain.local
        plain.send_tolerant(message("tls", T0, fwd.rec("plaintext", tenant="ttls"), option(chunk="p")))
        closed, _ = plain.wait_closed(15)
        plain.close()
        assert closed
        assert gw.wait_log(Gateway.is_warn_about(peer), timeout=5) is not None
        roundtrip(good, sub, "after", "a")


def test_mutual_tls(start_gateway, subscribe, tmp_path, pki):
    gw = start_gateway("--config", tls_config(tmp_path, pki, mutual=True))
    sub = subscribe(gw, b"ttls")
    with tls_client(gw, pki, cert="client") as s:
        roundtrip(s, sub, "with a client certificate", "m1")
    for cert in [None, "stranger"]:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            with tls_client(gw, pki, cert=cert) as s:
                # TLS 1.3 reports a refused client certificate on the first read.
                s.sendall(message("tls", T0, fwd.rec("refused", tenant="ttls"), option(chunk="r")))
                assert s.recv(100) == b""
                raise ConnectionError("closed without an ack")
    assert sub.sync(gw) == []


def test_bad_certificate_file_is_a_clear_error(tmp_path, pki):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[input.tls]\nlisten = ["127.0.0.1:0"]\ncert_file = "%s"\nkey_file = "%s"\n'
                   % (tmp_path / "missing.crt", pki / "server.key"))
    r = run_fwdgate(["--config", str(cfg), "--listen", "127.0.0.1:0", "--zmq-bind", "tcp://127.0.0.1:*"])
    assert r.returncode != 0
    assert b"missing.crt" in r.stderr, r.stderr
