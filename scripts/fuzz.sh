#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (cargo-fuzz, libFuzzer) from its committed corpus.
#   scripts/fuzz.sh --ci          each target for FUZZ_SECONDS (default 3) s: a smoke run for CI
#   scripts/fuzz.sh --long SECS   each target for SECS s, new inputs kept in fuzz/corpus/<target>
# Bounds: -rss_limit_mb=2048 and -malloc_limit_mb=256 (one allocation above 256 MiB is a finding).
# Needs the nightly toolchain and cargo-fuzz (scripts/setup.sh installs both). Prints the executions
# per target and the total; exits non-zero on any crash, timeout or allocation over the bound.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

mode=${1:---ci}
case $mode in
  --ci) secs=${FUZZ_SECONDS:-3} ;;
  --long) secs=${2:?usage: scripts/fuzz.sh --long SECONDS} ;;
  *) echo "usage: scripts/fuzz.sh --ci | --long SECONDS" >&2; exit 2 ;;
esac

export CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback
# The machine's own (stable) toolchain: with `-s none` cargo-fuzz needs only libFuzzer's coverage passes,
# which stable rustc has; RUSTC_BOOTSTRAP lets the few unstable flags cargo-fuzz passes through, so no
# nightly toolchain has to be fetched (a fresh CI machine may not reach one).
export RUSTC_BOOTSTRAP=1
# -a: debug assertions, so an arithmetic overflow on server-supplied lengths is a crash.
flags=(-a -s none)
cargo fuzz build "${flags[@]}" >&2

total=0
for target in $(cargo fuzz list); do
  corpus=corpus/$target
  mkdir -p "$corpus"
  # --ci reads the committed corpus but does not grow it (a scratch dir takes the new inputs).
  dirs=("$corpus")
  if [[ $mode == --ci ]]; then
    scratch=$(mktemp -d)
    dirs=("$scratch" "$corpus")
  fi
  log=$(mktemp)
  if ! cargo fuzz run "${flags[@]}" "$target" "${dirs[@]}" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=256 -timeout=10 -max_len=65536 \
      -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzz target $target FAILED (artifacts in fuzz/artifacts/$target)" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  echo "$target: ${runs:-0} executions in ${secs}s"
  total=$((total + ${runs:-0}))
  rm -f "$log"
  [[ $mode == --ci ]] && rm -rf "$scratch"
done
echo "total: $total executions"
