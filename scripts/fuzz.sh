#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ (cargo-fuzz, libFuzzer) for a while and prints libFuzzer's
# figures for each: executions, executions per second, coverage, corpus size.
#
#   scripts/fuzz.sh [message|image|variant_spec|all] [seconds per target]   (all, 60)
#
# Inputs found to add coverage go to fuzz/work/corpus/<target> (not committed), so a later run
# starts where this one stopped; the committed seeds in fuzz/corpus/<target> are only read.
# A crash stops its target, leaves the input in fuzz/artifacts/<target>/ and makes the script
# fail once every target asked for has run. FUZZ_ARGS adds libFuzzer options, e.g.
# FUZZ_ARGS=-jobs=2 or FUZZ_ARGS=-seed=1.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TARGETS=(message image variant_spec)
target=${1:-all}
seconds=${2:-60}
case "$target" in
  all) selected=("${TARGETS[@]}") ;;
  message | image | variant_spec) selected=("$target") ;;
  *) die "unknown fuzz target $target; known: ${TARGETS[*]} or all" ;;
esac
[[ "$seconds" =~ ^[0-9]+$ && "$seconds" -gt 0 ]] || die "seconds must be a positive number, not $seconds"

if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
# cargo-fuzz passes nightly-only flags (-Z sanitizer, sancov passes); the one toolchain here is
# stable, whose compiler accepts them when told it is bootstrapping itself.
export RUSTC_BOOTSTRAP=1

cd "$ROOT/fuzz"
log "cargo fuzz build"
cargo fuzz build

failed=()
for name in "${selected[@]}"; do
  mkdir -p "work/corpus/$name"
  output="work/$name.log"
  log "fuzzing $name for ${seconds}s (log: fuzz/$output)"
  # -rss_limit_mb: a process over 2 GiB is a failure (a decompression bomb got through);
  # -timeout: so is one input taking over 30 s.
  # shellcheck disable=SC2086 # FUZZ_ARGS is a list of options
  if cargo fuzz run "$name" "work/corpus/$name" "corpus/$name" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 \
    ${FUZZ_ARGS:-} >"$output" 2>&1; then
    result=clean
  else
    result=FAILED
    failed+=("$name")
  fi
  # The last status line (executions, coverage, features, corpus) and the final statistics.
  summary=$(grep -E '^#[0-9]+' "$output" | tail -1 || true)
  stats=$(grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|slowest_unit_time_sec|peak_rss_mb)' "$output" |
    sed 's/^stat:://' | tr '\n' ' ' || true)
  printf '%s: %s\n  %s\n  %s\n' "$name" "$result" "$summary" "$stats"
  if [[ $result == FAILED ]]; then
    grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written to' "$output" | head -5 || true
  fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
  die "fuzzing found failures in: ${failed[*]} (inputs in fuzz/artifacts/)"
fi
