#!/usr/bin/env bash
# Makes the small image local/busybox:latest from Debian's static busybox, without a
# registry: a root file system of /bin/busybox and a few applet links, imported with
# `docker import`. The README's quick start, docker-compose.yml and the tests use it.
#
#   scripts/make-busybox-image.sh [IMAGE]     default local/busybox:latest
#
# Needs a running Docker daemon and /bin/busybox (apt-get install busybox-static; another
# file with BUSYBOX=PATH). Does nothing when the image exists already.
set -euo pipefail

image=${1:-local/busybox:latest}
docker=${DOCKER:-docker}

if "$docker" image inspect "$image" >/dev/null 2>&1; then
  echo "make-busybox-image: $image exists already"
  exit 0
fi
busybox=${BUSYBOX:-/bin/busybox}
if [ ! -x "$busybox" ]; then
  echo "make-busybox-image: no $busybox (install it: apt-get install busybox-static)" >&2
  exit 1
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin"
cp "$busybox" "$root/bin/busybox"
for applet in sh echo cat seq sleep yes head printf; do ln -s busybox "$root/bin/$applet"; done
# The image holds nothing but this file: it must run in a root of its own, with no
# dynamic loader or libraries beside it. Trying it there is the check that cannot be
# fooled (asking `ldd` was: its exit status for a static binary differs between versions).
if ! chroot "$root" /bin/sh -c true 2>/dev/null; then
  echo "make-busybox-image: $busybox does not run in an empty root (a dynamically linked busybox? the image needs busybox-static)" >&2
  exit 1
fi
tar -C "$root" -c . | "$docker" import - "$image" >/dev/null
echo "make-busybox-image: made $image"
