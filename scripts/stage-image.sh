#!/usr/bin/env bash
# Stages the build context of docker/Dockerfile.offline: the fwdgate binary, the shared
# libraries it links (as ldd lists them) and the dynamic loader, laid out as the image's
# root file system, and an empty directory that becomes the image's /var/lib/fwdgate
# (owned by the image's user, for spool.dir). No registry is needed to build the image
# from it.
#
#   scripts/stage-image.sh [BINARY] [DEST]
#   defaults: target/release/fwdgate (after `cargo build --release`),
#             target/docker-offline (what docker-compose.yml uses)
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${1:-target/release/fwdgate}
dest=${2:-target/docker-offline}
[ -x "$bin" ] || { echo "stage-image: no binary at $bin (run cargo build --release first)" >&2; exit 1; }
rm -rf "$dest"
mkdir -p "$dest/rootfs/usr/local/bin" "$dest/var-lib-fwdgate"
cp "$bin" "$dest/rootfs/usr/local/bin/fwdgate"
for f in $(ldd "$bin" | grep -o '/[^ ]*'); do
  cp --parents -L "$f" "$dest/rootfs/"
done
echo "stage-image: staged $bin in $dest"
