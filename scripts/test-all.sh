#!/usr/bin/env bash
# Runs every check and test of fwdgate on a fresh machine: installs what the tests need
# (only what is missing), builds, lints, runs the Rust tests, builds the release binary,
# the .deb and the image, and runs the integration tests against real peers.
#
#   scripts/test-all.sh                 everything (what CI runs, through .ci/run)
#   scripts/test-all.sh --quick         the day-to-day lane: fmt, clippy, unit tests and the
#                                       integration tests that need neither Docker nor the
#                                       release build
#   scripts/test-all.sh [--quick] -k NAME   extra arguments go to pytest
#
# Each step is announced with the time of day and the minutes since the start.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=false
if [ "${1:-}" = "--quick" ]; then
  quick=true
  shift
fi

started=$SECONDS
step() {
  local t=$((SECONDS - started))
  printf '\n==> [%s +%dm%02ds] %s\n' "$(date +%H:%M:%S)" $((t / 60)) $((t % 60)) "$*"
}

step "installing the test dependencies that are missing"
scripts/install-test-deps.sh

# What an earlier run built outside the checkout must not stand in for a step of this
# one: Go builds its client from an empty cache.
export GOCACHE="$PWD/target/go-build"
rm -rf "$GOCACHE"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

step "MSRV: what fwdgate builds with needs no Rust newer than its rust-version (scripts/check-msrv.py)"
python3 scripts/check-msrv.py

step "cargo deny: licences, bans and duplicate versions, sources (deny.toml; no advisories: they need the network)"
command -v cargo-deny >/dev/null || cargo install --locked cargo-deny@0.20.2
cargo deny check licenses bans sources

step "cargo test, and the debug gateway that the integration tests run"
# Built together with the tests, the binary gets the tests' feature set of the
# dependencies and shares their build (a separate `cargo build --bin` compiles libzmq
# and others again, about a minute).
cargo build --locked --lib --bins --tests
cargo test --locked
export FWDGATE_BIN="$PWD/target/debug/fwdgate"

if $quick; then
  step "integration tests without Docker or the release build (pytest -m 'not docker and not release')"
  python3 -m pytest -q tests/py -m "not docker and not release" "$@"
  step "quick lane passed"
  exit 0
fi

step "fuzz smoke: every cargo-fuzz target for ${FUZZ_SECONDS:-10} s"
scripts/fuzz-smoke.sh

step "release build and Debian package (scripts/build-deb.sh)"
deb=$(scripts/build-deb.sh | tail -n 1)
export FWDGATE_RELEASE_BIN="$PWD/target/release/fwdgate"
export FWDGATE_DEB="$PWD/$deb"
echo "package: $FWDGATE_DEB; $("$FWDGATE_RELEASE_BIN" --version)"

step "benchmark tools (bench/): fmt, clippy, build"
(cd bench && cargo fmt -- --check && cargo clippy --release --locked -- -D warnings \
    && cargo build --release --locked)

step "a short run of the shipped benchmark on the release binary: every event counted, no timing judged; the soak for 25 s"
# The soak (acked load, churn and hostile connections at once) is judged: every acked
# line delivered, each hostile connection closed by the gateway, fds back to the start,
# exit 0 on SIGTERM, RSS at the end within 1.2x RSS at 20 % of the run, readings under
# 300 MB, peak under 256 MB. Slowloris connections are cut off after 3 s instead of 60.
env -u FWDGATE_BIN python3 bench/run.py --quick --modes message,packed \
    --cases drain,null,seed,ack-ref,ack,spool,replay,soak --replay-mb 32 --replay-sizes 16 \
    --seconds 1 --soak-seconds 25 --soak-request-timeout-ms 3000 \
    --results target/bench-smoke --check

step "a Docker daemon of the test command's own: an empty image store and data root, a socket of its own (scripts/start-dockerd.sh)"
# Never the machine's own daemon, if one runs: a fresh machine has no local/busybox image,
# no gateway image and no swarm, so neither does any run of this command.
export FWDGATE_DOCKERD_DIR="$PWD/target/dockerd"
trap 'scripts/stop-dockerd.sh' EXIT
scripts/start-dockerd.sh
DOCKER_HOST=$(cat "$FWDGATE_DOCKERD_DIR/docker-host")
export DOCKER_HOST
step "the local/busybox image, made from nothing (scripts/make-busybox-image.sh)"
scripts/make-busybox-image.sh

step "integration tests (pytest: Docker, swarm, compose, the .deb, the image, the README's quick start, Go, Python and Node clients, pyzmq subscribers)"
python3 -m pytest -q tests/py "$@"
step "all passed"
