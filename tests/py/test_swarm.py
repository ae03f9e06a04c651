"""A swarm service (single-node swarm on 127.0.0.1) logging through the fluentd driver:
every replica's lines arrive under the tenant taken from the swarm label
``com.docker.swarm.service.name`` (passed on with ``--log-opt labels=``).

The swarm (the ``swarm`` fixture of conftest.py) is initialised once for this module and
left afterwards, pass or fail, unless the daemon was already in a swarm before (then it
is used and left as it was).
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

import peers
from peers import docker, docker_out, fail, recv_n, settle

SWARM = "Docker swarm service (fluentd driver)"
SERVICE_LABEL = "com.docker.swarm.service.name"
pytestmark = pytest.mark.usefixtures("busybox_image")


@pytest.fixture
def services(swarm):
    """Services a test creates (ids) and their task containers (ids): all removed by id."""
    made = {"services": [], "containers": []}
    yield made
    for sid in made["services"]:
        docker("service", "rm", sid, check=False)
    if made["containers"]:
        docker("rm", "-f", "-v", *made["containers"], check=False)


def task_containers(sid, replicas, timeout=30.0):
    """{container id: slot} of the service's tasks, once every task has a container."""
    deadline = time.monotonic() + timeout
    while True:
        tasks = docker_out("service", "ps", "--no-trunc", "--quiet", sid).split()
        out = {}
        for t in tasks:
            info = json.loads(docker_out("inspect", "--type", "task", "--format", "{{json .}}", t))
            c = (info.get("Status", {}).get("ContainerStatus") or {}).get("ContainerID")
            if c:
                out[c] = info["Slot"]
        if len(tasks) == replicas and len(out) == replicas:
            return out
        if time.monotonic() > deadline:
            fail("peer Docker swarm: service %s: awaited %d task containers within %.0fs, have %r (tasks %r)"
                 % (sid, replicas, timeout, out, tasks))
        time.sleep(0.2)


@pytest.mark.parametrize("fmt", ["seed", "json"])
def test_service_replicas_tenant_from_swarm_label(fmt, start_gateway, subscribe, services):
    gw = start_gateway("--format", fmt, "--log-level", "debug", "--tenant-key", SERVICE_LABEL)
    sub = subscribe(gw)
    name = "fwdgate-swarm-%s" % uuid.uuid4().hex[:10]
    replicas, n = 3, 50
    sid = docker_out(
        "service", "create", "--detach", "--no-resolve-image", "--quiet", "--name", name,
        "--replicas", str(replicas), "--restart-condition", "none", "--network", "host",
        "--label", peers.TEST_LABEL, "--container-label", peers.TEST_LABEL,
        "--env", "SLOT={{.Task.Slot}}",
        "--log-driver", "fluentd",
        "--log-opt", "fluentd-address=%s:%d" % gw.addr,
        "--log-opt", "labels=%s" % SERVICE_LABEL,
        peers.BUSYBOX_IMAGE,
        "sh", "-c", "i=1; while [ $i -le %d ]; do echo r$SLOT-$i; i=$((i+1)); done" % n,
        timeout=60)
    services["services"].append(sid)
    msgs = recv_n(sub, replicas * n, 90, SWARM + " " + name, "lines")
    tasks = task_containers(sid, replicas)
    services["containers"].extend(tasks)
    for cid in tasks:
        peers.Containers().wait(cid, timeout=30, what=" (task of %s)" % name)
    assert settle(gw, sub, SWARM, min_accepted=replicas) == []

    assert {tuple(m[:2]) for m in msgs} == {(name.encode(), b"default")}
    per = {}
    for m in msgs:
        if fmt == "seed":
            c, _, line = m[2].partition(b": ")
            per.setdefault(c.decode(), []).append(line.decode())
        else:
            o = json.loads(m[2])
            rec = o["record"]
            cid = rec["container_id"]
            slot = tasks.get(cid)
            assert slot is not None, "record from a container that is no task of %s: %r" % (name, rec)
            assert rec == {"container_id": cid, "source": "stdout", "log": rec["log"],
                           "container_name": rec["container_name"], SERVICE_LABEL: name}
            assert rec["container_name"].startswith("/%s.%d." % (name, slot)), rec
            assert o["tag"] == cid[:12]
            per.setdefault(cid[:12], []).append(rec["log"])
    assert len(per) == replicas, "expected %d distinct container ids, got %r" % (replicas, sorted(per))
    assert sorted(per) == sorted(c[:12] for c in tasks)
    for cid, slot in tasks.items():
        assert per[cid[:12]] == ["r%d-%d" % (slot, i) for i in range(1, n + 1)], "replica %d (%s)" % (slot, cid[:12])
