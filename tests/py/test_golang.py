"""fluent-logger-golang 1.9 (Debian's package; the library inside Docker's fluentd driver)
as a client: tests/go/client.go posts records with PostWithTime at known times, with
RequestAck, SubSecondPrecision, Async (and MarshalAsJSON) on and off. Counts, order,
records and times are checked exactly in the json format; one run in the seed format.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

import peers
from peers import fail, recv_n, run_cmd, settle

GOPATH = "/usr/share/gocode"
LIB = GOPATH + "/src/github.com/fluent/fluent-logger-golang/fluent"
PEER = "fluent-logger-golang client"
START_NS = 1700000000123456789
STEP_NS = 1000000001 + 7  # the fraction changes from record to record


@pytest.fixture(scope="session")
def go_client(tmp_path_factory):
    """tests/go/client.go, built once per session, offline, into a temporary directory."""
    go = shutil.which("go")
    if go is None:
        fail("peer %s: no `go` on PATH (scripts/install-test-deps.sh installs golang-go)" % PEER)
    if not os.path.isdir(LIB):
        fail("peer %s: %s missing (scripts/install-test-deps.sh installs "
             "golang-github-fluent-fluent-logger-golang-dev)" % (PEER, LIB))
    out = tmp_path_factory.mktemp("goclient") / "client"
    env = dict(os.environ, GO111MODULE="off", GOPATH=GOPATH, GOPROXY="off", GOFLAGS="")
    if "GOCACHE" not in env and not env.get("HOME"):
        env["GOCACHE"] = str(tmp_path_factory.mktemp("gocache"))
    run_cmd([go, "build", "-o", str(out), "./client.go"], PEER + " (go build)", timeout=300,
            env=env, cwd=str(peers.REPO_ROOT / "tests" / "go"))
    return str(out)


def run_client(go_client, gw, count, ack=False, subsec=False, asyncmode=False, as_json=False, timeout=120):
    host, port = gw.addr
    argv = [go_client, "-host", host, "-port", str(port), "-count", str(count),
            "-start", str(START_NS), "-step", str(STEP_NS),
            "-ack=%s" % str(ack).lower(), "-subsec=%s" % str(subsec).lower(),
            "-async=%s" % str(asyncmode).lower(), "-json=%s" % str(as_json).lower()]
    p = run_cmd(argv, PEER, timeout=timeout)
    assert p.stdout.decode() == "sent %d\n" % count, p.stdout
    assert p.stderr == b"", p.stderr.decode()


def expected_record(i):
    return {"TENANT_ID": "tgo", "SERVICE_ID": "sgo", "log": "go-%d" % i, "i": i,
            "meta": {"seq": i, "tags": ["a", "b"], "ok": True}}


def stop_counters(gw):
    gw.stop()
    lines = gw.log_lines(lambda raw, obj: "fwdgate stopped" in raw)
    assert lines, "the gateway logged no 'fwdgate stopped' line:\n" + gw.stderr_text()
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", lines[-1])}


COMBOS = [
    # (RequestAck, SubSecondPrecision, Async, MarshalAsJSON)
    (False, False, False, False),
    (True, True, True, False),
    (True, False, False, False),
    (False, True, False, False),
    (False, False, True, False),
    (True, True, False, False),
    (False, True, True, False),
    (True, False, False, True),
    (False, False, True, True),
]


def combo_id(c):
    names = ("ack", "subsec", "async", "marshaljson")
    on = [n for n, v in zip(names, c) if v]
    return "+".join(on) if on else "all-off"


@pytest.mark.parametrize("combo", COMBOS, ids=[combo_id(c) for c in COMBOS])
def test_go_client_json(combo, go_client, start_gateway, subscribe):
    ack, subsec, asyncmode, as_json = combo
    gw = start_gateway("--format", "json", "--log-level", "debug")
    sub = subscribe(gw)
    n = 1000
    run_client(go_client, gw, n, ack, subsec, asyncmode, as_json)
    msgs = recv_n(sub, n, 30, PEER + " " + combo_id(combo), "records")
    assert settle(gw, sub, PEER) == []
    for i, m in enumerate(msgs):
        assert m[:2] == [b"tgo", b"sgo"]
        o = json.loads(m[2])
        t = START_NS + i * STEP_NS
        # with SubSecondPrecision off Go sends integer seconds (and MarshalAsJSON always does)
        want_ns = t if subsec and not as_json else t // 10**9 * 10**9
        assert o["time_ns"] == want_ns, (i, o)
        assert peers.parse_rfc3339_ns(o["time"]) == want_ns, (i, o)
        assert o["tag"] == "go.client"
        assert o["peer"].startswith("127.0.0.1:")
        assert o["record"] == expected_record(i)
        assert set(o) == {"tag", "time", "time_ns", "peer", "record"}
    counters = stop_counters(gw)
    assert counters["acks"] == (n if ack else 0), counters
    assert counters["events_published"] >= n


def test_go_client_seed_all_on(go_client, start_gateway, subscribe):
    gw = start_gateway("--log-level", "debug")
    sub = subscribe(gw)
    n = 500
    run_client(go_client, gw, n, ack=True, subsec=True, asyncmode=True)
    msgs = recv_n(sub, n, 30, PEER, "records")
    assert settle(gw, sub, PEER) == []
    # no container_id in these records: the seed frame names the tag
    assert msgs == [[b"tgo", b"sgo", b"go.client: go-%d" % i] for i in range(n)]
    assert stop_counters(gw)["acks"] == n
