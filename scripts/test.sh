#!/usr/bin/env bash
# Runs every check CI runs: formatting, clippy, and the whole test suite against real
# PostgreSQL and RabbitMQ (installed and started here if they are missing).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

ensure_tools
ensure_postgres
ensure_rabbitmq
ensure_test_vhost
ensure_chromium

# sqlx::test creates a fresh database per test through this URL.
export DATABASE_URL="postgres://postgres:postgres@$PG_HOST:$PG_PORT/$WARREN_DB"
export WARREN_TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:5672/warren_test"
export WARREN_TEST_MANAGEMENT_URL="$MANAGEMENT_URL"

# A CI build is never rebuilt incrementally; its incremental caches only cost disk space.
if [[ -n "${CI:-}" ]]; then export CARGO_INCREMENTAL=0; fi
log "disk: $(df -h --output=avail "$ROOT" | tail -1 | tr -d ' ') free"

log "cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
log "docker-compose config -q"
ensure_compose
docker-compose config -q
log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The optional OTLP span export is built only with its feature: keep it compiling and clean.
cargo clippy -p warren --features otlp --locked -- -D warnings
# The fuzz targets (fuzz/, a workspace of its own, run by scripts/fuzz.sh) keep compiling and
# clean: checked in the main build's target directory, which takes under half a minute.
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}" \
  cargo clippy --manifest-path fuzz/Cargo.toml --all-targets --locked -- -D warnings
log "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

# The HTTP contract against hostile input: schemathesis on /openapi.json of a running gateway,
# for a bounded time; any server error or answer off the document fails CI.
log "schemathesis"
"$ROOT/scripts/api-check.sh" "${API_CHECK_SECONDS:-60}"

# The chaos tests restart PostgreSQL and RabbitMQ, so they run alone, after everything else,
# one at a time, and print their figures.
log "chaos tests"
if cargo nextest --version >/dev/null 2>&1; then
  # --workspace, like the suite, so features unify the same way and nothing is built again.
  cargo nextest run --workspace --locked --run-ignored only -E 'binary(chaos)' \
    --test-threads 1 --success-output immediate
else
  cargo test -p warren --test chaos --locked -- --ignored --test-threads 1 --nocapture
fi
