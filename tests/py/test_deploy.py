"""deploy/ and the systemd units, checked by what reads them:

- the Kubernetes manifests, validated offline against the API schemas of two
  Kubernetes versions with kubernetes-validate (--strict: no unknown field), which must
  also reject a broken copy; the objects and the ties between them (the DaemonSet's
  probes and ports against the ConfigMap's addresses, its hostPath volumes against the
  unix socket and spool directories, the proxy's Service against the proxy's command
  line and the gateways' zmq_connect), and the ConfigMap's TOML taken by
  `fwdgate check-config`;
- the systemd units (packaging/), with `systemd-analyze verify` and the proxy's with
  `systemd-analyze security`;
- the Swarm stack file, deployed for real with `docker stack deploy` on a one-node swarm
  with the image built from the release binary: a container logging through Docker's
  fluentd driver reaches a pyzmq subscriber through the stack's gateway, every line
  exactly once, under its tenant; and an edited fwdgate.toml rolled out as
  deploy/README.md says.

The proxy's command line is run only where the binary has `fwdgate proxy`.

Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
import uuid

import pytest
import yaml

import fwd
import peers
from conftest import FWDGATE_BIN, PROBE_TENANT, REPO_ROOT, Subscriber, clean_env, require_binary, run_fwdgate
from peers import docker, docker_out, fail, run_cmd

DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
K8S_FILES = [K8S / "00-namespace.yaml", K8S / "10-configmap.yaml", K8S / "20-daemonset.yaml",
             K8S / "proxy" / "proxy.yaml"]
# Kubernetes versions whose API schemas (bundled in kubernetes-validate, pinned in
# tests/py/requirements.txt) the manifests must pass: an older release still run, and
# the newest the package holds
K8S_VERSIONS = ["1.29.0", "1.37.0"]
NAMESPACE = "fwdgate"
EXPECTED_OBJECTS = {
    ("Namespace", "fwdgate"),
    ("ConfigMap", "fwdgate"),
    ("DaemonSet", "fwdgate"),
    ("Deployment", "fwdgate-proxy"),
    ("Service", "fwdgate-proxy"),
}
STACK_FILE = DEPLOY / "swarm" / "fwdgate-stack.yml"
UNITS = REPO_ROOT / "packaging"
INSTALLED_BIN = "/usr/bin/fwdgate"  # where the .deb puts the binary the units run
RELEASE_BIN = os.environ.get("FWDGATE_RELEASE_BIN", str(REPO_ROOT / "target" / "release" / "fwdgate"))
# The proxy's documented command line (`fwdgate proxy`), the same in every deployment.
PROXY_ARGS = ["proxy", "--xsub-bind", "tcp://0.0.0.0:6363", "--xpub-bind", "tcp://0.0.0.0:6364",
              "--metrics-listen", "0.0.0.0:9101"]


# ------------------------------------------------------------------ helpers


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def k8s_objects(files=K8S_FILES):
    """{(kind, name): object} of every manifest in ``files``."""
    out = {}
    for path in files:
        for d in load_docs(path):
            key = (d["kind"], d["metadata"]["name"])
            assert key not in out, "%s %s defined twice" % key
            out[key] = d
    return out


def effective_config(toml_text, tmp_path, env=None, name="fwdgate.toml"):
    """`fwdgate check-config --config FILE` of this TOML: it must pass; returns the
    effective configuration it prints, parsed."""
    path = tmp_path / name
    path.write_text(toml_text)
    r = run_fwdgate(["check-config", "--config", str(path)], env=env)
    assert r.returncode == 0, "check-config rejected %s: %s" % (name, r.stderr.decode())
    return tomllib.loads(r.stdout.decode())


def port_of(addr: str) -> int:
    """The port of "host:port" or "tcp://host:port"."""
    return int(addr.rsplit(":", 1)[1])


def host_of(addr: str) -> str:
    return addr.split("://", 1)[-1].rsplit(":", 1)[0]


def container_port(container, name_or_number, protocol="TCP") -> int:
    for p in container.get("ports", []):
        if p.get("protocol", "TCP") == protocol and name_or_number in (p.get("name"), p["containerPort"]):
            return p["containerPort"]
    raise AssertionError("container %s has no %s port %r: %r"
                         % (container["name"], protocol, name_or_number, container.get("ports")))


def interpolate(text: str, env: dict) -> str:
    """What `docker stack deploy` does to the stack file: ${VAR}, ${VAR:-default}, $$."""
    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(3)
        value = env.get(name)
        if not value and default is not None:
            return default
        return value or ""
    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}", sub, text)


def stack_defaults():
    """The stack file as deployed with none of its variables set."""
    return yaml.safe_load(interpolate(STACK_FILE.read_text(), {}))


def drain_bound_s(cfg) -> float:
    """The longest a gateway's drain on SIGTERM takes: connections within
    shutdown.timeout_ms, then the publisher within twice that (src/server/mod.rs)."""
    return 3 * cfg["shutdown"]["timeout_ms"] / 1000


def seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    assert m, "not a duration: %r" % duration
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]


def unit_settings(path):
    """{key: [values]} of a unit file's settings."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


def has_subcommand(name) -> bool:
    require_binary()
    return run_fwdgate([name, "--help"]).returncode == 0


# ------------------------------------------------------------------ Kubernetes


def kubernetes_validate(version, files):
    return subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, *map(str, files)],
                          capture_output=True, timeout=120)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_pass_strict_schema_validation(version):
    # deploy/kubernetes/containerd/ (the agents' way in) has its own checks, in
    # test_deploy_containerd.py
    on_disk = [p for p in K8S.rglob("*.y*ml") if "containerd" not in p.relative_to(K8S).parts]
    assert_strict_validation(version, on_disk, K8S_FILES, EXPECTED_OBJECTS)


def assert_strict_validation(version, on_disk, files, expected_objects):
    """``files`` are every manifest ``on_disk``, and pass kubernetes-validate --strict
    for ``version``, each of ``expected_objects`` (kind, name) among them."""
    assert sorted(map(str, on_disk)) == sorted(map(str, files)), "manifests on disk and the validated list differ"
    r = kubernetes_validate(version, files)
    out = r.stdout.decode() + r.stderr.decode()
    assert r.returncode == 0, out
    short = ".".join(version.split(".")[:2])
    passed = set(re.findall(r"passed for resource (\w+)/([\w-]+) against version %s" % re.escape(short), out))
    assert passed == {(kind.lower(), name) for kind, name in expected_objects}, out


@pytest.mark.parametrize("mutation", ["unknown field", "wrong type"])
def test_kubernetes_validate_rejects_a_broken_daemonset(mutation, tmp_path):
    """The validation above is not vacuous: the same validator, on a copy of the
    DaemonSet with one mistake, fails and names it."""
    (ds,) = load_docs(K8S / "20-daemonset.yaml")
    bad = copy.deepcopy(ds)
    pod = bad["spec"]["template"]["spec"]
    if mutation == "unknown field":
        pod["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/readyz"
        expect = "'paht' was unexpected"
    else:
        pod["hostNetwork"] = "yes"
        expect = "'yes' is not of type 'boolean'"
    path = tmp_path / "daemonset.yaml"
    path.write_text(yaml.safe_dump(bad))
    r = kubernetes_validate(K8S_VERSIONS[-1], [path])
    out = r.stdout.decode() + r.stderr.decode()
    assert r.returncode != 0 and expect in out, out


def test_kubernetes_objects_and_their_ties(tmp_path):
    objs = k8s_objects()
    assert set(objs) == EXPECTED_OBJECTS
    for (kind, name), o in objs.items():
        if kind != "Namespace":
            assert o["metadata"].get("namespace") == NAMESPACE, (kind, name)

    cfg = effective_config(objs["ConfigMap", "fwdgate"]["data"]["fwdgate.toml"], tmp_path)
    ds = objs["DaemonSet", "fwdgate"]
    pod = ds["spec"]["template"]["spec"]
    (gw,) = pod["containers"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"  # the proxy's Service name resolves on the host network
    # host network and hostPath volumes are admitted at the "privileged" Pod Security level only
    ns_labels = objs["Namespace", NAMESPACE]["metadata"]["labels"]
    assert ns_labels["pod-security.kubernetes.io/enforce"] == "privileged"

    # the configuration is the ConfigMap, where the container's --config looks for it
    mounts = {m["name"]: m for m in gw["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert gw["args"][:1] == ["--config"] and len(gw["args"]) == 2, gw["args"]
    config_mount = [m for m in mounts.values() if volumes[m["name"]].get("configMap")]
    assert len(config_mount) == 1 and config_mount[0].get("readOnly") is True
    assert volumes[config_mount[0]["name"]]["configMap"]["name"] == "fwdgate"
    assert gw["args"][1] == config_mount[0]["mountPath"].rstrip("/") + "/fwdgate.toml"

    # probes: /healthz and /readyz on metrics.listen's port
    metrics_port = port_of(cfg["metrics"]["listen"])
    assert host_of(cfg["metrics"]["listen"]) == "0.0.0.0"  # the kubelet probes the node's address
    live, ready = gw["livenessProbe"]["httpGet"], gw["readinessProbe"]["httpGet"]
    assert live["path"] == "/healthz" and ready["path"] == "/readyz"
    assert container_port(gw, live["port"]) == container_port(gw, ready["port"]) == metrics_port
    # the declared ports are the ones the gateway uses
    (listen,) = cfg["input"]["listen"]
    assert container_port(gw, "forward") == container_port(gw, "heartbeat", "UDP") == port_of(listen) == 24224
    (pub,) = cfg["output"]["zmq_bind"]
    assert container_port(gw, "zmq-pub") == port_of(pub) == 6362

    # the unix socket and the spool are on the node, through hostPath volumes
    def host_dir(path):
        """(hostPath of the volume mounted at path's directory, mount) for a path."""
        for m in gw["volumeMounts"]:
            if os.path.dirname(path) == m["mountPath"] or path == m["mountPath"]:
                return volumes[m["name"]]["hostPath"]["path"], m
        raise AssertionError("%s is on no volume: %r" % (path, gw["volumeMounts"]))

    (sock,) = cfg["input"]["unix"]
    assert sock == "/run/fwdgate/fwdgate.sock"
    assert host_dir(sock)[0] == "/run/fwdgate"
    assert cfg["spool"]["dir"] == "/var/lib/fwdgate"
    assert host_dir(cfg["spool"]["dir"])[0] == "/var/lib/fwdgate"
    for name in ("sockets", "spool"):
        assert volumes[name]["hostPath"]["type"] == "DirectoryOrCreate"
    # the init container gives those directories to the gateway's user
    (init,) = pod["initContainers"]
    owned = {m["mountPath"] for m in init["volumeMounts"]}
    assert owned == {"/run/fwdgate", "/var/lib/fwdgate"}
    uid = gw["securityContext"]["runAsUser"]
    assert re.search(r"chown %d:%d /run/fwdgate /var/lib/fwdgate" % (uid, gw["securityContext"]["runAsGroup"]),
                     init["command"][-1]), init["command"]

    # SIGTERM's drain fits in the grace period
    assert pod["terminationGracePeriodSeconds"] > drain_bound_s(cfg)

    # confinement and resources of every container
    proxy_pod = objs["Deployment", "fwdgate-proxy"]["spec"]["template"]["spec"]
    for c in pod["containers"] + pod["initContainers"] + proxy_pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        res = c["resources"]
        assert set(res["requests"]) == set(res["limits"]) == {"cpu", "memory"}, c["name"]
    assert init["securityContext"]["capabilities"]["add"] == ["CHOWN", "FOWNER"]
    for c, pod_sc in ((gw, pod["securityContext"]), (proxy_pod["containers"][0], proxy_pod["securityContext"])):
        sc = {**pod_sc, **c["securityContext"]}
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0, c["name"]
    for p in (pod, proxy_pod):
        assert p["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert p["automountServiceAccountToken"] is False


def test_kubernetes_gateways_reach_the_proxy_service(tmp_path):
    """The ConfigMap's commented zmq_connect, put in place of zmq_bind as its comment
    says, is a configuration check-config takes, and names the proxy's Service and its
    XSUB port; the Service's ports are the ones the proxy's command line binds."""
    objs = k8s_objects()
    toml = objs["ConfigMap", "fwdgate"]["data"]["fwdgate.toml"]
    lines = toml.splitlines()
    bind = [i for i, ln in enumerate(lines) if ln.startswith("zmq_bind = ")]
    connect = [i for i, ln in enumerate(lines) if re.match(r"^# zmq_connect = ", ln)]
    assert len(bind) == 1 and len(connect) == 1, toml
    lines[connect[0]] = lines[connect[0]][2:]
    del lines[bind[0]]
    cfg = effective_config("\n".join(lines) + "\n", tmp_path)
    assert cfg["output"]["zmq_bind"] == []
    (endpoint,) = cfg["output"]["zmq_connect"]

    svc = objs["Service", "fwdgate-proxy"]
    dep = objs["Deployment", "fwdgate-proxy"]
    assert host_of(endpoint) == "%s.%s.svc" % (svc["metadata"]["name"], svc["metadata"]["namespace"])
    assert endpoint.startswith("tcp://")
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert port_of(endpoint) == ports["xsub"]["port"]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert dep["spec"]["template"]["metadata"]["labels"] == dep["spec"]["selector"]["matchLabels"]
    ds = objs["DaemonSet", "fwdgate"]
    assert ds["spec"]["selector"]["matchLabels"] != dep["spec"]["selector"]["matchLabels"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"

    (proxy,) = dep["spec"]["template"]["spec"]["containers"]
    assert proxy["args"] == PROXY_ARGS
    args = dict(zip(proxy["args"][1::2], proxy["args"][2::2]))
    for name, flag in (("xsub", "--xsub-bind"), ("xpub", "--xpub-bind"), ("metrics", "--metrics-listen")):
        assert container_port(proxy, ports[name]["targetPort"]) == port_of(args[flag]) == ports[name]["port"], name
    for probe in ("livenessProbe", "readinessProbe"):
        get = proxy[probe]["httpGet"]
        assert get["path"] == "/healthz" and container_port(proxy, get["port"]) == port_of(args["--metrics-listen"])


# ------------------------------------------------------------------ the proxy's command line


def http_status(url, timeout=2.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except (urllib.error.URLError, ConnectionError, socket.timeout) as e:
        return None, str(e)


def wait_http_ok(url, timeout, alive=lambda: None, what=""):
    """Poll ``url`` until it answers 200, for at most ``timeout`` s; ``alive()`` returns
    a reason to stop early (the process behind it died) or None."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = http_status(url)
        if last[0] == 200:
            return last[1]
        why = alive()
        if why:
            fail("%s: %s never answered 200 (%s); last answer %r" % (what, url, why, last))
        if time.monotonic() > deadline:
            fail("%s: %s did not answer 200 within %.0fs; last answer %r" % (what, url, timeout, last))
        time.sleep(0.2)


def test_proxy_command_lines_run(tmp_path):
    """The proxy's command line in the Deployment and in its systemd unit, run for real
    (addresses moved to 127.0.0.1): /healthz answers, SIGTERM stops it with status 0.
    Needs `fwdgate proxy`, which a separate change adds to the binary."""
    if not has_subcommand("proxy"):
        pytest.skip("this build of fwdgate has no `proxy` subcommand")
    (dep,) = [d for d in load_docs(K8S / "proxy" / "proxy.yaml") if d["kind"] == "Deployment"]
    unit = unit_settings(UNITS / "fwdgate-proxy.service")["ExecStart"][0].split()
    assert unit[0] == INSTALLED_BIN and unit[1:] == dep["spec"]["template"]["spec"]["containers"][0]["args"]
    args = []
    for a in unit[1:]:
        if "0.0.0.0:" in a:
            a = a.replace("0.0.0.0:%d" % port_of(a), "127.0.0.1:%d" % peers.free_port())
        args.append(a)
    metrics = args[args.index("--metrics-listen") + 1]
    errfile = tmp_path / "proxy.err"
    with open(errfile, "wb") as err:
        proc = subprocess.Popen([FWDGATE_BIN, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, env=clean_env())
    try:
        wait_http_ok("http://%s/healthz" % metrics, 20,
                     alive=lambda: None if proc.poll() is None else "exited with %r: %s"
                     % (proc.returncode, errfile.read_text()), what="fwdgate proxy")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, errfile.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# ------------------------------------------------------------------ systemd


def systemd_analyze():
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("no systemd-analyze on this machine (scripts/install-test-deps.sh installs systemd)")
    return exe


@pytest.mark.parametrize("unit", ["fwdgate.service", "fwdgate-proxy.service"])
def test_systemd_unit_verifies(unit, tmp_path):
    """`systemd-analyze verify` loads the unit as systemd would. It also checks that
    ExecStart's binary and the Documentation= man page exist: the unit is verified as a
    copy whose ExecStart runs the binary under test instead of /usr/bin/fwdgate (the only
    change), with the man page that binary generates on MANPATH. It must print nothing."""
    exe = systemd_analyze()
    require_binary()
    src = (UNITS / unit).read_text()
    assert len(re.findall(r"^ExecStart=%s " % re.escape(INSTALLED_BIN), src, re.M)) == 1, src
    copy_text = re.sub(r"^ExecStart=%s " % re.escape(INSTALLED_BIN), "ExecStart=%s " % FWDGATE_BIN, src,
                       flags=re.M)
    diff = [(a, b) for a, b in zip(src.splitlines(), copy_text.splitlines()) if a != b]
    assert len(diff) == 1 and diff[0][0].startswith("ExecStart="), diff
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    (unit_dir / unit).write_text(copy_text)
    man = tmp_path / "man" / "man1"
    man.mkdir(parents=True)
    r = run_fwdgate(["man", "--out-dir", str(man)])
    assert r.returncode == 0 and (man / "fwdgate.1").is_file(), r.stderr
    assert unit_settings(UNITS / unit)["Documentation"] == ["man:fwdgate(1)"]
    r = subprocess.run([exe, "verify", str(unit_dir / unit)], capture_output=True, timeout=60,
                       env=dict(clean_env(), MANPATH=str(tmp_path / "man")))
    assert (r.returncode, r.stderr.decode(), r.stdout.decode()) == (0, "", "")


def test_systemd_units_commands_and_stop_timeouts(tmp_path):
    """The gateway's unit runs the configuration the .deb installs (examples/fwdgate.toml,
    taken by check-config) and gives its drain time before SIGKILL; the proxy's unit runs
    the proxy's documented command line."""
    gw = unit_settings(UNITS / "fwdgate.service")
    exec_start = gw["ExecStart"][0].split()
    assert exec_start == [INSTALLED_BIN, "--config", "/etc/fwdgate/fwdgate.toml"]
    cfg = effective_config((REPO_ROOT / "examples" / "fwdgate.toml").read_text(), tmp_path)
    assert seconds(gw["TimeoutStopSec"][0] + "s") > drain_bound_s(cfg)
    proxy = unit_settings(UNITS / "fwdgate-proxy.service")
    assert proxy["ExecStart"][0].split() == [INSTALLED_BIN, *PROXY_ARGS]
    assert seconds(proxy["TimeoutStopSec"][0] + "s") >= 10
    assert proxy["DynamicUser"] == ["yes"] and proxy["CapabilityBoundingSet"] == [""]
    # both go into the .deb (cargo-deb's systemd-units in Cargo.toml)
    with open(REPO_ROOT / "Cargo.toml", "rb") as f:
        units = tomllib.load(f)["package"]["metadata"]["deb"]["systemd-units"]
    assert sorted(u.get("unit-name", "fwdgate") for u in units) == ["fwdgate", "fwdgate-proxy"]
    assert all(u["unit-scripts"] == "packaging" and u["enable"] is False and u["start"] is False for u in units)


def test_proxy_unit_sandbox_exposure():
    """`systemd-analyze security --offline` rates the proxy's sandbox at most 2.0
    ("OK"; 10 is unconfined). The proxy keeps no files and needs no capability."""
    exe = systemd_analyze()
    r = subprocess.run([exe, "security", "--offline=true", "--threshold=20", str(UNITS / "fwdgate-proxy.service")],
                       capture_output=True, timeout=60)
    out = r.stdout.decode() + r.stderr.decode()
    level = re.search(r"Overall exposure level for fwdgate-proxy\.service: (\d+\.\d)", out)
    assert level, out
    assert r.returncode == 0 and float(level.group(1)) <= 2.0, out


# ------------------------------------------------------------------ the gateway's image, in a container


@pytest.fixture(scope="module")
def gateway_image(dockerd):
    """The gateway's image, built from the release binary as the README says
    (scripts/stage-image.sh, docker/Dockerfile.offline), tagged; removed by id
    afterwards."""
    if not os.access(RELEASE_BIN, os.X_OK):
        fail("no release binary at %s (cargo build --release, or set FWDGATE_RELEASE_BIN)" % RELEASE_BIN)
    image = None
    tmp = tempfile.mkdtemp(prefix="fwdgate-stack-image-")
    stage = os.path.join(tmp, "ctx")
    tag = "local/fwdgate-deploy-test:%s" % peers.RUN_ID
    try:
        run_cmd([str(REPO_ROOT / "scripts" / "stage-image.sh"), RELEASE_BIN, stage], "stage-image", timeout=120)
        iidfile = os.path.join(tmp, "iid")
        run_cmd([peers.docker_bin(), "build", "-q", "--iidfile", iidfile, "--label", peers.TEST_LABEL, "-t", tag,
                 "-f", str(REPO_ROOT / "docker" / "Dockerfile.offline"), stage], "docker build", timeout=300)
        image = open(iidfile).read().strip()
        yield tag
    finally:
        if image:
            docker("image", "rm", "--force", image, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


class ContainerGateway:
    """A gateway in a container as the conftest Subscriber needs it: probes sent over
    the forward protocol, and its log (``log()``) for error messages."""

    def __init__(self, addr, log):
        self.addr = addr
        self.log = log
        self.client = None

    def send_probe(self, marker, tenant=PROBE_TENANT, service="zzprobe-svc"):
        if self.client is None:
            self.client = fwd.Client(self.addr)
        self.client.send(fwd.message("probe", int(time.time()),
                                     {"TENANT_ID": tenant, "SERVICE_ID": service, "log": marker}, {}))

    def stderr_text(self):
        return self.log()

    def close(self):
        if self.client is not None:
            self.client.sock.close()
            self.client = None


def container_log(cid) -> str:
    """The last of a container's log (the gateway logs on standard error)."""
    r = docker("logs", cid, check=False, timeout=30)
    return (r.stdout + r.stderr).decode("utf-8", "replace")[-4000:]


def metrics(addr) -> dict:
    status, body = http_status("http://%s/metrics" % addr)
    assert status == 200, (status, body)
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def free_forward_port():
    """A port free on 127.0.0.1 for TCP and UDP (the gateway answers heartbeats on UDP)."""
    for _ in range(50):
        port = peers.free_port()
        if peers.port_in_use(port) is None and peers.port_in_use(port, socket.SOCK_DGRAM) is None:
            return port
    fail("no port free for both TCP and UDP on 127.0.0.1 in 50 tries")


def loopback_addresses():
    """The stack's three addresses on 127.0.0.1, on ports free a moment ago."""
    forward, pub, metrics_port = free_forward_port(), peers.free_port(), peers.free_port()
    assert len({forward, pub, metrics_port}) == 3
    env = {
        "FWDGATE_LISTEN": "127.0.0.1:%d" % forward,
        "FWDGATE_ZMQ_BIND": "tcp://127.0.0.1:%d" % pub,
        "FWDGATE_METRICS_LISTEN": "127.0.0.1:%d" % metrics_port,
    }
    return env, ("127.0.0.1", forward), "tcp://127.0.0.1:%d" % pub, "127.0.0.1:%d" % metrics_port


def wait_connections_closed(metrics_addr, accepted, what, timeout=30):
    """At least ``accepted`` connections accepted and all closed but the probe client's.
    The gateway hands over a connection's requests before it counts it closed."""
    deadline = time.monotonic() + timeout
    while True:
        m = metrics(metrics_addr)
        if m["fwdgate_connections_accepted_total"] >= accepted and m["fwdgate_connections_active"] == 1:
            return m
        if time.monotonic() > deadline:
            fail("%s: connections still open after %.0f s: %r" % (what, timeout, m))
        time.sleep(0.1)


# ------------------------------------------------------------------ the DaemonSet's pod, on Docker


def docker_security_flags(sc):
    """A Kubernetes container securityContext as `docker run` flags."""
    flags = []
    if "runAsUser" in sc:
        flags += ["--user", "%d:%d" % (sc["runAsUser"], sc.get("runAsGroup", sc["runAsUser"]))]
    if sc.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    if sc.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    caps = sc.get("capabilities", {})
    flags += ["--cap-drop=%s" % c for c in caps.get("drop", [])]
    flags += ["--cap-add=%s" % c for c in caps.get("add", [])]
    return flags


@pytest.mark.release
def test_kubernetes_daemonset_pod_runs_on_docker(gateway_image, busybox_image, containers):
    """The DaemonSet's pod as Docker runs it, taken from the manifests: the init
    container's command (busybox, root with CHOWN and FOWNER only, read-only) on two
    fresh host directories standing for the hostPaths, twice (a pod's first start on a
    node, and a restart), then the gateway container with the image
    built from the release binary, the ConfigMap's file, the container's args, its
    securityContext (user 65534, read-only root, no capabilities, no privilege
    escalation) and the host network (the addresses moved to 127.0.0.1 with the
    FWDGATE_* variables). Its probes' paths answer 200 on the metrics port; a
    container logs through Docker's fluentd driver to the unix socket in the socket's
    host directory, and its lines reach a pyzmq subscriber; the spool's files are on
    the host; `docker stop` ends the gateway with status 0, and it starts again on the
    same directories, also after a SIGKILL."""
    objs = k8s_objects()
    pod = objs["DaemonSet", "fwdgate"]["spec"]["template"]["spec"]
    (init,), (gwc,) = pod["initContainers"], pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert pod["hostNetwork"] is True
    host = tempfile.mkdtemp(prefix="fwdgate-k8s-")  # short: the socket's path must fit in 108 bytes
    try:
        def mounts(container):
            flags = []
            for m in container["volumeMounts"]:
                v = volumes[m["name"]]
                if "hostPath" in v:
                    src = os.path.join(host, v["hostPath"]["path"].strip("/").replace("/", "-"))
                    os.makedirs(src, exist_ok=True)  # the kubelet's DirectoryOrCreate: root's, 0755
                elif "configMap" in v:
                    src = os.path.join(host, "configmap-" + m["name"])
                    os.makedirs(src, exist_ok=True)
                    for key, text in objs["ConfigMap", v["configMap"]["name"]]["data"].items():
                        with open(os.path.join(src, key), "w") as f:
                            f.write(text)
                else:
                    raise AssertionError("volume kind not emulated: %r" % v)
                flags += ["-v", "%s:%s%s" % (src, m["mountPath"], ":ro" if m.get("readOnly") else "")]
            return flags

        sock_dir, spool_dir = os.path.join(host, "run-fwdgate"), os.path.join(host, "var-lib-fwdgate")
        uid = gwc["securityContext"]["runAsUser"]
        # twice: on the node's first pod, and on every later one (a restart, an update),
        # when the directories are the gateway's already
        for run in ("first", "again"):
            cid = containers.run("--network", "none", *docker_security_flags(init["securityContext"]),
                                 *mounts(init), cmd=init["command"])
            status = containers.wait(cid, timeout=60, what=" (the init container, %s)" % run)
            assert status == 0, "init container (%s): exit %d: %s" % (run, status, container_log(cid))
            for d in (sock_dir, spool_dir):
                st = os.stat(d)
                assert (st.st_uid, st.st_gid) == (uid, uid), (d, st)
            assert oct(os.stat(spool_dir).st_mode & 0o777) == "0o750"

        env, forward, pub, metrics_addr = loopback_addresses()
        env_flags = [x for k, v in env.items() for x in ("-e", "%s=%s" % (k, v))]
        sc = {**pod["securityContext"], **gwc["securityContext"]}
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"  # Docker's default profile
        gw_cid = containers.run("--network", "host", *docker_security_flags(sc), *mounts(gwc), *env_flags,
                                image=gateway_image, cmd=gwc["args"])

        def gone():
            state = peers.docker_out("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", gw_cid)
            if not state.startswith("running"):
                return "gateway container %s: %s; log:\n%s" % (gw_cid[:12], state, container_log(gw_cid))
            return None

        for probe in ("livenessProbe", "readinessProbe"):
            wait_http_ok("http://%s%s" % (metrics_addr, gwc[probe]["httpGet"]["path"]), 60, alive=gone,
                         what="the DaemonSet's gateway")
        sock = os.path.join(sock_dir, "fwdgate.sock")
        assert os.path.exists(sock), os.listdir(sock_dir)
        st = os.stat(sock)
        assert (st.st_uid, oct(st.st_mode & 0o777)) == (uid, "0o660")

        gw = ContainerGateway(forward, lambda: container_log(gw_cid))
        tenant = "k8s%s" % uuid.uuid4().hex[:8]
        sub = Subscriber(pub, [tenant.encode()], PROBE_TENANT.encode())
        try:
            sub.wait_ready(gw)
            n = 100
            logger = containers.run(
                "--network", "none", "--log-driver=fluentd", "--log-opt", "fluentd-address=unix://" + sock,
                "--log-opt", "env=TENANT_ID,SERVICE_ID", "-e", "TENANT_ID=" + tenant, "-e", "SERVICE_ID=web",
                cmd=["sh", "-c", "i=1; while [ $i -le %d ]; do echo line-$i; i=$((i+1)); done" % n])
            assert containers.wait(logger, timeout=60, what=" (logging to the unix socket)") == 0
            msgs = peers.recv_n(sub, n, 60, "the DaemonSet's gateway", "lines")
            prefix = logger[:12].encode() + b": "
            assert msgs == [[tenant.encode(), b"web", prefix + b"line-%d" % i] for i in range(1, n + 1)]
            wait_connections_closed(metrics_addr, 2, "the DaemonSet's gateway, after the logging container")
            assert sub.sync(gw) == []
        finally:
            sub.close()
            gw.close()
        spool = sorted(os.listdir(spool_dir))
        assert "lock" in spool and any(f.endswith(".seg") for f in spool), spool
        assert all(os.stat(os.path.join(spool_dir, f)).st_uid == uid for f in spool)
        peers.docker("stop", "--time", str(pod["terminationGracePeriodSeconds"]), gw_cid, timeout=120)
        assert peers.docker_out("inspect", "--format", "{{.State.ExitCode}}", gw_cid) == "0"
        assert not os.path.exists(sock)  # a clean stop removes the socket file
        # the pod restarted, after that stop and after a SIGKILL (which leaves the socket
        # file and the spool's lock file behind): the gateway takes its directories over
        ready = "http://%s%s" % (metrics_addr, gwc["readinessProbe"]["httpGet"]["path"])
        peers.docker("start", gw_cid)
        wait_http_ok(ready, 60, alive=gone, what="the DaemonSet's gateway, restarted")
        peers.docker("kill", gw_cid)
        assert containers.wait(gw_cid, timeout=30, what=" (the gateway, SIGKILLed)") == 128 + signal.SIGKILL
        assert os.path.exists(sock)
        peers.docker("start", gw_cid)
        wait_http_ok(ready, 60, alive=gone, what="the DaemonSet's gateway, restarted after SIGKILL")
        peers.docker("stop", "--time", str(pod["terminationGracePeriodSeconds"]), gw_cid, timeout=120)
        assert peers.docker_out("inspect", "--format", "{{.State.ExitCode}}", gw_cid) == "0"
    finally:
        containers.remove_all()
        shutil.rmtree(host, ignore_errors=True)


# ------------------------------------------------------------------ Swarm: the stack file


def test_swarm_stack_file(tmp_path):
    """The stack file with its defaults: a global service on the host network, the
    configuration as a swarm config where --config reads it, the spool on a named
    volume at spool.dir, environment variables the gateway takes, a grace period above
    the drain, restarts; and no healthcheck, which the FROM scratch image could not run."""
    stack = stack_defaults()
    assert stack["version"] == "3.8"
    (name,) = stack["services"]
    svc = stack["services"][name]
    assert svc["deploy"]["mode"] == "global"
    assert svc["deploy"]["restart_policy"]["condition"] == "any"
    assert svc["deploy"]["update_config"]["order"] == "stop-first"
    assert svc["networks"] == ["hostnet"] and stack["networks"]["hostnet"] == {"external": True, "name": "host"}
    assert "healthcheck" not in svc
    assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
    dockerfile = (REPO_ROOT / "docker" / "Dockerfile.offline").read_text()
    assert "FROM scratch" in dockerfile and "RUN " not in dockerfile

    (cfg_ref,) = svc["configs"]
    assert svc["command"] == ["--config", cfg_ref["target"]]
    cfg_file = STACK_FILE.parent / stack["configs"][cfg_ref["source"]]["file"]
    env = svc["environment"]
    assert set(env) == {"FWDGATE_LISTEN", "FWDGATE_ZMQ_BIND", "FWDGATE_METRICS_LISTEN"}
    cfg = effective_config(cfg_file.read_text(), tmp_path, env=env)
    assert cfg["input"]["listen"] == ["0.0.0.0:24224"]
    assert cfg["output"]["zmq_bind"] == ["tcp://0.0.0.0:6362"]
    assert cfg["metrics"]["listen"] == "0.0.0.0:9880"
    (vol,) = svc["volumes"]
    assert vol["type"] == "volume" and vol["source"] in stack["volumes"] and vol["target"] == cfg["spool"]["dir"]
    assert seconds(svc["stop_grace_period"]) > drain_bound_s(cfg)


# ------------------------------------------------------------------ Swarm: deployed


def stack_objects(kind, stack):
    """Ids of the stack's objects of one kind (service, config, volume, network, and
    containers of its tasks), by the label `docker stack deploy` puts on them."""
    label = "label=com.docker.stack.namespace=%s" % stack
    if kind == "container":
        return docker_out("ps", "-aq", "--no-trunc", "--filter", label).split()
    return docker_out(kind, "ls", "-q", "--filter", label).split()


@pytest.fixture
def stack(swarm, gateway_image):
    """Deploys deploy/swarm/fwdgate-stack.yml (or a copy) under a new name:
    ``stack.deploy(env, stack_file=...)``; at teardown, pass or fail: `docker stack rm`,
    a bounded wait until its task containers are gone, then its volume removed by id;
    nothing of it may be left."""
    s = Stack(gateway_image)
    yield s
    s.remove()


class Stack:
    def __init__(self, image):
        self.image = image
        self.name = "fwdgatetest%s%s" % (peers.RUN_ID, uuid.uuid4().hex[:6])
        self.deployed = False
        self.sid = None

    def deploy(self, env, stack_file=STACK_FILE, config_version=1):
        env = dict(os.environ, FWDGATE_IMAGE=self.image,
                   FWDGATE_CONFIG_VERSION="%s-%d" % (self.name, config_version), **env)
        self.deployed = True
        run_cmd([peers.docker_bin(), "stack", "deploy", "--resolve-image", "never", "-c", str(stack_file), self.name],
                "docker stack deploy", timeout=120, env=env)
        (self.sid,) = stack_objects("service", self.name)
        return self.sid

    def log(self):
        r = docker("service", "logs", "--raw", "--no-trunc", self.sid, check=False, timeout=30)
        return (r.stdout + r.stderr).decode("utf-8", "replace")[-4000:]

    def trouble(self):
        """Why the service's task cannot be expected to come up, or None."""
        states = docker_out("service", "ps", "--no-trunc", "--format", "{{.DesiredState}} {{.CurrentState}} {{.Error}}",
                            self.sid)
        bad = [st for st in states.splitlines() if st.split()[1] in ("Failed", "Rejected")]
        if bad:
            return "task states %r; service log:\n%s" % (bad, self.log())
        return None

    def running_task(self, timeout=30):
        """(task id, container id) of the one task meant to run, once the swarm's
        manager has it running. The node's agent reports a task's state and container
        to the manager a moment after the container starts, so the gateway may already
        answer when the task still shows neither."""
        deadline = time.monotonic() + timeout
        while True:
            tasks = docker_out("service", "ps", "-q", "--no-trunc", "--filter", "desired-state=running",
                               self.sid).split()
            if len(tasks) == 1:
                status = json.loads(docker_out("inspect", "--type", "task", "--format", "{{json .Status}}", tasks[0]))
                cid = (status.get("ContainerStatus") or {}).get("ContainerID")
                if status.get("State") == "running" and cid:
                    return tasks[0], cid
            else:
                status = None
            if time.monotonic() > deadline:
                fail("stack %s: no single running task with a container within %.0f s: tasks %r, status %r"
                     % (self.name, timeout, tasks, status))
            time.sleep(0.2)

    def wait_ready(self, metrics_addr, timeout=120):
        """The gateway is up when its readiness endpoint says so (the image has no
        healthcheck)."""
        wait_http_ok("http://%s/readyz" % metrics_addr, timeout, alive=self.trouble, what="stack %s" % self.name)
        return self.running_task()

    def wait_updated(self, timeout=120):
        """After a second deploy: the service's update (stop-first) has completed."""
        deadline = time.monotonic() + timeout
        while True:
            state = docker_out("service", "inspect", "--format", "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
                               self.sid)
            if state == "completed":
                return
            if state in ("paused", "rollback_started", "rollback_paused", "rollback_completed"):
                fail("stack %s: the update ended %s; service log:\n%s" % (self.name, state, self.log()))
            if time.monotonic() > deadline:
                fail("stack %s: the update not completed within %.0f s (state %r)" % (self.name, timeout, state))
            time.sleep(0.2)

    def remove(self):
        if not self.deployed:
            return
        docker("stack", "rm", self.name, check=False, timeout=120)
        deadline = time.monotonic() + 90
        while stack_objects("container", self.name) or stack_objects("service", self.name):
            if time.monotonic() > deadline:
                left = stack_objects("container", self.name)
                docker("rm", "-f", "-v", *left, check=False)
                fail("peer Docker swarm: the task containers of stack %s were not gone within 90 s after "
                     "`docker stack rm`: %r" % (self.name, left))
            time.sleep(0.2)
        for vid in stack_objects("volume", self.name):
            docker("volume", "rm", vid, check=False)
        left = {k: stack_objects(k, self.name) for k in ("service", "config", "volume", "network", "container")}
        assert left == {k: [] for k in left}, "left of stack %s: %r" % (self.name, left)


@pytest.mark.release
def test_swarm_stack_deployed_carries_a_containers_lines(stack, busybox_image, containers):
    env, forward, pub, metrics_addr = loopback_addresses()
    sid = stack.deploy(env)
    assert docker_out("service", "inspect", "--format", "{{.Spec.Mode.Global}}", sid) == "{}"
    _, cid = stack.wait_ready(metrics_addr)
    assert docker_out("inspect", "--format", "{{.HostConfig.NetworkMode}}", cid) == "host"
    mounts = docker_out("inspect", "--format", "{{range .Mounts}}{{.Type}} {{.Name}} {{.Destination}};{{end}}", cid)
    assert mounts == "volume %s_spool /var/lib/fwdgate;" % stack.name
    confined = docker_out("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}} {{.HostConfig.CapDrop}} {{.Config.User}}",
                          cid)
    assert confined == "true [ALL] 65534:65534"

    gw = ContainerGateway(forward, stack.log)
    tenant = "deploy%s" % uuid.uuid4().hex[:8]
    sub = Subscriber(pub, [tenant.encode()], PROBE_TENANT.encode())
    try:
        sub.wait_ready(gw)
        n = 200
        logger = containers.run(
            "--network", "none", "--log-driver=fluentd",
            "--log-opt", "fluentd-address=%s:%d" % forward,
            "--log-opt", "env=TENANT_ID,SERVICE_ID", "-e", "TENANT_ID=" + tenant, "-e", "SERVICE_ID=web",
            cmd=["sh", "-c", "i=1; while [ $i -le %d ]; do echo line-$i; i=$((i+1)); done" % n])
        assert containers.wait(logger, timeout=60, what=" (logging to the stack)") == 0
        msgs = peers.recv_n(sub, n, 60, "stack %s" % stack.name, "lines")
        prefix = logger[:12].encode() + b": "
        assert msgs == [[tenant.encode(), b"web", prefix + b"line-%d" % i] for i in range(1, n + 1)]
        # nothing more: the container's connection is closed, then a probe overtakes nothing
        wait_connections_closed(metrics_addr, 2, "stack %s, after the logging container" % stack.name)
        assert sub.sync(gw) == []
        m = metrics(metrics_addr)
        assert m['fwdgate_tenant_events_total{tenant="%s"}' % tenant] == n
        # every request went through the spool on the volume
        assert m["fwdgate_spool_bytes"] > 0 and m["fwdgate_spool_write_errors_total"] == 0, m
    finally:
        sub.close()
        gw.close()


@pytest.mark.release
def test_swarm_stack_takes_an_edited_config(stack, tmp_path):
    """What deploy/README.md says to do after editing fwdgate.toml: deploy again with a
    new FWDGATE_CONFIG_VERSION. The gateway is replaced (stop first: the new one needs
    the old one's ports and spool) and runs the edited file."""
    env, forward, pub, metrics_addr = loopback_addresses()
    copy_dir = tmp_path / "swarm"
    shutil.copytree(STACK_FILE.parent, copy_dir)
    stack_file = copy_dir / STACK_FILE.name
    stack.deploy(env, stack_file=stack_file, config_version=1)
    old_task, _ = stack.wait_ready(metrics_addr)

    tenant = "edited%s" % uuid.uuid4().hex[:8]
    toml = (copy_dir / "fwdgate.toml").read_text()
    assert "\n[route]\n" in toml
    (copy_dir / "fwdgate.toml").write_text(toml.replace("\n[route]\n", '\n[route]\ndefault_tenant = "%s"\n' % tenant))
    stack.deploy(env, stack_file=stack_file, config_version=2)
    stack.wait_updated()
    new_task, cid = stack.wait_ready(metrics_addr)
    assert new_task != old_task
    configs = docker_out("inspect", "--type", "task", "--format",
                         "{{range .Spec.ContainerSpec.Configs}}{{.ConfigName}}{{end}}", new_task)
    assert configs == "%s-2" % ("fwdgate_toml_" + stack.name)
    mounts = docker_out("inspect", "--format", "{{range .Mounts}}{{.Name}};{{end}}", cid)
    assert mounts == "%s_spool;" % stack.name

    # a record without TENANT_ID goes to the edited default tenant
    gw = ContainerGateway(forward, stack.log)
    sub = Subscriber(pub, [tenant.encode()], PROBE_TENANT.encode())
    client = None
    try:
        sub.wait_ready(gw)
        client = fwd.Client(forward)
        client.send(fwd.message("edited", int(time.time()), {"SERVICE_ID": "web", "log": "after-the-edit"}, {}))
        client.sock.close()
        client = None
        wait_connections_closed(metrics_addr, 2, "stack %s, after the edit" % stack.name)
        assert sub.sync(gw) == [[tenant.encode(), b"web", b"edited: after-the-edit"]]
    finally:
        if client is not None:
            client.sock.close()
        sub.close()
        gw.close()
