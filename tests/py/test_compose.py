"""docker-compose.yml at the repository root, for real, with Debian's docker-compose (v1):
the gateway image is built offline from docker/Dockerfile.offline with the release
binary (staged with its shared libraries in target/docker-offline, exactly as the
compose file's header says), a demo container (local/busybox) logs through the fluentd
driver, and a `fwdgate tail` container prints the demo's lines. `fwdgate tail` is PID 1
of its container: `docker-compose stop` must end it with SIGTERM at once, exit 0.
Everything is torn down (`down -v --rmi local`) afterwards, pass or fail.

The release binary: $FWDGATE_RELEASE_BIN, else target/release/fwdgate.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
import uuid

import pytest

import peers
from peers import fail, run_cmd

PEER = "docker-compose"
COMPOSE_FILE = peers.REPO_ROOT / "docker-compose.yml"
STAGE_DIR = peers.REPO_ROOT / "target" / "docker-offline"
PORTS = [(24224, socket.SOCK_STREAM), (24224, socket.SOCK_DGRAM), (6362, socket.SOCK_STREAM)]

STAGE_SCRIPT = peers.REPO_ROOT / "scripts" / "stage-image.sh"
RELEASE_BIN = os.environ.get("FWDGATE_RELEASE_BIN", str(peers.REPO_ROOT / "target" / "release" / "fwdgate"))
# `docker-compose stop` sends SIGTERM and waits this long before SIGKILL
STOP_TIMEOUT = 10

pytestmark = [pytest.mark.usefixtures("busybox_image"), pytest.mark.release]


def test_compose_demo_to_tail(dockerd):
    compose = shutil.which("docker-compose")
    if compose is None:
        fail("peer %s: not on PATH (scripts/install-test-deps.sh installs docker-compose)" % PEER)
    for port, kind in PORTS:
        why = peers.port_in_use(port, kind)
        if why:
            fail("peer %s: docker-compose.yml uses the fixed port %d, which is taken (%s); free it and re-run"
                 % (PEER, port, why))
    if not os.access(RELEASE_BIN, os.X_OK):
        fail("no release binary at %s (cargo build --release, or set FWDGATE_RELEASE_BIN)" % RELEASE_BIN)
    run_cmd([str(STAGE_SCRIPT), RELEASE_BIN, str(STAGE_DIR)], "staging the image context")
    project = "fwdgatetest%s%s" % (peers.RUN_ID, uuid.uuid4().hex[:6])
    base = [compose, "--ansi", "never", "-p", project, "-f", str(COMPOSE_FILE)]
    env = dict(os.environ, COMPOSE_INTERACTIVE_NO_CLI="1")
    logs = None
    try:
        run_cmd(base + ["up", "-d", "--build"], PEER + " up", timeout=300, env=env)

        def cid(service):
            out = run_cmd(base + ["ps", "-q", service], PEER + " ps", env=env).stdout.decode().split()
            assert len(out) == 1, "service %s: containers %r" % (service, out)
            return out[0]

        demo, tail, gateway = cid("demo"), cid("tail"), cid("fwdgate")
        for c in (demo, tail, gateway):
            assert network_mode(c) == "host"
        assert peers.docker_out("inspect", "--format", "{{.HostConfig.LogConfig.Type}}", demo) == "fluentd"
        logs = peers.DockerLogs(tail)
        want = 30
        lines = logs.wait_count(want, 90, PEER + " (tail service printing the demo's lines)")
        prefix = demo[:12].encode() + b": demo-line-"
        bad = [x for x in lines if not re.fullmatch(re.escape(prefix) + rb"\d+", x)]
        assert not bad, "tail printed lines that are not the demo's: %r" % bad[:5]
        nums = [int(x[len(prefix):]) for x in lines]
        assert nums == list(range(nums[0], nums[0] + want)), "not contiguous and in order: %r" % nums
        print("MEASURE compose_first_demo_line_at_tail = %d" % nums[0])
        out = peers.docker("logs", gateway)
        ready = (out.stdout + out.stderr).decode("utf-8", "replace")
        assert "fwdgate ready" in ready and "127.0.0.1:24224" in ready and "tcp://127.0.0.1:6362" in ready, ready
        # tail, PID 1 of its container, stops on SIGTERM, not on the SIGKILL after the timeout
        start = time.monotonic()
        run_cmd(base + ["stop", "--timeout", str(STOP_TIMEOUT), "tail"], PEER + " stop tail",
                timeout=STOP_TIMEOUT + 30, env=env)
        took = time.monotonic() - start
        state = peers.docker_out("inspect", "--format", "{{.State.ExitCode}} {{.State.OOMKilled}}", tail)
        assert state == "0 false", "tail container after stop: %s (took %.1f s)" % (state, took)
        assert took < STOP_TIMEOUT / 2, "stopping tail took %.1f s" % took
    finally:
        if logs is not None:
            logs.stop()
        down = run_cmd(base + ["down", "-v", "--rmi", "local", "--timeout", "5"], PEER + " down", timeout=120,
                       check=False, env=env)
        shutil.rmtree(STAGE_DIR, ignore_errors=True)
    assert down.returncode == 0, down.stderr.decode()
    left = peers.docker_out("ps", "-aq", "--filter", "label=com.docker.compose.project=%s" % project)
    assert left == "", "containers of %s left after down: %s" % (project, left)
    images = peers.docker_out("images", "-q", "--filter", "reference=%s_*" % project)
    assert images == "", "images of %s left after down: %s" % (project, images)


def network_mode(cid):
    return peers.docker_out("inspect", "--format", "{{.HostConfig.NetworkMode}}", cid)
