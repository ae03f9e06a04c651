"""Node's fluent-logger in its PackedForward and CompressedPackedForward modes: the
records emitted within one flush interval go out as one request with a chunk, here one
of ~209 KB (over the 64 KiB past which the reader sizes its reads to a declared
stream), and come out in order, acked."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parents[1] / "node"


@pytest.mark.parametrize("mode", ["PackedForward", "CompressedPackedForward"])
def test_node_packed_modes_one_large_request(start_gateway, subscribe, mode):
    node = shutil.which("node")
    assert node, "peer node: not on PATH"
    assert (NODE_DIR / "node_modules" / "fluent-logger").is_dir(), \
        "peer fluent-logger (node): not installed (scripts/install-test-deps.sh runs npm ci in tests/node)"
    gw = start_gateway()
    sub = subscribe(gw, b"tnode")
    host, port = gw.addr
    n = 5000
    r = subprocess.run([node, str(NODE_DIR / "send.js"), host, str(port), "node.app", str(n)],
                       capture_output=True, timeout=60, cwd=str(NODE_DIR),
                       env={**os.environ, "FLUENT_EVENT_MODE": mode})
    assert r.returncode == 0, "peer node fluent-logger failed: %s" % r.stderr.decode()
    got = sub.recv_n(n, timeout=30)
    assert got == [[b"tnode", b"default", b"node.app: node line %d" % i] for i in range(n)]
    assert sub.sync(gw) == []
