#!/usr/bin/env bash
# What routing on nested keys costs, ingest-only (frame, decode, route), on the same
# Kubernetes-shaped records: the tenant from a top-level key ("top"), from
# $.kubernetes.namespace_name ("tenant"), and tenant, service and container id all
# nested ("nested"), in Forward and PackedForward mode (benches/route_paths.rs).
#
# Prints CPU seconds per million events (best of 15 runs), then instructions per event
# from callgrind: the difference between 110 and 10 rounds of 1000 events, so that
# set-up is not counted. Needs valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=$(cargo bench --bench route_paths --no-run 2>&1 | sed -n 's/.*(\(.*route_paths-[^)]*\)).*/\1/p' | tail -n 1)
[ -x "$bin" ] || { echo "bench-routing: no route_paths bench binary" >&2; exit 1; }
"$bin" --bench

instructions() { # case mode rounds -> total instructions
  local out
  out=$(mktemp)
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --callgrind "$1" "$2" "$3" >/dev/null 2>&1
  callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'
  rm -f "$out"
}

echo
echo "instructions per event (callgrind, rounds 110 - 10, 100,000 events):"
printf '%-8s %10s %10s %10s %12s %12s\n' mode top tenant nested tenant/top nested/top
for mode in forward packed; do
  declare -A per
  for case in top tenant nested; do
    a=$(instructions "$case" "$mode" 10)
    b=$(instructions "$case" "$mode" 110)
    per[$case]=$(( (b - a) / 100000 ))
  done
  printf '%-8s %10d %10d %10d %12s %12s\n' "$mode" "${per[top]}" "${per[tenant]}" "${per[nested]}" \
    "$(awk -v a="${per[tenant]}" -v b="${per[top]}" 'BEGIN { printf "%.2f", a / b }')" \
    "$(awk -v a="${per[nested]}" -v b="${per[top]}" 'BEGIN { printf "%.2f", a / b }')"
done
