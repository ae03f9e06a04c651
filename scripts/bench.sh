#!/usr/bin/env bash
# End-to-end benchmark of fwdgate: builds the gateway and the benchmark tools (bench/),
# then runs bench/run.py, which measures every forward-protocol mode against the
# loopback and raw-libzmq references, prints a table and writes
# bench/results/latest.json and bench/results/plot.png. All traffic stays on 127.0.0.1.
#
#   scripts/bench.sh            # the full run (about 3 minutes on 2 CPUs)
#   scripts/bench.sh --quick    # without the 10,000-connection and accept-rate cases
#   scripts/bench.sh --modes packed,message --seconds 2
set -euo pipefail
cd "$(dirname "$0")/.."

# FWDGATE_BIN=/path/to/fwdgate benchmarks that binary instead of building this tree's.
if [ -z "${FWDGATE_BIN:-}" ]; then cargo build --release --bin fwdgate; fi
(cd bench && cargo build --release)
python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install --quiet matplotlib

# 10,000 held connections need as many descriptors in the gateway and in the client.
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ] || [ "$hard" -ge 65536 ]; then ulimit -n 65536; else ulimit -n "$hard"; fi

exec python3 bench/run.py "$@"
