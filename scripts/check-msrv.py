#!/usr/bin/env python3
"""The MSRV check: every crate the gateway builds with, on this platform, declares a
`rust-version` no newer than the gateway's own (Cargo.toml `rust-version`).

Only the stable toolchain is installed here and no older one can be fetched, so the
gateway's own code is checked against its `rust-version` by clippy's
`incompatible_msrv` lint (it reads the same key; the test command runs clippy with
-D warnings), and its dependencies by this script, from `cargo metadata`: the
packages reachable from fwdgate through normal and build dependencies, as resolved
for the host platform (a wasm-only dependency of getrandom, say, does not count).
"""

import json
import subprocess
import sys


def version(v):
    parts = [int(x) for x in v.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def main():
    host = next(line.split(": ", 1)[1] for line in
                subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout.splitlines()
                if line.startswith("host: "))
    meta = json.loads(subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--filter-platform", host],
        capture_output=True, text=True, check=True).stdout)
    packages = {p["id"]: p for p in meta["packages"]}
    root = meta["resolve"]["root"]
    ours = packages[root]["rust_version"]
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    seen, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        for dep in nodes[pid]["deps"]:
            kinds = {k["kind"] for k in dep["dep_kinds"]}
            if kinds & {None, "build"}:
                todo.append(dep["pkg"])
    newer = sorted((packages[p]["name"], packages[p]["version"], packages[p]["rust_version"])
                   for p in seen if p != root and packages[p].get("rust_version")
                   and version(packages[p]["rust_version"]) > version(ours))
    if newer:
        for name, ver, rv in newer:
            print("check-msrv: %s %s needs Rust %s, above fwdgate's rust-version %s" % (name, ver, rv, ours))
        return 1
    print("check-msrv: %d crates built for %s, none needs a Rust newer than %s" % (len(seen) - 1, host, ours))
    return 0


if __name__ == "__main__":
    sys.exit(main())
