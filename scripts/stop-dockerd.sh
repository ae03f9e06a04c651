#!/usr/bin/env bash
# Stops the dockerd that scripts/start-dockerd.sh started, and only that one: the pid in
# the pid file must still be a dockerd with the recorded start time. Without a pid file
# (the daemon was already running, or was never started) it does nothing.
#
# Pid file: $FWDGATE_DOCKERD_PIDFILE, default target/fwdgate-dockerd.pid.
set -euo pipefail
cd "$(dirname "$0")/.."

pidfile=${FWDGATE_DOCKERD_PIDFILE:-$PWD/target/fwdgate-dockerd.pid}
[ -s "$pidfile" ] || exit 0
read -r pid start <"$pidfile" || true
rm -f "$pidfile"
[ -n "${pid:-}" ] || exit 0

same_process() {
  [ -r "/proc/$pid/stat" ] || return 1
  [ "$(cut -d' ' -f22 "/proc/$pid/stat" 2>/dev/null)" = "$start" ] || return 1
  [ "$(readlink "/proc/$pid/exe" 2>/dev/null || true)" = "$(readlink -f "$(command -v dockerd)")" ]
}

if ! same_process; then
  echo "stop-dockerd: pid $pid is no longer the dockerd we started; nothing to stop"
  exit 0
fi

echo "stop-dockerd: stopping dockerd pid $pid"
kill -TERM "$pid"
# dockerd stops its containers (10 s each by default, in parallel) and its containerd.
deadline=$((SECONDS + 60))
while same_process && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
if same_process; then
  echo "stop-dockerd: dockerd pid $pid still running after 60s; sending SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null || true
fi
