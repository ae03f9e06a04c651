#!/usr/bin/env bash
# Starts the test command's own Docker daemon, from nothing, and waits (bounded) until it
# answers. Every run sees what a fresh machine sees:
#
# - Its image store, containers, volumes, networks and swarm state live in a data root of
#   its own, $FWDGATE_DOCKERD_DIR/data (default target/dockerd/data), which is emptied
#   first and removed by scripts/stop-dockerd.sh. Nothing an earlier run made (the
#   local/busybox image, the gateway's image, a swarm) can hide a missing step.
# - Its exec root and API socket are in a new short directory under /tmp: containerd's
#   sockets sit below the exec root, and a unix socket path longer than 108 bytes (a
#   deep checkout) cannot be bound.
# - A daemon that already runs on the machine is never used, stopped or changed. When one
#   answers on /var/run/docker.sock, this daemon shares its docker0 bridge (--bridge=none
#   would delete that interface); when none does, it makes no bridge at all. The tests'
#   containers use the host network or none, so no bridge and no iptables rules are
#   needed (--iptables=false).
#
# Writes $FWDGATE_DOCKERD_DIR/dockerd.pid ("<pid> <start time> <exec dir>", for
# scripts/stop-dockerd.sh, which stops exactly that process) and
# $FWDGATE_DOCKERD_DIR/docker-host (the DOCKER_HOST value for clients: unix://…).
# Daemon log: $FWDGATE_DOCKERD_DIR/dockerd.log. Wait bound: $FWDGATE_DOCKERD_TIMEOUT
# seconds (default 60).
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${FWDGATE_DOCKERD_DIR:-$PWD/target/dockerd}
timeout=${FWDGATE_DOCKERD_TIMEOUT:-60}

command -v docker >/dev/null || { echo "start-dockerd: no docker CLI on PATH (run scripts/install-test-deps.sh)" >&2; exit 1; }
command -v dockerd >/dev/null || { echo "start-dockerd: no dockerd on PATH (run scripts/install-test-deps.sh)" >&2; exit 1; }

# A daemon an earlier run left (killed before its stop): stop it and clear its state.
FWDGATE_DOCKERD_DIR=$dir scripts/stop-dockerd.sh
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
rm -rf "$dir/data"
mkdir -p "$dir/data"
exec_dir=$(mktemp -d /tmp/fwdgate-dockerd.XXXXXX)
host="unix://$exec_dir/docker.sock"

args=(--data-root "$dir/data" --exec-root "$exec_dir/exec" --pidfile "$exec_dir/dockerd.pid"
      --host "$host" --iptables=false --ip6tables=false
      --containerd-namespace fwdgate-test --containerd-plugins-namespace fwdgate-test-plugins)
if DOCKER_HOST=unix:///var/run/docker.sock timeout 20 docker info >/dev/null 2>&1; then
  echo "start-dockerd: a Docker daemon runs on /var/run/docker.sock; starting a private one beside it (it is left alone)"
else
  args+=(--bridge=none)
fi

logfile="$dir/dockerd.log"
echo "start-dockerd: starting a private dockerd (data root $dir/data, socket $host, log $logfile)"
setsid dockerd "${args[@]}" </dev/null >"$logfile" 2>&1 &
pid=$!
# Field 22 of /proc/PID/stat is the start time: with it the stop script cannot mistake a
# recycled pid for our daemon.
start=$(cut -d' ' -f22 "/proc/$pid/stat" 2>/dev/null || true)
echo "$pid $start $exec_dir" >"$dir/dockerd.pid"

deadline=$((SECONDS + timeout))
until DOCKER_HOST=$host timeout 20 docker info >/dev/null 2>&1; do
  if ! kill -0 "$pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
    echo "start-dockerd: dockerd (pid $pid) did not answer \`docker info\` within ${timeout}s; last log lines:" >&2
    tail -n 30 "$logfile" >&2 || true
    FWDGATE_DOCKERD_DIR=$dir scripts/stop-dockerd.sh || true
    exit 1
  fi
  sleep 0.5
done
echo "$host" >"$dir/docker-host"
echo "start-dockerd: dockerd pid $pid is ready on $host, with an empty image store"
