#!/usr/bin/env bash
# Installs what the test suite needs and is not part of a fresh machine. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  -r tests/py/requirements.txt
