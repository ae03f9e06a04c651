"""deploy/kubernetes/containerd/: the second way into Kubernetes, for containerd nodes
(no Docker daemon, so no log driver): a node agent (Fluent Bit, or Fluentd) tails the
kubelet's /var/log/containers/*.log and forwards to the node's gateway. Checked offline,
as test_deploy.py checks deploy/kubernetes/:

- every manifest against the API schemas of K8S_VERSIONS with kubernetes-validate
  --strict (and the validator rejects a broken copy);
- the objects against each other: the agents' forward output (parsed from the Fluent Bit
  and Fluentd configuration text in their ConfigMaps) against the gateway's input.listen,
  host network on every DaemonSet, the ConfigMap keys each container reads, the hostPath
  volumes under the agents' state files, the tail's tag against the metadata filters'
  tag prefixes, the RBAC the filters need and the service accounts the DaemonSets run as;
- the gateway's fwdgate.toml with `fwdgate check-config`: its effective configuration
  routes on the nested `kubernetes` keys the agents write, and the commented tenant-label
  alternative is a configuration it takes;
- deploy/README.md names every file and applies only files that exist.

No cluster, no Fluent Bit and no Fluentd run here: PROTOCOL.md ("Records after Kubernetes
metadata") has the records they send.
"""

from __future__ import annotations

import copy
import fnmatch
import os
import re
import shlex

import pytest
import yaml

from conftest import REPO_ROOT, run_fwdgate
from test_deploy import (K8S, K8S_VERSIONS, NAMESPACE, assert_strict_validation, container_port, drain_bound_s, effective_config,
                         host_of, k8s_objects, kubernetes_validate, load_docs, port_of)

CONTAINERD = K8S / "containerd"
FILES = [CONTAINERD / "10-configmap.yaml", CONTAINERD / "20-daemonset.yaml", CONTAINERD / "30-fluent-bit.yaml",
         CONTAINERD / "31-fluentd.yaml"]
GATEWAY = "fwdgate-containerd"
FLUENT_BIT = "fwdgate-fluent-bit"
FLUENTD = "fwdgate-fluentd"
EXPECTED_OBJECTS = {
    ("ConfigMap", GATEWAY),
    ("DaemonSet", GATEWAY),
    *((kind, agent) for agent in (FLUENT_BIT, FLUENTD)
      for kind in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet")),
}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "Namespace"}

# The routing the agents' records need (PROTOCOL.md, "Records after Kubernetes metadata").
TENANT_KEYS = ["$.kubernetes.namespace_name"]
SERVICE_KEYS = ["$['kubernetes']['labels']['app.kubernetes.io/name']", "$.kubernetes.container_name"]
CONTAINER_ID_KEY = "$.kubernetes.docker_id"
LINE_KEYS = ["log", "message"]
TENANT_LABEL_KEY = "$['kubernetes']['labels']['tenant.example.com/id']"

# A kubelet log file name, /var/log/containers/<pod>_<namespace>_<container>-<id>.log, and
# containerd's CRI lines in it.
CONTAINER_ID = "3f2a9c81b0d4" + "7e" * 26
APP_LOG = "/var/log/containers/web-7d4b9c-x2x9k_shop_nginx-%s.log" % CONTAINER_ID
CRI_LINES = {
    "2024-05-01T10:00:00.123456789Z stdout F hello world": ("stdout", "F", "hello world"),
    "2024-05-01T10:00:00.1Z stderr P first piece of a long line": ("stderr", "P", "first piece of a long line"),
    "2024-05-01T12:00:00.123456789+02:00 stdout F ": ("stdout", "F", ""),
}
# fluent-plugin-kubernetes_metadata_filter's default tag_to_kubernetes_name_regexp, in
# Python's spelling of named groups.
KUBERNETES_METADATA_TAG_RE = (r"var\.log\.containers\.(?P<pod_name>[a-z0-9]([-a-z0-9]*[a-z0-9])?"
                              r"(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)_(?P<namespace>[^_]+)_"
                              r"(?P<container_name>.+)-(?P<docker_id>[a-z0-9]{64})\.log$")


# ------------------------------------------------------------------ helpers


def objects():
    """{(kind, name): object} of every manifest in containerd/."""
    return k8s_objects(FILES)


def pod_of(ds):
    return ds["spec"]["template"]["spec"]


def only_container(ds):
    (c,) = pod_of(ds)["containers"]
    return c


def configmap_files(objs, ds, container):
    """{path in the container: (ConfigMap name, key)} of the ConfigMap volumes the
    container mounts; every key named (items) must be in its ConfigMap."""
    volumes = {v["name"]: v for v in pod_of(ds)["volumes"]}
    out = {}
    for m in container.get("volumeMounts", []):
        cm = volumes[m["name"]].get("configMap")
        if cm is None:
            continue
        assert m.get("readOnly") is True, (container["name"], m)
        assert ("ConfigMap", cm["name"]) in objs, "%s mounts the missing ConfigMap %s" % (container["name"], cm["name"])
        data = objs["ConfigMap", cm["name"]]["data"]
        items = cm.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            assert item["key"] in data, "ConfigMap %s has no key %s" % (cm["name"], item["key"])
            out[os.path.join(m["mountPath"], item["path"])] = (cm["name"], item["key"])
    return out


def host_path_under(ds, container, path):
    """The node directory behind `path` in the container: the hostPath volume of the
    deepest mount holding it, written to (not read-only)."""
    volumes = {v["name"]: v for v in pod_of(ds)["volumes"]}
    best = None
    for m in container.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best["mountPath"].rstrip("/")):
                best = m
    assert best is not None, "%s is on no volume of %s" % (path, container["name"])
    hp = volumes[best["name"]].get("hostPath")
    assert hp is not None, "%s is on %s, not a hostPath" % (path, best["name"])
    assert not best.get("readOnly"), "%s is on a read-only mount" % path
    return hp["path"]


def reads_host_dir(ds, container, path):
    """`path` (a node path) is visible at the same path in the container, from a
    hostPath volume."""
    volumes = {v["name"]: v for v in pod_of(ds)["volumes"]}
    for m in container.get("volumeMounts", []):
        hp = volumes[m["name"]].get("hostPath")
        if hp and m["mountPath"] == hp["path"] and (path + "/").startswith(hp["path"].rstrip("/") + "/"):
            return True
    return False


def gateway_config(objs, tmp_path):
    return effective_config(objs["ConfigMap", GATEWAY]["data"]["fwdgate.toml"], tmp_path)


def own_log_file(ds, container):
    """The kubelet's file for the agent's own container (pod names are the DaemonSet's
    name and a suffix)."""
    return "/var/log/containers/%s-x7k2p_%s_%s-%s.log" % (
        ds["metadata"]["name"], ds["metadata"]["namespace"], container["name"], "ab" * 32)


def tail_tag(tag_pattern, path):
    """The tag both agents' tail gives a file: `*` in the tag is the path with "/" as
    "." (Fluent Bit's tail and Fluentd's in_tail)."""
    assert tag_pattern.count("*") == 1, tag_pattern
    return tag_pattern.replace("*", path.strip("/").replace("/", "."))


def truthy(v):
    return str(v).strip().lower() in ("true", "on", "yes", "1")


def size_bytes(v):
    """Fluentd's sizes: "8MB", "8m", "256k" (multiples of 1024)."""
    m = re.fullmatch(r"(\d+)\s*([kmgt]?)b?", v.strip().lower())
    assert m, "not a size: %r" % v
    return int(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " ")


# --- Fluent Bit's classic configuration


def fluent_bit_sections(text):
    """[(section name, {lower-case key: value})] of a classic-format configuration."""
    sections = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"\[([A-Za-z_]+)\]", line)
        if m:
            sections.append((m.group(1).upper(), {}))
            continue
        assert sections, "a setting before any section: %r" % raw
        key, _, value = line.partition(" ")
        assert not line.startswith("@"), "directives are not expected here: %r" % raw
        settings = sections[-1][1]
        assert key.lower() not in settings, "%s set twice in [%s]" % (key, sections[-1][0])
        settings[key.lower()] = value.strip()
    return sections


def fluent_bit_plugin(sections, section, name):
    found = [s for sec, s in sections if sec == section and s.get("name", "").lower() == name]
    assert len(found) == 1, "expected one [%s] %s, got %d" % (section, name, len(found))
    return found[0]


# --- Fluentd's configuration


class Directive:
    def __init__(self, name, arg):
        self.name, self.arg = name, arg
        self.params = {}
        self.children = []

    def find(self, name, arg=None, **params):
        return [c for c in self.children if c.name == name and (arg is None or c.arg == arg)
                and all(c.params.get(k) == v for k, v in params.items())]

    def one(self, name, arg=None, **params):
        found = self.find(name, arg, **params)
        assert len(found) == 1, "expected one <%s %s> %r in <%s %s>, got %d" % (
            name, arg or "", params, self.name, self.arg, len(found))
        return found[0]


def fluentd_tree(text):
    """Fluentd's configuration as nested directives: <name arg> ... </name>, with
    `key value` parameters (a key alone has the value "")."""
    root = Directive("ROOT", "")
    stack = [root]
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"<(/?)([A-Za-z_@]+)\s*([^>]*)>", line)
        if m and m.group(1):
            assert stack[-1].name == m.group(2), "</%s> closes <%s>" % (m.group(2), stack[-1].name)
            stack.pop()
        elif m:
            d = Directive(m.group(2), m.group(3).strip())
            stack[-1].children.append(d)
            stack.append(d)
        else:
            key, _, value = line.partition(" ")
            assert key not in stack[-1].params, "%s set twice in <%s>" % (key, stack[-1].name)
            stack[-1].params[key] = value.strip()
    assert stack == [root], "unclosed <%s>" % stack[-1].name
    return root


def ruby_regexp(expression):
    """A Fluentd `/.../` regexp in Python's spelling."""
    assert expression.startswith("/") and expression.endswith("/"), expression
    return re.compile(expression[1:-1].replace("(?<", "(?P<"))


# ------------------------------------------------------------------ schemas


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_containerd_manifests_pass_strict_schema_validation(version):
    assert_strict_validation(version, list(CONTAINERD.rglob("*.y*ml")), FILES, EXPECTED_OBJECTS)


def test_containerd_validation_rejects_a_broken_agent(tmp_path):
    """The validation above is not vacuous for these files either: the agent's DaemonSet
    with a misspelt field fails and is named."""
    docs = load_docs(CONTAINERD / "30-fluent-bit.yaml")
    bad = copy.deepcopy(docs)
    (ds,) = [d for d in bad if d["kind"] == "DaemonSet"]
    pod = pod_of(ds)
    pod["hostNetwrk"] = pod.pop("hostNetwork")
    path = tmp_path / "fluent-bit.yaml"
    path.write_text(yaml.safe_dump_all(bad))
    r = kubernetes_validate(K8S_VERSIONS[-1], [path])
    out = r.stdout.decode() + r.stderr.decode()
    assert r.returncode != 0 and "'hostNetwrk' was unexpected" in out, out


# ------------------------------------------------------------------ the objects


def test_containerd_objects_namespaces_and_confinement():
    objs = objects()
    assert set(objs) == EXPECTED_OBJECTS
    for (kind, name), o in objs.items():
        if kind in CLUSTER_SCOPED:
            assert "namespace" not in o["metadata"], (kind, name)
        else:
            assert o["metadata"].get("namespace") == NAMESPACE, (kind, name)
    # the namespace is the one ../00-namespace.yaml creates
    (ns,) = load_docs(K8S / "00-namespace.yaml")
    assert ns["metadata"]["name"] == NAMESPACE

    # the Docker way's objects and these can be read (and applied) side by side: other
    # names, and DaemonSets that do not select each other's pods
    (docker_ds,) = load_docs(K8S / "20-daemonset.yaml")
    (docker_cm,) = load_docs(K8S / "10-configmap.yaml")
    assert GATEWAY not in (docker_ds["metadata"]["name"], docker_cm["metadata"]["name"])
    selectors = [docker_ds["spec"]["selector"]["matchLabels"]]
    for name in (GATEWAY, FLUENT_BIT, FLUENTD):
        ds = objs["DaemonSet", name]
        sel = ds["spec"]["selector"]["matchLabels"]
        assert ds["spec"]["template"]["metadata"]["labels"] == sel, name
        assert sel not in selectors, "%s selects the same pods as another DaemonSet" % name
        selectors.append(sel)

    for name in (GATEWAY, FLUENT_BIT, FLUENTD):
        ds = objs["DaemonSet", name]
        pod = pod_of(ds)
        # host network: 127.0.0.1 in the agents' pods is the node's, where the gateway
        # listens
        assert pod["hostNetwork"] is True, name
        assert pod["dnsPolicy"] == "ClusterFirstWithHostNet", name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        # one pod per node at a time: the new one needs the old one's ports and files
        ru = ds["spec"]["updateStrategy"]["rollingUpdate"]
        assert ru["maxSurge"] == 0, name
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            res = c["resources"]
            assert set(res["requests"]) == set(res["limits"]) == {"cpu", "memory"}, c["name"]
            assert "livenessProbe" in c or c in pod.get("initContainers", []), c["name"]


def test_containerd_gateway_configuration(tmp_path):
    """The gateway's fwdgate.toml passes check-config, and its effective configuration
    routes on the nested keys Fluent Bit's kubernetes filter and Fluentd's
    kubernetes_metadata write."""
    cfg = gateway_config(objects(), tmp_path)
    route = cfg["route"]
    assert route["tenant_keys"] == TENANT_KEYS
    assert route["service_keys"] == SERVICE_KEYS
    assert route["container_id_key"] == CONTAINER_ID_KEY
    assert route["line_keys"] == LINE_KEYS
    # the agents connect over TCP on the node's loopback; no unix socket
    assert cfg["input"]["unix"] == []
    (listen,) = cfg["input"]["listen"]
    assert host_of(listen) in ("0.0.0.0", "127.0.0.1") and port_of(listen) == 24224
    assert cfg["spool"]["dir"] == "/var/lib/fwdgate"
    assert cfg["output"]["zmq_bind"] == ["tcp://0.0.0.0:6362"]


def test_containerd_gateway_tenant_label_alternative(tmp_path):
    """The commented tenant_keys (a tenant label, then the namespace), put in place of the
    active one as its comment says, is a configuration check-config takes; and
    check-config does check the paths: a broken one is refused."""
    toml = objects()["ConfigMap", GATEWAY]["data"]["fwdgate.toml"]
    lines = toml.splitlines()
    active = [i for i, ln in enumerate(lines) if ln.startswith("tenant_keys = ")]
    commented = [i for i, ln in enumerate(lines) if ln.startswith("# tenant_keys = ")]
    assert len(active) == 1 and len(commented) == 1, toml
    assert commented[0] < active[0], "the alternative comes before the active line"
    alt = list(lines)
    alt[active[0]] = alt[commented[0]][2:]
    del alt[commented[0]]
    cfg = effective_config("\n".join(alt) + "\n", tmp_path, name="label.toml")
    assert cfg["route"]["tenant_keys"] == [TENANT_LABEL_KEY, *TENANT_KEYS]

    bad = list(lines)
    bad[active[0]] = 'tenant_keys = ["$.kubernetes."]'
    broken = "\n".join(bad) + "\n"
    path = tmp_path / "broken.toml"
    path.write_text(broken)
    r = run_fwdgate(["check-config", "--config", str(path)])
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert b"route.tenant_keys" in r.stderr, r.stderr


def test_containerd_gateway_daemonset_ties(tmp_path):
    objs = objects()
    cfg = gateway_config(objs, tmp_path)
    ds = objs["DaemonSet", GATEWAY]
    pod = pod_of(ds)
    gw = only_container(ds)

    # the configuration is this directory's ConfigMap, where --config looks for it
    files = configmap_files(objs, ds, gw)
    assert gw["args"][:1] == ["--config"] and len(gw["args"]) == 2, gw["args"]
    assert files.get(gw["args"][1]) == (GATEWAY, "fwdgate.toml"), (gw["args"], files)

    # ports and probes against the addresses in the ConfigMap
    (listen,) = cfg["input"]["listen"]
    assert container_port(gw, "forward") == container_port(gw, "heartbeat", "UDP") == port_of(listen)
    (pub,) = cfg["output"]["zmq_bind"]
    assert container_port(gw, "zmq-pub") == port_of(pub)
    metrics_port = port_of(cfg["metrics"]["listen"])
    assert host_of(cfg["metrics"]["listen"]) == "0.0.0.0"  # the kubelet probes the node's address
    live, ready = gw["livenessProbe"]["httpGet"], gw["readinessProbe"]["httpGet"]
    assert live["path"] == "/healthz" and ready["path"] == "/readyz"
    assert container_port(gw, live["port"]) == container_port(gw, ready["port"]) == metrics_port

    # the spool on the node; no unix socket directory
    assert host_path_under(ds, gw, cfg["spool"]["dir"]) == cfg["spool"]["dir"]
    assert [v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v] == [cfg["spool"]["dir"]]
    (init,) = pod["initContainers"]
    assert {m["mountPath"] for m in init["volumeMounts"]} == {cfg["spool"]["dir"]}
    sc = gw["securityContext"]
    assert "chown %d:%d %s" % (sc["runAsUser"], sc["runAsGroup"], cfg["spool"]["dir"]) in init["command"][-1]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    assert pod["terminationGracePeriodSeconds"] > drain_bound_s(cfg)


# ------------------------------------------------------------------ the agents


def test_fluent_bit_configuration_and_its_ties(tmp_path):
    objs = objects()
    cfg = gateway_config(objs, tmp_path)
    ds = objs["DaemonSet", FLUENT_BIT]
    c = only_container(ds)

    # the configuration file Fluent Bit is started with is a key of its ConfigMap
    files = configmap_files(objs, ds, c)
    (config_arg,) = [a for a in c["args"] if a.startswith("--config=")]
    assert files.get(config_arg.split("=", 1)[1]) == (FLUENT_BIT, "fluent-bit.conf"), (c["args"], files)
    sections = fluent_bit_sections(objs["ConfigMap", FLUENT_BIT]["data"]["fluent-bit.conf"])
    (service,) = [s for sec, s in sections if sec == "SERVICE"]

    # tail: the kubelet's files in containerd's CRI format, on disk, offsets on the node
    tail = fluent_bit_plugin(sections, "INPUT", "tail")
    assert tail["path"] == "/var/log/containers/*.log"
    assert tail["multiline.parser"] == "cri"
    assert tail["tag"] == "kube.*"
    assert tail["storage.type"] == "filesystem"
    assert fnmatch.fnmatch(APP_LOG, tail["path"])
    assert reads_host_dir(ds, c, os.path.dirname(tail["path"])), "the container does not see the node's log files"
    assert reads_host_dir(ds, c, "/var/log/pods"), "the links in /var/log/containers point into /var/log/pods"
    host_path_under(ds, c, tail["db"])
    # its own log is left out (each line it fails to send would log a warning to send),
    # other containers' are not
    assert fnmatch.fnmatch(own_log_file(ds, c), tail["exclude_path"])
    assert not fnmatch.fnmatch(APP_LOG, tail["exclude_path"])
    assert not fnmatch.fnmatch(own_log_file(objs["DaemonSet", GATEWAY], only_container(objs["DaemonSet", GATEWAY])),
                               tail["exclude_path"])

    # the kubernetes filter finds pod, namespace and container in the tail's tags
    kube = fluent_bit_plugin(sections, "FILTER", "kubernetes")
    tag = tail_tag(tail["tag"], APP_LOG)
    assert fnmatch.fnmatchcase(tag, kube["match"])
    assert tag.startswith(kube["kube_tag_prefix"])
    assert tag[len(kube["kube_tag_prefix"]):] == os.path.basename(APP_LOG)
    assert not truthy(kube["merge_log"])  # the line stays under `log`
    assert truthy(kube["labels"])  # route.service_keys reads kubernetes.labels

    # forward: to this node's gateway, acked, retried without end
    fwd = fluent_bit_plugin(sections, "OUTPUT", "forward")
    assert fnmatch.fnmatchcase(tag, fwd["match"])
    (listen,) = cfg["input"]["listen"]
    assert host_of(listen) in ("0.0.0.0", "127.0.0.1")
    assert fwd["host"] == "127.0.0.1" and int(fwd["port"]) == port_of(listen)
    assert truthy(fwd["require_ack_response"])
    assert fwd["retry_limit"].lower() in ("false", "no_limits")

    # the chunks not yet acked are on the node's disk
    host_path_under(ds, c, service["storage.path"].rstrip("/"))
    assert "storage.backlog.mem_limit" in service
    # the liveness probe asks Fluent Bit's HTTP server
    assert truthy(service["http_server"]) and service["http_listen"] == "0.0.0.0"
    assert container_port(c, c["livenessProbe"]["httpGet"]["port"]) == int(service["http_port"])
    assert int(service["grace"]) < pod_of(ds)["terminationGracePeriodSeconds"]


def test_fluentd_configuration_and_its_ties(tmp_path):
    objs = objects()
    cfg = gateway_config(objs, tmp_path)
    ds = objs["DaemonSet", FLUENTD]
    c = only_container(ds)

    # the image's entrypoint runs fluentd -c /fluentd/etc/$FLUENTD_CONF: a key of the
    # ConfigMap
    env = {e["name"]: e["value"] for e in c.get("env", [])}
    files = configmap_files(objs, ds, c)
    assert files.get(os.path.join("/fluentd/etc", env["FLUENTD_CONF"])) == (FLUENTD, "fluent.conf"), (env, files)
    root = fluentd_tree(objs["ConfigMap", FLUENTD]["data"]["fluent.conf"])
    labels = {d.arg: d for d in root.find("label")}

    # in_tail: the kubelet's files, positions on the node, CRI lines parsed
    tail = root.one("source", **{"@type": "tail"})
    assert tail.params["path"] == "/var/log/containers/*.log"
    assert tail.params["tag"] == "kube.*"
    assert fnmatch.fnmatch(APP_LOG, tail.params["path"])
    assert reads_host_dir(ds, c, os.path.dirname(tail.params["path"]))
    assert reads_host_dir(ds, c, "/var/log/pods")
    host_path_under(ds, c, tail.params["pos_file"])
    excluded = yaml.safe_load(tail.params["exclude_path"])
    assert any(fnmatch.fnmatch(own_log_file(ds, c), p) for p in excluded), excluded
    assert not any(fnmatch.fnmatch(APP_LOG, p) for p in excluded), excluded
    parse = tail.one("parse")
    assert parse.params["@type"] == "regexp"
    cri = ruby_regexp(parse.params["expression"])
    for line, (stream, logtag, text) in CRI_LINES.items():
        m = cri.match(line)
        assert m, line
        assert (m["stream"], m["logtag"], m["log"]) == (stream, logtag, text), line
        assert m[parse.params.get("time_key", "time")] == line.split(" ", 1)[0]
    assert parse.params["time_type"] == "string"

    # @CRI joins the P pieces of a line (concat, on the parser's logtag and log), then
    # hands every record to the label with the metadata filter and the output
    cri_label = labels[tail.params["@label"]]
    concat = cri_label.one("filter", **{"@type": "concat"})
    assert concat.params["key"] == "log" and concat.params["partial_key"] == "logtag"
    assert concat.params["partial_value"] == "P" and concat.params["separator"] == '""'
    assert concat.params["stream_identity_key"] == "stream"
    relabel = cri_label.one("match", **{"@type": "relabel"})
    assert relabel.params["@label"] == concat.params["timeout_label"]
    kube_label = labels[relabel.params["@label"]]
    tag = tail_tag(tail.params["tag"], APP_LOG)
    for d in (concat, relabel):
        assert fnmatch.fnmatchcase(tag, d.arg.replace("**", "*")), d.arg

    # kubernetes_metadata finds pod, namespace and container in the tag, and keeps the
    # label keys as written (the default writes app_kubernetes_io/name)
    meta = kube_label.one("filter", **{"@type": "kubernetes_metadata"})
    m = re.search(KUBERNETES_METADATA_TAG_RE, tag)
    assert m and (m["namespace"], m["container_name"], m["docker_id"]) == ("shop", "nginx", CONTAINER_ID), tag
    assert meta.params["de_dot"] == "false"
    # the container id goes where the gateway's route.container_id_key looks
    # ($.kubernetes.docker_id), from kubernetes_metadata's docker.container_id
    assert cfg["route"]["container_id_key"] == "$.kubernetes.docker_id"
    rt = kube_label.one("filter", **{"@type": "record_transformer"})
    assert rt.params["enable_ruby"] == "true" and rt.params["auto_typecast"] == "true"
    expr = rt.one("record").params["kubernetes"]
    assert expr.startswith("${") and expr.endswith("}") and expr.count("${") == 1, expr  # kept a map
    assert '"docker_id" =>' in expr and 'record.dig("docker", "container_id")' in expr, expr
    filters = [d.params["@type"] for d in kube_label.find("filter")]
    assert filters.index("kubernetes_metadata") < filters.index("record_transformer"), filters

    # forward: to this node's gateway, acked, a file buffer on the node, chunks the
    # gateway takes in one request
    out = kube_label.one("match", **{"@type": "forward"})
    assert fnmatch.fnmatchcase(tag, out.arg.replace("**", "*"))
    assert out.params["require_ack_response"] == "true"
    server = out.one("server")
    (listen,) = cfg["input"]["listen"]
    assert host_of(listen) in ("0.0.0.0", "127.0.0.1")
    assert server.params["host"] == "127.0.0.1" and int(server.params["port"]) == port_of(listen)
    buf = out.one("buffer")
    assert buf.params["@type"] == "file"
    host_path_under(ds, c, buf.params["path"])
    assert size_bytes(buf.params["chunk_limit_size"]) < cfg["input"]["max_frame_size"]
    assert buf.params["retry_forever"] == "true"

    # the liveness probe asks monitor_agent
    monitor = root.one("source", **{"@type": "monitor_agent"})
    assert monitor.params["bind"] == "0.0.0.0"
    assert container_port(c, c["livenessProbe"]["httpGet"]["port"]) == int(monitor.params["port"])


@pytest.mark.parametrize("agent", [FLUENT_BIT, FLUENTD])
def test_agent_rbac_reads_pods_and_namespaces(agent):
    """The metadata filters get, list and watch pods and namespaces, with nothing more,
    as the service account the agent's DaemonSet runs as."""
    objs = objects()
    role = objs["ClusterRole", agent]
    granted = {}
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""], rule
        for res in rule["resources"]:
            granted.setdefault(res, set()).update(rule["verbs"])
    assert granted == {"pods": {"get", "list", "watch"}, "namespaces": {"get", "list", "watch"}}, granted

    binding = objs["ClusterRoleBinding", agent]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    pod = pod_of(objs["DaemonSet", agent])
    sa_name = pod["serviceAccountName"]
    assert ("ServiceAccount", sa_name) in objs, "the DaemonSet runs as the missing ServiceAccount %s" % sa_name
    assert objs["ServiceAccount", sa_name]["metadata"]["namespace"] == NAMESPACE
    assert {"kind": "ServiceAccount", "name": sa_name, "namespace": NAMESPACE} in binding["subjects"]
    # the filter reads the API server with the service account's token
    assert pod.get("automountServiceAccountToken", True) is True


# ------------------------------------------------------------------ deploy/README.md


def test_deploy_readme_names_the_containerd_files():
    readme = (REPO_ROOT / "deploy" / "README.md").read_text()
    for path in FILES:
        assert "`%s`" % path.relative_to(REPO_ROOT / "deploy") in readme, "%s is not in deploy/README.md" % path.name
    # every file a `kubectl apply -f` there names exists
    applied = []
    for block in re.findall(r"```sh\n(.*?)```", readme, re.S):
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = cmd.split("#", 1)[0]
            if cmd.strip().startswith("kubectl apply"):
                words = shlex.split(cmd)
                applied += [words[i + 1] for i, w in enumerate(words) if w == "-f"]
    containerd = [p for p in applied if "containerd" in p]
    assert containerd, applied
    for p in applied:
        assert (REPO_ROOT / p).exists(), "deploy/README.md applies %s, which does not exist" % p
    # the agents are applied one at a time, never the whole directory (two agents would
    # send every line twice)
    assert "deploy/kubernetes/containerd/" not in applied and "deploy/kubernetes/containerd" not in applied
