#!/usr/bin/env bash
# Installs what the test suite needs and is not part of a fresh machine. Safe to re-run:
# apt is skipped entirely when every package is already installed, and otherwise installs
# only the missing ones, with --no-upgrade: what the machine has is never upgraded.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real peers of the integration tests (see shared PEERS notes):
#   docker.io        Docker 20.10 engine with the fluentd log driver (and swarm mode)
#   busybox-static   /bin/busybox, imported as the local image local/busybox:latest
#   golang-go + golang-github-fluent-fluent-logger-golang-dev
#                    the Go client library that Docker itself uses, built offline
#   docker-compose   Compose v1, for the docker-compose.yml at the repository root
#   openssl          makes the certificates of the TLS tests
#   systemd          systemd-analyze, which checks the systemd units (packaging/)
#   groff-base, man-db  render and find the man page in its tests
#   haproxy          HAProxy 2.6 in front of several gateways (deploy/haproxy/haproxy.cfg)
APT_PACKAGES=(docker.io busybox-static golang-go golang-github-fluent-fluent-logger-golang-dev docker-compose openssl
              systemd groff-base man-db haproxy)

apt_install() { # only the packages named, none upgraded
  echo "installing with apt: $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-upgrade "$@"
}

missing=()
for p in "${APT_PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install "${missing[@]}"
else
  echo "apt: every package is installed already (${APT_PACKAGES[*]})"
fi

python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  -r tests/py/requirements.txt

# Node's fluent-logger (it implements the forward protocol handshake and the packed
# modes), at the version pinned in tests/node/package-lock.json. Node.js and npm come
# with the machine; Debian's packages stand in where they do not.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt_install nodejs npm
fi
if [ ! -d tests/node/node_modules/fluent-logger ]; then
  npm ci --prefix tests/node --silent --no-audit --no-fund
fi
