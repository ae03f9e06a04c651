#!/usr/bin/env bash
# Runs every check and test of fwdgate on a fresh machine: installs what the tests need,
# builds, lints, runs the Rust tests and the integration tests against real peers.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "installing test dependencies"
scripts/install-test-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

step "cargo test"
cargo test --locked

step "fuzz smoke: every cargo-fuzz target for ${FUZZ_SECONDS:-10} s"
scripts/fuzz-smoke.sh

step "building the gateway for the integration tests"
cargo build --locked --bin fwdgate
export FWDGATE_BIN="$PWD/target/debug/fwdgate"

step "benchmark tools (bench/): fmt, clippy, build"
(cd bench && cargo fmt -- --check && cargo clippy --release --locked -- -D warnings \
    && cargo build --release --locked)

step "a short run of the shipped benchmark: every event counted, no timing judged"
python3 bench/run.py --quick --modes message,packed --cases drain,null,seed,ack-ref,ack \
    --seconds 1 --results target/bench-smoke --check

step "Docker daemon for the real-peer tests (started here only if none is running)"
export FWDGATE_DOCKERD_PIDFILE="$PWD/target/fwdgate-dockerd.pid"
trap 'scripts/stop-dockerd.sh' EXIT
scripts/start-dockerd.sh

step "integration tests (pytest: Docker, swarm, compose, Go and Python clients, pyzmq subscribers)"
python3 -m pytest -q tests/py "$@"
