#!/usr/bin/env bash
# The standard benchmark: brings the stack up (scripts/dev-up.sh, release build, one process per
# component), then runs `warren bench` twice: throughput over 20,000 checkouts with 10% declines
# (closed loop), and latency at a fixed arrival rate (open loop; the default, 50 per second, is
# about half of what a 2-core machine sustains, the issue's 500 per second with BENCH_RATE=500).
# Extra arguments go to both runs (e.g. --via http, --json, --history 1000000). Sizes can be
# changed with BENCH_CHECKOUTS, BENCH_CONCURRENCY and BENCH_RATE.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

"$ROOT/scripts/dev-up.sh" >&2
# The broker as the operator; the database as its owner (`--history` writes into every schema).
while IFS= read -r setting; do
  case $setting in WARREN_AMQP_*) export "$setting" ;; esac
done < <(credentials operator)
export WARREN_DATABASE_URL="${WARREN_DATABASE_URL:-postgres://postgres:postgres@$PG_HOST:$PG_PORT/$WARREN_DB}"
checkouts=${BENCH_CHECKOUTS:-20000}
concurrency=${BENCH_CONCURRENCY:-256}
rate=${BENCH_RATE:-50}

log "throughput: $checkouts checkouts, $concurrency in flight, 10% declined"
"$WARREN_BIN" bench --checkouts "$checkouts" --concurrency "$concurrency" --decline-share 0.1 "$@"
log "latency: $((rate * 10)) checkouts arriving at $rate per second"
"$WARREN_BIN" bench --checkouts $((rate * 10)) --rate "$rate" --decline-share 0.1 --floor-messages 0 "$@"
