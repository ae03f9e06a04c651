#!/usr/bin/env bash
# Stops the private dockerd that scripts/start-dockerd.sh started, and only that one (the
# pid in its pid file must still be a dockerd with the recorded start time), then removes
# what it left: the mounts below its exec root and data root, both directories, and the
# docker-host file. Without a pid file it does nothing: no daemon of ours runs.
#
# Directory: $FWDGATE_DOCKERD_DIR, default target/dockerd.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${FWDGATE_DOCKERD_DIR:-$PWD/target/dockerd}
pidfile="$dir/dockerd.pid"
[ -s "$pidfile" ] || exit 0
dir=$(cd "$dir" && pwd)
read -r pid start exec_dir <"$pidfile" || true

same_process() {
  [ -n "${pid:-}" ] && [ -r "/proc/$pid/stat" ] || return 1
  [ "$(cut -d' ' -f22 "/proc/$pid/stat" 2>/dev/null)" = "$start" ] || return 1
  [ "$(readlink "/proc/$pid/exe" 2>/dev/null || true)" = "$(readlink -f "$(command -v dockerd)")" ]
}

if same_process; then
  echo "stop-dockerd: stopping dockerd pid $pid"
  kill -TERM "$pid"
  # dockerd stops its containers (10 s each by default, in parallel) and its containerd.
  deadline=$((SECONDS + 60))
  while same_process && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
  if same_process; then
    echo "stop-dockerd: dockerd pid $pid still running after 60s; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    while same_process; do sleep 0.2; done
  fi
else
  echo "stop-dockerd: pid ${pid:-?} is no longer the dockerd we started; clearing what it left"
fi

# The daemon unmounts what it mounted when it stops cleanly; after a kill, or for the
# network namespace file it keeps in its exec root, unmount here, deepest first.
unmount_below() {
  [ -n "$1" ] && [ -d "$1" ] || return 0
  awk -v d="$1/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || true; done
}
case "${exec_dir:-}" in
  /tmp/fwdgate-dockerd.*) unmount_below "$exec_dir"; rm -rf "$exec_dir" ;;
esac
unmount_below "$dir/data"
rm -rf "$dir/data" "$dir/docker-host" "$pidfile"
echo "stop-dockerd: removed its data root and exec root"
