#!/usr/bin/env bash
# Runs every cargo-fuzz target for a short while (FUZZ_SECONDS, default 10 s each),
# starting from the seed corpora in fuzz/corpus/. New inputs go to a scratch directory,
# so the committed corpora stay as they are. A crash fails the run; libFuzzer leaves the
# input under fuzz/artifacts/TARGET/.
#
# cargo-fuzz passes nightly-only flags to rustc; this machine has only the stable
# toolchain, hence RUSTC_BOOTSTRAP=1 (the way cargo-fuzz is used on stable).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-10}
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cd fuzz
for target in $(cargo fuzz list); do
  mkdir -p "$scratch/$target"
  echo "fuzz smoke: $target for ${seconds}s"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 2>&1 | grep -E "^(#[0-9]+\s+DONE|stat::number_of_executed_units|==[0-9]+==|SUMMARY|Done)" || true
  # grep hides the progress lines; the exit status that matters is cargo fuzz's.
  status=${PIPESTATUS[0]}
  if [ "$status" -ne 0 ]; then
    echo "fuzz smoke: $target FAILED (exit $status); see fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
echo "fuzz smoke: all targets ran without a crash"
