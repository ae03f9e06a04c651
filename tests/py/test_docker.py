"""The real Docker daemon's fluentd log driver (Docker 20.10 here) into the gateway, checked
at a pyzmq subscriber in the seed and in the json format.

Containers run with ``--network none``: the fluentd driver dials from the daemon itself
(on 127.0.0.1), so the logging containers need no network at all. Every container is
removed by id at teardown. The gateway runs with ``--log-level debug`` so that the tests
can await "the driver closed its connection" before proving, with a probe, that nothing
more arrived (see peers.settle).
"""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest

import peers
from peers import cid12, fail, recv_n, settle

FORMATS = ["seed", "json"]
DOCKER = "Docker fluentd driver"

pytestmark = pytest.mark.usefixtures("busybox_image")


def report(name, value):
    """Measured numbers, printed as `MEASURE name = value` (shown by pytest -rP)."""
    print("MEASURE %s = %s" % (name, value))


def gateway(start_gateway, fmt, *args, **kw):
    return start_gateway("--format", fmt, "--log-level", "debug", *args, **kw)


def fluentd(address, *opts):
    """docker run arguments for the fluentd driver at ``address`` with extra --log-opt."""
    out = ["--network", "none", "--log-driver=fluentd", "--log-opt", "fluentd-address=%s" % address]
    for o in opts:
        out += ["--log-opt", o]
    return out


def tcp_address(gw):
    return "%s:%d" % gw.addr


def loop(n, body, start=1):
    """A busybox shell loop running ``body`` with $i from ``start`` to ``start + n - 1``."""
    return ["sh", "-c", "i=%d; while [ $i -lt %d ]; do %s; i=$((i+1)); done" % (start, start + n, body)]


def js(m):
    assert len(m) == 3, "expected 3 frames, got %r" % (m,)
    return json.loads(m[2])


def check_time(obj, lo_ns, hi_ns, integer):
    """json ``time`` and ``time_ns`` agree exactly; integer times have no fraction."""
    t = obj["time_ns"]
    assert peers.parse_rfc3339_ns(obj["time"]) == t, obj
    if integer:
        assert t % 10**9 == 0, obj
        assert obj["time"].endswith(".000000000Z"), obj
        assert lo_ns // 10**9 * 10**9 <= t <= hi_ns, (lo_ns, obj, hi_ns)
    else:
        assert lo_ns <= t <= hi_ns, (lo_ns, obj, hi_ns)


def split_streams(lines):
    return ([x for x in lines if x.startswith(b"out-")], [x for x in lines if x.startswith(b"err-")])


# ---------------------------------------------------------------------------- defaults


@pytest.mark.parametrize("fmt", FORMATS)
def test_defaults_env_routing(fmt, start_gateway, subscribe, containers):
    """Sync mode, integer time, ``env=TENANT_ID,SERVICE_ID``: three containers (t1/s1,
    t2/s2, and one without the variables), stdout and stderr interleaved."""
    gw = gateway(start_gateway, fmt)
    sub = subscribe(gw)
    sub_t2 = subscribe(gw, b"t2")
    n = 40
    cmd = loop(n, "echo out-$i; echo err-$i >&2")
    specs = [(b"t1", b"s1"), (b"t2", b"s2"), (None, None)]
    lo = time.time_ns()
    cids = []
    for tenant, service in specs:
        env = ["-e", "TENANT_ID=%s" % tenant.decode(), "-e", "SERVICE_ID=%s" % service.decode()] if tenant else []
        cids.append(containers.run(*fluentd(tcp_address(gw), "env=TENANT_ID,SERVICE_ID"), *env, cmd=cmd))
    msgs = recv_n(sub, 3 * 2 * n, 60, DOCKER + " (3 containers)", "lines")
    for cid in cids:
        assert containers.wait(cid) == 0
    assert settle(gw, sub, DOCKER, min_accepted=3) == []
    hi = time.time_ns()

    expected_out = [b"out-%d" % i for i in range(1, n + 1)]
    expected_err = [b"err-%d" % i for i in range(1, n + 1)]
    for cid, (tenant, service) in zip(cids, specs):
        frames = (tenant or b"default", service or b"default")
        name = containers.inspect(cid, "{{.Name}}")
        if fmt == "seed":
            mine = [m for m in msgs if m[2].startswith(cid12(cid) + b": ")]
            assert len(mine) == 2 * n, (cid, len(mine))
            assert {tuple(m[:2]) for m in mine} == {frames}
            out, err = split_streams(peers.seed_lines(mine, cid))
        else:
            mine = [js(m) for m in msgs if js(m)["record"]["container_id"] == cid]
            assert len(mine) == 2 * n, (cid, len(mine))
            assert {tuple(m[:2]) for m in msgs if js(m)["record"]["container_id"] == cid} == {frames}
            extra = {"TENANT_ID": tenant.decode(), "SERVICE_ID": service.decode()} if tenant else {}
            for o in mine:
                src = "stdout" if o["record"]["log"].startswith("out-") else "stderr"
                assert o["record"] == {"container_id": cid, "container_name": name, "source": src,
                                       "log": o["record"]["log"], **extra}
                assert o["tag"] == cid[:12]
                assert o["peer"].startswith("127.0.0.1:")
                assert set(o) == {"tag", "time", "time_ns", "peer", "record"}
                check_time(o, lo, hi, integer=True)
            out = [o["record"]["log"].encode() for o in mine if o["record"]["source"] == "stdout"]
            err = [o["record"]["log"].encode() for o in mine if o["record"]["source"] == "stderr"]
        assert out == expected_out, "stdout of %s out of order or incomplete" % cid[:12]
        assert err == expected_err, "stderr of %s out of order or incomplete" % cid[:12]

    # a subscriber of t2 only got t2's lines (and exactly all of them)
    t2 = recv_n(sub_t2, 2 * n, 10, DOCKER + " (t2 subscriber)", "lines")
    assert {tuple(m[:2]) for m in t2} == {(b"t2", b"s2")}
    if fmt == "seed":
        assert sorted(m[2] for m in t2) == sorted(cid12(cids[1]) + b": " + x for x in expected_out + expected_err)
    assert sub_t2.sync(gw) == []


# ---------------------------------------------------------------------------- sub-second


@pytest.mark.parametrize("fmt", FORMATS)
def test_sub_second_precision(fmt, start_gateway, subscribe, containers):
    gw = gateway(start_gateway, fmt)
    sub = subscribe(gw)
    n = 100
    lo = time.time_ns()
    cid = containers.run(*fluentd(tcp_address(gw), "fluentd-sub-second-precision=true",
                                  "env=TENANT_ID,SERVICE_ID"),
                         "-e", "TENANT_ID=ts", "-e", "SERVICE_ID=ss", cmd=loop(n, "echo out-$i; echo err-$i >&2"))
    msgs = recv_n(sub, 2 * n, 60, DOCKER, "lines")
    assert containers.wait(cid) == 0
    assert settle(gw, sub, DOCKER) == []
    hi = time.time_ns()
    assert {tuple(m[:2]) for m in msgs} == {(b"ts", b"ss")}
    want_out = [b"out-%d" % i for i in range(1, n + 1)]
    want_err = [b"err-%d" % i for i in range(1, n + 1)]
    if fmt == "seed":
        assert split_streams(peers.seed_lines(msgs, cid)) == (want_out, want_err)
        assert len(msgs) == 2 * n
        return
    objs = [js(m) for m in msgs]
    for o in objs:
        check_time(o, lo, hi, integer=False)
        assert o["record"]["source"] == ("stdout" if o["record"]["log"].startswith("out-") else "stderr")
    fractions = [o["time_ns"] % 10**9 for o in objs]
    assert sum(1 for f in fractions if f) >= len(objs) // 2, "EventTime expected, got %r" % fractions[:20]
    # microsecond-or-finer digits really come through (not only milliseconds)
    assert any(f % 10**6 for f in fractions), fractions[:20]
    for src, want in (("stdout", want_out), ("stderr", want_err)):
        stream = [o for o in objs if o["record"]["source"] == src]
        assert [o["record"]["log"].encode() for o in stream] == want
        times = [o["time_ns"] for o in stream]
        assert times == sorted(times), "%s times go backwards" % src


# ---------------------------------------------------------------------------- request-ack


@pytest.mark.parametrize("fmt", FORMATS)
def test_request_ack_10000_lines(fmt, start_gateway, subscribe, containers):
    """Lock-step acks: 10,000 lines, every one exactly once, in order, in seconds."""
    gw = gateway(start_gateway, fmt)
    sub = subscribe(gw)
    n = 10000
    t0 = time.monotonic()
    cid = containers.run(*fluentd(tcp_address(gw), "fluentd-request-ack=true", "env=TENANT_ID"),
                         "-e", "TENANT_ID=tack", cmd=["seq", "1", str(n)])
    msgs = recv_n(sub, n, 90, DOCKER + " with fluentd-request-ack", "lines")
    assert containers.wait(cid, timeout=90) == 0
    took = time.monotonic() - t0
    report("request_ack_10000_%s_seconds" % fmt, "%.2f" % took)
    assert settle(gw, sub, DOCKER) == []
    assert took < 60, "10,000 acked lines took %.1fs" % took
    want = [str(i) for i in range(1, n + 1)]
    if fmt == "seed":
        assert msgs == [[b"tack", b"default", cid12(cid) + b": " + w.encode()] for w in want]
    else:
        assert [js(m)["record"]["log"] for m in msgs] == want
        assert {js(m)["record"]["container_id"] for m in msgs} == {cid}
    # one request per line, each acked once (the harness's probes ask for no ack)
    gw.stop()
    stopped = gw.log_lines(lambda raw, obj: "fwdgate stopped" in raw)
    assert stopped, "no 'fwdgate stopped' line"
    assert re.search(r"\backs=(\d+)", stopped[-1]).group(1) == str(n), stopped[-1]


# ---------------------------------------------------------------------------- async


@pytest.mark.parametrize("fmt", FORMATS)
def test_async_gateway_started_after_container(fmt, start_gateway, subscribe, containers):
    """``fluentd-async=true``: the container starts while nothing listens, writes a
    numbered line every ~100 ms; the gateway comes up afterwards on the address the
    container was given. Every line written after the subscriber is synced arrives, and
    what arrives is a contiguous, ordered run up to the last line."""
    port = peers.free_port()
    total = 150
    cid = containers.run(*fluentd("127.0.0.1:%d" % port, "fluentd-async=true", "env=TENANT_ID"),
                         "-e", "TENANT_ID=tasync",
                         cmd=loop(total, "echo line-$i; sleep 0.1", start=0))
    logs = peers.DockerLogs(cid)
    try:
        logs.wait_for(b"line-5", 20)  # the container is logging into the void
        gw = gateway(start_gateway, fmt, "--listen", "127.0.0.1:%d" % port, listen=False)
        sub = subscribe(gw)
        at_sync = logs.snapshot()
        assert at_sync, "docker logs showed nothing"
        k = int(at_sync[-1].split(b"-")[1])
        report("async_last_line_before_sync_%s" % fmt, k)
        remaining = total - 1 - k
        got = []
        deadline = time.monotonic() + remaining * 0.1 + 30
        last = ("line-%d" % (total - 1)).encode()
        while True:
            left = deadline - time.monotonic()
            m = sub.recv(left) if left > 0 else None
            if m is None:
                fail("peer %s (fluentd-async): awaited line %r at the subscriber; got %d lines, last %r"
                     % (DOCKER, last, len(got), got[-1:]))
            line = m[2].split(b": ", 1)[1] if fmt == "seed" else js(m)["record"]["log"].encode()
            got.append((m, line))
            if line == last:
                break
        assert containers.wait(cid, timeout=30) == 0
        assert settle(gw, sub, DOCKER + " (fluentd-async)") == []
    finally:
        logs.stop()
    lines = [x for _, x in got]
    first = int(lines[0].split(b"-")[1])
    report("async_first_line_received_%s" % fmt, first)
    assert first <= k + 1, "lines %d..%d written after the subscriber was synced are missing" % (k + 1, first - 1)
    assert lines == [b"line-%d" % i for i in range(first, total)]
    for m, _ in got:
        assert m[:2] == [b"tasync", b"default"]
        if fmt == "seed":
            assert m[2].startswith(cid12(cid) + b": ")
        else:
            assert js(m)["record"]["container_id"] == cid


# ---------------------------------------------------------------------------- unix socket


@pytest.mark.parametrize("fmt", FORMATS)
def test_unix_socket_address(fmt, start_gateway, subscribe, containers, tmp_path):
    path = str(tmp_path / "fwd.sock")
    gw = gateway(start_gateway, fmt, "--unix", path)  # TCP stays for the harness's probes
    assert gw.unix == [path]
    sub = subscribe(gw)
    n = 30
    cid = containers.run(*fluentd("unix://" + path, "env=TENANT_ID,SERVICE_ID"),
                         "-e", "TENANT_ID=tu", "-e", "SERVICE_ID=su", cmd=loop(n, "echo unix-$i"))
    msgs = recv_n(sub, n, 30, DOCKER + " over unix://" + path, "lines")
    assert containers.wait(cid) == 0
    assert settle(gw, sub, DOCKER + " over unix") == []
    accepted, _ = peers.connection_counts(gw)
    assert accepted["unix:" + path] == 1, accepted
    want = [b"unix-%d" % i for i in range(1, n + 1)]
    if fmt == "seed":
        assert msgs == [[b"tu", b"su", cid12(cid) + b": " + w] for w in want]
    else:
        assert [m[:2] for m in msgs] == [[b"tu", b"su"]] * n
        objs = [js(m) for m in msgs]
        assert [o["record"]["log"].encode() for o in objs] == want
        assert {o["peer"] for o in objs} == {"unix:" + path}
        assert {o["record"]["source"] for o in objs} == {"stdout"}


# ---------------------------------------------------------------------------- labels, env-regex, tag


@pytest.mark.parametrize("fmt", FORMATS)
def test_labels_env_regex_and_name_tag(fmt, start_gateway, subscribe, containers):
    """Tenant from a label (``labels=`` + ``--tenant-key``), service from an env var picked
    by ``env-regex=``, tag from ``{{.Name}}``."""
    gw = gateway(start_gateway, fmt, "--tenant-key", "com.example.tenant", "--service-key", "APP_SERVICE")
    sub = subscribe(gw)
    name = "fwdgate-test-%s" % uuid.uuid4().hex[:10]
    cid = containers.run(*fluentd(tcp_address(gw), "labels=com.example.tenant", "env-regex=^APP_",
                                  "tag={{.Name}}"),
                         "--name", name, "--label", "com.example.tenant=acme", "--label", "com.example.other=x",
                         "-e", "APP_SERVICE=web", "-e", "APP_COLOR=blue", "-e", "OTHER=no",
                         "-e", "TENANT_ID=not-used",
                         cmd=["sh", "-c", "echo first; echo second >&2; echo third"])
    msgs = recv_n(sub, 3, 30, DOCKER, "lines")
    assert containers.wait(cid) == 0
    assert settle(gw, sub, DOCKER) == []
    assert {tuple(m[:2]) for m in msgs} == {(b"acme", b"web")}
    if fmt == "seed":
        lines = [m[2] for m in msgs]
        p = cid12(cid) + b": "
        assert sorted(lines) == sorted([p + b"first", p + b"second", p + b"third"])
        assert lines.index(p + b"first") < lines.index(p + b"third")
        return
    objs = [js(m) for m in msgs]
    for o in objs:
        assert o["tag"] == name
        line = o["record"]["log"]
        assert o["record"] == {
            "container_id": cid, "container_name": "/" + name,
            "source": "stderr" if line == "second" else "stdout", "log": line,
            "com.example.tenant": "acme", "APP_SERVICE": "web", "APP_COLOR": "blue",
        }
    stdout = [o["record"]["log"] for o in objs if o["record"]["source"] == "stdout"]
    assert stdout == ["first", "third"]


# ---------------------------------------------------------------------------- long lines


@pytest.mark.parametrize("fmt", FORMATS)
def test_40k_line_split_by_docker(fmt, start_gateway, subscribe, containers):
    """Docker 20.10 cuts a 40 KiB line into 16384 + 16384 + 8192 bytes, each piece a
    record with partial_message/partial_id/partial_ordinal/partial_last; a final line
    without newline comes as a lone first piece that is never marked last."""
    gw = gateway(start_gateway, fmt)
    sub = subscribe(gw)
    size = 40 * 1024
    line = "".join(str(i) for i in range(1, 20001))[:size].encode()
    cid = containers.run(*fluentd(tcp_address(gw)),
                         cmd=["sh", "-c", 'seq -s "" 1 20000 | head -c %d; echo; echo after; printf no-eol' % size])
    msgs = recv_n(sub, 5, 30, DOCKER, "records")
    assert containers.wait(cid) == 0
    assert settle(gw, sub, DOCKER) == []
    p = cid12(cid) + b": "
    assert {tuple(m[:2]) for m in msgs} == {(b"default", b"default")}
    pieces = [line[:16384], line[16384:32768], line[32768:]]
    if fmt == "seed":
        assert [m[2] for m in msgs] == [p + x for x in pieces] + [p + b"after", p + b"no-eol"]
        assert b"".join(m[2][len(p):] for m in msgs[:3]) == line
        return
    objs = [js(m) for m in msgs]
    recs = [o["record"] for o in objs]
    name = containers.inspect(cid, "{{.Name}}")
    base = {"container_id": cid, "container_name": name, "source": "stdout"}
    pid = recs[0].get("partial_id", "")
    assert re.fullmatch(r"[0-9a-f]{64}", pid), recs[0]
    for k, (rec, piece) in enumerate(zip(recs[:3], pieces), start=1):
        assert rec == {**base, "log": piece.decode(), "partial_message": "true", "partial_id": pid,
                       "partial_ordinal": str(k), "partial_last": "true" if k == 3 else "false"}
    assert "".join(r["log"] for r in recs[:3]).encode() == line
    assert len({o["time_ns"] for o in objs[:3]}) == 1, "pieces carry the first piece's time"
    assert recs[3] == {**base, "log": "after"}
    assert recs[4] == {**base, "log": "no-eol", "partial_message": "true", "partial_id": recs[4]["partial_id"],
                       "partial_ordinal": "1", "partial_last": "false"}
    assert recs[4]["partial_id"] != pid


def test_40k_line_joined_with_join_partial(start_gateway, subscribe, containers, tmp_path):
    """With input.join_partial, Docker's three pieces of a 40 KiB line arrive as one
    record with the whole line and no partial_* keys; the unterminated last output,
    whose last piece never comes, is published when the container's connection ends,
    still marked partial_message."""
    cfg = tmp_path / "join.toml"
    cfg.write_text("[input]\njoin_partial = true\n")
    gw = gateway(start_gateway, "json", "--config", str(cfg))
    sub = subscribe(gw)
    size = 40 * 1024
    line = "".join(str(i) for i in range(1, 20001))[:size]
    cid = containers.run(*fluentd(tcp_address(gw)),
                         cmd=["sh", "-c", 'seq -s "" 1 20000 | head -c %d; echo; echo after; printf no-eol' % size])
    assert containers.wait(cid) == 0
    msgs = recv_n(sub, 3, 30, DOCKER, "records")
    assert settle(gw, sub, DOCKER) == []
    recs = [js(m)["record"] for m in msgs]
    name = containers.inspect(cid, "{{.Name}}")
    base = {"container_id": cid, "container_name": name, "source": "stdout"}
    assert recs[0] == {**base, "log": line}
    assert recs[1] == {**base, "log": "after"}
    assert recs[2] == {**base, "log": "no-eol", "partial_message": "true"}


# ---------------------------------------------------------------------------- many containers


@pytest.mark.parametrize("fmt", FORMATS)
def test_20_containers_5000_lines_each(fmt, start_gateway, subscribe, containers, tmp_path):
    """20 containers start logging together (a start barrier: they wait for a file on a
    read-only bind mount), 5,000 lines each; exact count and order per container id."""
    gw = gateway(start_gateway, fmt)
    sub = subscribe(gw)
    k, n = 20, 5000
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    cmd = ["sh", "-c", "while [ ! -e /barrier/go ]; do sleep 0.05; done; seq 1 %d" % n]
    cids = [containers.run(*fluentd(tcp_address(gw), "env=TENANT_ID"), "-e", "TENANT_ID=bulk%02d" % j,
                           "-v", "%s:/barrier:ro" % barrier, cmd=cmd)
            for j in range(k)]
    t0 = time.monotonic()
    (barrier / "go").touch()
    msgs = recv_n(sub, k * n, 180, DOCKER + " (%d containers)" % k, "lines")
    took_recv = time.monotonic() - t0
    for cid in cids:
        assert containers.wait(cid, timeout=60) == 0
    took = time.monotonic() - t0
    report("containers_20x5000_%s_seconds" % fmt, "%.2f (all received after %.2f)" % (took, took_recv))
    assert settle(gw, sub, DOCKER + " (%d containers)" % k, min_accepted=k) == []
    want = [str(i).encode() for i in range(1, n + 1)]
    per = {cid: [] for cid in cids}
    tenants = {}
    for m in msgs:
        if fmt == "seed":
            c, _, line = m[2].partition(b": ")
            full = [x for x in cids if x[:12].encode() == c]
            assert len(full) == 1, m[:2] + [m[2][:80]]
            cid = full[0]
        else:
            o = js(m)
            cid, line = o["record"]["container_id"], o["record"]["log"].encode()
        per[cid].append(line)
        tenants.setdefault(cid, set()).add(tuple(m[:2]))
    for j, cid in enumerate(cids):
        assert len(per[cid]) == n, "container %s: %d lines" % (cid[:12], len(per[cid]))
        assert per[cid] == want, "container %s: lines out of order" % cid[:12]
        assert tenants[cid] == {(b"bulk%02d" % j, b"default")}


# ---------------------------------------------------------------------------- subscribers


def test_seed_frames_byte_for_byte(start_gateway, subscribe, containers):
    """The seed layout as the reference Docker ZeroMQ driver sent it, for a real
    container: tenant, service, "<12-char container id>: <line>" with the line's bytes
    untouched (empty lines, spaces, tabs, CR, UTF-8 and invalid UTF-8 included)."""
    gw = gateway(start_gateway, "seed")
    sub = subscribe(gw)
    script = (r'echo hello; echo; echo "  two  spaces "; printf "tab\there\n"; printf "colon: x\n";'
              r' printf "caf\303\251 \342\234\223\n"; printf "\377\376-raw\n"; printf "cr\r\n"; echo end')
    cid = containers.run(*fluentd(tcp_address(gw), "env=TENANT_ID,SERVICE_ID"),
                         "-e", "TENANT_ID=t1", "-e", "SERVICE_ID=s1", cmd=["sh", "-c", script])
    assert containers.inspect(cid, "{{.Id}}") == cid
    msgs = recv_n(sub, 9, 30, DOCKER, "lines")
    assert containers.wait(cid) == 0
    assert settle(gw, sub, DOCKER) == []
    p = cid[:12].encode() + b": "
    assert msgs == [[b"t1", b"s1", p + x] for x in [
        b"hello", b"", b"  two  spaces ", b"tab\there", b"colon: x",
        "café ✓".encode(), b"\xff\xfe-raw", b"cr\r", b"end"]]


@pytest.mark.parametrize("suffix", [True, False], ids=["topic-suffix", "prefix-trap"])
def test_t1_subscriber_and_t10(suffix, start_gateway, subscribe, containers):
    """With ``--topic-suffix |`` a subscriber of ``t1|`` never sees tenant t10; without
    a suffix, ZeroMQ's prefix match hands a ``t1`` subscriber t10's lines too."""
    args = ("--topic-suffix", "|") if suffix else ()
    gw = gateway(start_gateway, "seed", *args)
    sfx = b"|" if suffix else b""
    sub_t1 = subscribe(gw, b"t1" + sfx)
    sub_all = subscribe(gw)
    n = 20
    cids = {}
    for tenant in ("t10", "t1", "t100"):
        cids[tenant] = containers.run(*fluentd(tcp_address(gw), "env=TENANT_ID"), "-e", "TENANT_ID=" + tenant,
                                      cmd=loop(n, "echo %s-$i" % tenant))
    everything = recv_n(sub_all, 3 * n, 30, DOCKER + " (3 containers)", "lines")
    for cid in cids.values():
        assert containers.wait(cid) == 0
    assert settle(gw, sub_all, DOCKER, min_accepted=3) == []

    def lines(tenant):
        return [[tenant.encode() + sfx, b"default", cid12(cids[tenant]) + b": %s-%d" % (tenant.encode(), i)]
                for i in range(1, n + 1)]

    for tenant in cids:
        assert [m for m in everything if m[0] == tenant.encode() + sfx] == lines(tenant)
    if suffix:
        got = recv_n(sub_t1, n, 10, DOCKER + " (t1 subscriber)", "lines")
        assert got == lines("t1")
    else:
        got = recv_n(sub_t1, 3 * n, 10, DOCKER + " (t1 subscriber)", "lines")
        assert sorted(map(tuple, got)) == sorted(map(tuple, lines("t1") + lines("t10") + lines("t100")))
    assert sub_t1.sync(gw) == []
