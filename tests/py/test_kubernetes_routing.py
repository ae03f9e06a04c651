"""Records as they arrive from Kubernetes nodes, and Rainbond's eventlog as a subscriber.

- Routing keys as record_accessor paths into the nested `kubernetes` map (Fluent Bit's
  kubernetes filter, Fluentd's kubernetes_metadata) in every mode: Message, Forward with
  Fluent Bit's `[[EventTime, {}], record]` entries, PackedForward, gzip
  CompressedPackedForward; the `json` and `batch` formats and `fwdgate tail` with them;
  malformed paths refused at start with the key and the position named.
- `--format rainbond` into a subscriber that does what Rainbond's eventlog does in its
  zmq mode (a SUB socket that binds and subscribes to everything, one frame per message,
  cut as `handleDockerLog` cuts it), fed by a real Docker container and by
  fluent-logger-golang.
"""

from __future__ import annotations

import json
import time
import uuid

import msgpack
import pytest
import zmq

import fwd
import k8s_vectors
import peers
from conftest import run_fwdgate, zmq_context
from fwd import entry, entry_stream, forward, message, option, packed_forward, t_event, t_with_meta
from test_golang import go_client  # noqa: F401  (the fixture)
from test_metrics import get, metric, wait_for

T0 = 1765000000
NS = 123456789
TENANT = "$.kubernetes.namespace_name"
SERVICE = "$['kubernetes']['labels']['app.kubernetes.io/name']"
CONTAINER = "$.kubernetes.docker_id"
DOCKER_ID = "4f1c8a1e2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6"


def kube_record(line, namespace, app, docker_id=DOCKER_ID, **labels):
    """A record as Fluent Bit's tail (cri parser) and kubernetes filter leave it."""
    return {
        "time": "2026-12-08T01:23:45.123456789Z",
        "stream": "stdout",
        "_p": "F",
        "log": line,
        "kubernetes": {
            "pod_name": "%s-7d4b9c-x2x9q" % app,
            "namespace_name": namespace,
            "pod_id": "0d1f5ac1-32b5-4d8e-9a2c-1b7e0f6a4c3d",
            "labels": {"app.kubernetes.io/name": app, "pod-template-hash": "7d4b9c", **labels},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-12-01T00:00:00Z"},
            "host": "node-1",
            "pod_ip": "10.244.1.17",
            "container_name": app,
            "docker_id": docker_id,
            "container_hash": "registry.example/%s@sha256:%s" % (app, "ab" * 32),
            "container_image": "registry.example/%s:1.2" % app,
        },
    }


RECORDS = [
    kube_record("GET /healthz 200", "acme", "storefront"),
    kube_record("payment accepted", "beta", "billing", docker_id="9" * 64),
    # no app label: the service falls through to the container name
    {**kube_record("no label", "acme", "x"), "kubernetes": {
        **kube_record("", "acme", "x")["kubernetes"], "labels": {}, "container_name": "worker"}},
    # no kubernetes map at all: the defaults, and the tag as container id
    {"log": "plain", "stream": "stderr"},
]
EXPECTED = [
    [b"acme", b"storefront", b"4f1c8a1e2b3c: GET /healthz 200"],
    [b"beta", b"billing", b"999999999999: payment accepted"],
    [b"acme", b"worker", b"4f1c8a1e2b3c: no label"],
    [b"default", b"default", b"kube.var.log.containers.web: plain"],
]
TAG = "kube.var.log.containers.web"


def kube_config(tmp_path, fmt="seed"):
    path = tmp_path / "kube.toml"
    path.write_text(
        "[route]\n"
        "tenant_keys = [%s]\n"
        "service_keys = [%s, \"$.kubernetes.container_name\"]\n"
        "container_id_key = %s\n"
        "[output]\nformat = %s\n" % tuple(json.dumps(v) for v in (TENANT, SERVICE, CONTAINER, fmt)))
    return str(path)


@pytest.fixture
def kgw(start_gateway, tmp_path):
    return start_gateway("--config", kube_config(tmp_path), tenant_keys=[TENANT], service_keys=[SERVICE])


@pytest.fixture
def ksub(kgw, subscribe):
    return subscribe(kgw)


def meta_time(i):
    """Fluent Bit's v2 event time: `[EventTime, {}]`."""
    return t_with_meta(t_event(T0 + i, NS), {})


def requests_by_mode():
    entries = [(meta_time(i), r) for i, r in enumerate(RECORDS)]
    stream = b"".join(entry(t, r) for t, r in entries)
    return {
        "message": b"".join(message(TAG, t_event(T0 + i, NS), r, {}) for i, r in enumerate(RECORDS)),
        "forward": forward(TAG, [fwd.Raw(entry(t, r)) for t, r in entries], option(size=len(RECORDS))),
        "packed": packed_forward(TAG, stream, option(size=len(RECORDS))),
        "packed_str32": packed_forward(TAG, stream, option(size=len(RECORDS)), container=fwd.str32),
        "gzip": packed_forward(TAG, fwd.gzip_members(stream[:len(stream) // 2], stream[len(stream) // 2:]),
                               option(size=len(RECORDS), compressed="gzip")),
    }


@pytest.mark.parametrize("mode", list(requests_by_mode()))
def test_nested_keys_route_in_every_mode(kgw, ksub, mode):
    with kgw.connect() as c:
        c.send(requests_by_mode()[mode])
        msgs = ksub.recv_n(len(RECORDS))
    assert msgs == EXPECTED
    assert ksub.sync(kgw) == []


def test_nested_keys_with_chunk_are_acked_byte_exact(kgw, ksub):
    stream = entry_stream([(meta_time(i), r) for i, r in enumerate(RECORDS)])
    with kgw.connect() as c:
        c.send(packed_forward(TAG, fwd.gzip_members(stream), option(
            size=len(RECORDS), chunk="p8n9gmxTQVC8/nh2wlKKeQ==", compressed="gzip")))
        assert c.recv_exact(len(fwd.ack("p8n9gmxTQVC8/nh2wlKKeQ=="))) == fwd.ack("p8n9gmxTQVC8/nh2wlKKeQ==")
    assert ksub.recv_n(len(RECORDS)) == EXPECTED


def test_json_batch_and_tail_with_nested_keys(start_gateway, subscribe, start_tail, tmp_path):
    for fmt in ("json", "batch"):
        gw = start_gateway("--config", kube_config(tmp_path, fmt), tenant_keys=[TENANT], service_keys=[SERVICE])
        sub = subscribe(gw, b"acme")
        with gw.connect() as c:
            c.send(forward(TAG, [fwd.Raw(entry(meta_time(i), r)) for i, r in enumerate(RECORDS[:2])]))
        [m] = sub.recv_n(1)
        assert m[:2] == [b"acme", b"storefront"]
        if fmt == "json":
            assert json.loads(m[2])["record"] == RECORDS[0]
        else:
            tag, entries = msgpack.unpackb(m[2], raw=False, strict_map_key=False,
                                           ext_hook=lambda code, data: (code, data))
            assert (tag, [e[1] for e in entries]) == (TAG, [RECORDS[0]])
        assert sub.sync(gw) == []
        if fmt == "batch":
            # tail reads the routing keys from the same file: its container id is nested too
            tail = start_tail("--connect", gw.zmq_bind[0], "--tenant", "acme", "--config", kube_config(tmp_path, fmt))
            tail.wait_ready(gw, "acme", "storefront")
            with gw.connect() as c:
                c.send(message(TAG, T0, RECORDS[0], {}))
            assert tail.line(10) == b"4f1c8a1e2b3c: GET /healthz 200"


def test_nested_line_keys_and_variables(start_gateway, subscribe, tmp_path):
    """A line key as a path (a string line, a map line rendered as JSON, fall-through to
    `log`), and the tenant key given by its environment variable."""
    path = tmp_path / "lines.toml"
    path.write_text('[route]\nline_keys = ["$.msg.text", "$.msg.fields", "log"]\n')
    gw = start_gateway("--config", str(path), env={"FWDGATE_TENANT_KEY": TENANT}, tenant_keys=[TENANT])
    sub = subscribe(gw)
    with gw.connect() as c:
        c.send(b"".join(message("tg", T0, r, {}) for r in [
            {"msg": {"text": "deep line"}, "log": "top", "kubernetes": {"namespace_name": "acme"}},
            {"msg": {"fields": {"a": 1}}, "log": "top"},
            {"msg": "not a map", "log": "top"},
        ]))
        assert sub.recv_n(3) == [
            [b"acme", b"default", b"tg: deep line"],
            [b"default", b"default", b'tg: {"a":1}'],
            [b"default", b"default", b"tg: top"],
        ]


@pytest.mark.parametrize("args, key, position", [
    (["--tenant-key", "$.kubernetes..namespace_name"], "route.tenant_keys", 14),
    (["--service-key", "SERVICE_ID", "--service-key", "$['kubernetes'"], "route.service_keys", 15),
])
def test_malformed_paths_are_refused_at_start(args, key, position):
    p = run_fwdgate(args + ["--listen", "127.0.0.1:0", "--zmq-bind", "tcp://127.0.0.1:*"])
    assert p.returncode == 1, p.stderr
    err = p.stderr.decode()
    assert key in err and "at character %d" % position in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_malformed_path_in_a_file_names_the_key_and_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[route]\n# nested\ncontainer_id_key = \"$.kubernetes.docker_id[\"\n")
    p = run_fwdgate(["check-config", "--config", str(path)])
    assert p.returncode == 1
    err = p.stderr.decode()
    assert "line 3" in err and "route.container_id_key" in err and "unclosed `[` at character 23" in err, err


def routed_as(record, tag):
    """The seed frames a Kubernetes record must give under `kube_config`, worked out
    here on the decoded record (an oracle independent of the gateway's walk)."""
    k = record.get("kubernetes", {})
    service = k.get("labels", {}).get("app.kubernetes.io/name") or k.get("container_name") or "default"
    container = k.get("docker_id", tag)[:12] if "docker_id" in k else tag
    line = record.get("log", record.get("message"))
    return [k.get("namespace_name", "default").encode(), service.encode(), ("%s: %s" % (container, line)).encode()]


@pytest.mark.parametrize("vector", k8s_vectors.VECTORS, ids=[v.name for v in k8s_vectors.VECTORS])
def test_what_fluent_bit_and_fluentd_send_from_kubernetes(kgw, ksub, vector):
    """The exact requests of Fluent Bit 5.x and Fluentd 1.18 after their Kubernetes
    metadata filters (tests/py/k8s_vectors.py, each annotated with its decoded value and
    the source it was read from): acked byte for byte, every record routed."""
    assert k8s_vectors.decode(vector.wire) == vector.decoded
    with kgw.connect() as c:
        c.send(vector.wire)
        if vector.ack is not None:
            assert c.recv_exact(len(vector.ack)) == vector.ack
        msgs = ksub.recv_n(len(vector.events))
        if vector.ack is None:
            assert c.read_available(0.2) == b"", "no ack without a chunk"
    assert msgs == [routed_as(r, vector.tag) for r in vector.events]
    assert ksub.sync(kgw) == []


# ------------------------------------------------------------------ Rainbond's eventlog

RAINBOND_SERVICE = "6f1e0c0b8a2d4d4fa8c2d7e5b9a1c3f2"  # a component id: 32 hex characters
PROBE_SERVICE_ID = "f" * 32
SYSTEM = ("rbd-api", "rbd-worker", "rbd-gateway", "rbd-chaos")


def handle_docker_log(m: bytes):
    """What the eventlog's handleDockerLog makes of a message: (container id, service id,
    line), or None where it drops it."""
    if len(m) < 47:
        return None
    container, service = m[0:12], m[13:45].decode("latin-1")
    for name in SYSTEM:
        if name in service:
            service = name
    return container.decode(), service, m[13 + len(service):]


class Eventlog:
    """Rainbond's eventlog in `--dockerlog.mode=zmq`: a SUB socket that binds and
    subscribes to everything, reading one frame at a time."""

    def __init__(self):
        self.sock = zmq_context().socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.bind("tcp://127.0.0.1:*")
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.endpoint = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()

    def recv(self, timeout):
        if not self.sock.poll(int(timeout * 1000), zmq.POLLIN):
            return None
        frames = self.sock.recv_multipart()
        assert len(frames) == 1, "a rainbond message is one frame: %r" % frames
        return frames[0]

    def ready(self, gw, timeout=20.0):
        """Probes until one arrives (the gateway dials us), then up to a final marker."""
        deadline = time.monotonic() + timeout
        final = "probe-final-" + uuid.uuid4().hex
        with gw.connect() as c:
            n = 0
            while True:
                assert time.monotonic() < deadline, "no probe reached the eventlog; stderr:\n%s" % gw.stderr_text()
                c.send(message("probe00000000", T0, {"SERVICE_ID": PROBE_SERVICE_ID, "log": "p%d" % n}, {}))
                n += 1
                if self.recv(0.1) is not None:
                    break
            c.send(message("probe00000000", T0, {"SERVICE_ID": PROBE_SERVICE_ID, "log": final}, {}))
            while True:
                m = self.recv(max(deadline - time.monotonic(), 0.1))
                assert m is not None, "the final probe did not arrive"
                if m.endswith(final.encode()):
                    return

    def lines(self, n, timeout=30.0):
        """The next ``n`` non-probe messages, as handleDockerLog reads them."""
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            m = self.recv(max(deadline - time.monotonic(), 0))
            assert m is not None, "got %d of %d messages; last: %r" % (len(out), n, out[-3:])
            if handle_docker_log(m) and handle_docker_log(m)[1] == PROBE_SERVICE_ID:
                continue
            out.append(handle_docker_log(m))
        return out

    def close(self):
        self.sock.close(0)


@pytest.fixture
def eventlog():
    e = Eventlog()
    yield e
    e.close()


def rainbond_gateway(start_gateway, eventlog, *extra):
    gw = start_gateway("--zmq-connect", eventlog.endpoint, "--format", "rainbond",
                       "--metrics-listen", "127.0.0.1:0", *extra, zmq_bind=False)
    eventlog.ready(gw)
    return gw


def test_rainbond_from_a_docker_container(start_gateway, eventlog, containers, busybox_image):
    gw = rainbond_gateway(start_gateway, eventlog)
    host, port = gw.addr
    n = 40
    cid = containers.run(
        "--network", "none", "--log-driver=fluentd", "--log-opt", "fluentd-address=%s:%d" % (host, port),
        "--log-opt", "env=TENANT_ID,SERVICE_ID", "-e", "TENANT_ID=t1", "-e", "SERVICE_ID=" + RAINBOND_SERVICE,
        cmd=["sh", "-c", "i=1; while [ $i -le %d ]; do echo \"rainbond line $i\"; i=$((i+1)); done" % n])
    assert containers.wait(cid) == 0
    got = eventlog.lines(n)
    assert got == [(cid[:12], RAINBOND_SERVICE, b"rainbond line %d" % i) for i in range(1, n + 1)]
    assert eventlog.recv(0.3) is None


def test_rainbond_from_fluent_logger_golang_with_acks(start_gateway, eventlog, go_client):  # noqa: F811
    gw = rainbond_gateway(start_gateway, eventlog)
    host, port = gw.addr
    n = 300
    p = peers.run_cmd([go_client, "-host", host, "-port", str(port), "-count", str(n), "-tag", "go0123456789",
                       "-ack=true", "-subsec=true", "-service", RAINBOND_SERVICE], "fluent-logger-golang client")
    assert p.stdout.decode() == "sent %d\n" % n
    assert eventlog.lines(n) == [("go0123456789", RAINBOND_SERVICE, b"go-%d" % i) for i in range(n)]


def test_rainbond_service_ids_it_cannot_cut_are_dropped_and_counted(start_gateway, eventlog):
    gw = rainbond_gateway(start_gateway, eventlog)
    records = [
        {"container_id": DOCKER_ID, "SERVICE_ID": RAINBOND_SERVICE, "log": "kept\nwith a newline"},
        {"container_id": DOCKER_ID, "SERVICE_ID": "web", "log": "dropped: short id"},
        {"container_id": DOCKER_ID, "log": "dropped: the default service"},
        {"container_id": "abc", "SERVICE_ID": "rbd-gateway", "log": "a system component's line, long enough"},
    ]
    with gw.connect() as c:
        c.send(b"".join(message("t", T0, r, {}) for r in records))
    assert eventlog.lines(2) == [
        (DOCKER_ID[:12], RAINBOND_SERVICE, b"kept\nwith a newline"),
        ("abc         ", "rbd-gateway", b"a system component's line, long enough"),
    ]
    assert eventlog.recv(0.3) is None
    dropped = 'fwdgate_events_dropped_total{reason="rainbond_service_id"}'
    wait_for(lambda: metric(get(gw.ready_fields["metrics"], "/metrics")[1], dropped) == 2,
             "two events counted as dropped (rainbond_service_id)")
    warned = gw.log_lines(lambda raw, obj: "rainbond_service_id" in str(raw))
    assert len(warned) == 1 and "web" in warned[0], warned


def test_rainbond_refuses_a_topic_suffix():
    p = run_fwdgate(["check-config", "--format", "rainbond", "--topic-suffix", "|"])
    assert p.returncode == 1
    assert "output.topic_suffix cannot be used with output.format = \"rainbond\"" in p.stderr.decode()

