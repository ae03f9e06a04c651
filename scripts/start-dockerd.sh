#!/usr/bin/env bash
# Makes sure a Docker daemon answers `docker info`.
#
# - A daemon already answers: use it, start nothing, write no pid file (so
#   scripts/stop-dockerd.sh leaves it alone, unless this script started it earlier).
# - None answers: start `dockerd` in the background, wait (bounded) until it answers,
#   and write "<pid> <start time>" to the pid file, so that scripts/stop-dockerd.sh
#   stops exactly that process and nothing else.
#
# Pid file: $FWDGATE_DOCKERD_PIDFILE, default target/fwdgate-dockerd.pid.
# Daemon log: next to the pid file, with the suffix .log.
# Wait bound: $FWDGATE_DOCKERD_TIMEOUT seconds (default 60).
# Extra dockerd arguments: $FWDGATE_DOCKERD_ARGS (word-split; for a second, private
# daemon together with DOCKER_HOST, e.g. when testing these scripts: give it its own
# --host, --data-root, --exec-root, --pidfile and --iptables=false, and NOT
# --bridge=none, which makes dockerd delete the host's docker0 interface that the
# first daemon uses).
set -euo pipefail
cd "$(dirname "$0")/.."

pidfile=${FWDGATE_DOCKERD_PIDFILE:-$PWD/target/fwdgate-dockerd.pid}
timeout=${FWDGATE_DOCKERD_TIMEOUT:-60}
logfile="$pidfile.log"

answers() { timeout 20 docker info >/dev/null 2>&1; }

wait_answer() { # $1: seconds; $2: pid that must stay alive (optional)
  local deadline=$((SECONDS + $1))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if answers; then return 0; fi
    if [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null; then return 1; fi
    sleep 0.5
  done
  return 1
}

command -v docker >/dev/null || { echo "start-dockerd: no docker CLI on PATH (run scripts/install-test-deps.sh)" >&2; exit 1; }
command -v dockerd >/dev/null || { echo "start-dockerd: no dockerd on PATH (run scripts/install-test-deps.sh)" >&2; exit 1; }

if answers; then
  # A pid file left by an earlier call of this script (same daemon) is kept, so that
  # the stop script still stops the daemon this script started.
  echo "start-dockerd: a Docker daemon is already running; using it"
  exit 0
fi

# A daemon that is still starting (its pid file names a live dockerd): wait for it.
if [ -z "${FWDGATE_DOCKERD_ARGS:-}" ] && [ -s /var/run/docker.pid ]; then
  other=$(cat /var/run/docker.pid)
  if [ "$(readlink "/proc/$other/exe" 2>/dev/null || true)" = "$(readlink -f "$(command -v dockerd)")" ]; then
    echo "start-dockerd: dockerd pid $other is starting; waiting for it"
    wait_answer "$timeout" "$other" && exit 0
    echo "start-dockerd: dockerd pid $other did not answer \`docker info\` within ${timeout}s" >&2
    exit 1
  fi
  # left by a daemon that was killed: dockerd refuses to start while the pid it names
  # belongs to any live process
  echo "start-dockerd: removing the stale /var/run/docker.pid (pid $other is no dockerd)"
  rm -f /var/run/docker.pid
fi

mkdir -p "$(dirname "$pidfile")"
echo "start-dockerd: starting dockerd (log: $logfile)"
# shellcheck disable=SC2086
setsid dockerd ${FWDGATE_DOCKERD_ARGS:-} </dev/null >"$logfile" 2>&1 &
pid=$!
# Field 22 of /proc/PID/stat is the start time: with it the stop script cannot mistake a
# recycled pid for our daemon.
start=$(cut -d' ' -f22 "/proc/$pid/stat" 2>/dev/null || true)
echo "$pid $start" >"$pidfile"

if ! wait_answer "$timeout" "$pid"; then
  echo "start-dockerd: dockerd (pid $pid) did not answer \`docker info\` within ${timeout}s; last log lines:" >&2
  tail -n 30 "$logfile" >&2 || true
  scripts/stop-dockerd.sh || true
  exit 1
fi
echo "start-dockerd: dockerd pid $pid is ready"
