#!/usr/bin/env bash
# Runs schemathesis (from PyPI, pinned) with every check it has (API_CHECKS narrows them)
# against /openapi.json of a real gateway: every
# operation with generated and mutated inputs, as an operator, for a bounded time. Fails on any
# server error (5xx) or an answer that does not match the document.
#
#   scripts/api-check.sh [seconds]     (default 120; scripts/test.sh runs it)
#
# The system runs as one `warren run all` process (the debug build) against a database and a
# vhost of its own, removed afterwards; the event-stream routes are left out (they never end).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

SECONDS_BUDGET=${1:-120}
SCHEMATHESIS_VERSION=4.32.5
NAME=warren_api_check
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/warren"
WORK="$STATE/api-check"

ensure_schemathesis() {
  local venv="$STATE/venv-schemathesis"
  if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    log "installing schemathesis $SCHEMATHESIS_VERSION"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
  fi
  SCHEMATHESIS="$venv/bin/schemathesis"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

cleanup() {
  [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
  psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -qc "DROP DATABASE IF EXISTS $NAME WITH (FORCE)" >/dev/null 2>&1 || true
  curl -sf -u guest:guest -X DELETE "$MANAGEMENT_URL/api/vhosts/$NAME" >/dev/null || true
}
trap cleanup EXIT

ensure_postgres
ensure_rabbitmq
ensure_schemathesis
[ -x "$BIN" ] || cargo build --locked -p warren
cleanup
rm -rf "$WORK"
mkdir -p "$WORK/images"
psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -qc "CREATE DATABASE $NAME" >/dev/null
curl -sf -u guest:guest -X PUT "$MANAGEMENT_URL/api/vhosts/$NAME" >/dev/null
curl -sf -u guest:guest -H 'content-type: application/json' -X PUT \
  --data '{"configure":".*","write":".*","read":".*"}' \
  "$MANAGEMENT_URL/api/permissions/$NAME/guest" >/dev/null

PORT=$(free_port)
export WARREN_DATABASE_URL="postgres://postgres:postgres@$PG_HOST:$PG_PORT/$NAME"
export WARREN_AMQP_URL="amqp://guest:guest@127.0.0.1:5672/$NAME"
export WARREN_HTTP_ADDR="127.0.0.1:$PORT"
export WARREN_METRICS_ADDR="127.0.0.1:$(free_port)"
export WARREN_IMAGE_STORE="$WORK/images"
export WARREN_JWT_KEY_FILE="$WORK/jwt-secret"
export WARREN_DB_POOL=4
# One client sends everything: the limit has a test of its own.
export WARREN_RATE_LIMIT=100000 WARREN_RATE_BURST=100000
head -c 48 /dev/urandom | base64 | tr -d '\n' >"$WARREN_JWT_KEY_FILE"
"$BIN" migrate >/dev/null
"$BIN" topology apply >/dev/null
TOKEN=$("$BIN" auth token --subject api-check --scope "operator ui" --ttl 1h)
"$BIN" run all >"$WORK/warren.log" 2>&1 &
PID=$!
wait_for 60 curl -sf "http://$WARREN_HTTP_ADDR/readyz" || { tail -20 "$WORK/warren.log" >&2; die "the gateway did not start"; }

log "schemathesis against http://$WARREN_HTTP_ADDR/openapi.json for ${SECONDS_BUDGET}s"
status=0
"$SCHEMATHESIS" run "http://$WARREN_HTTP_ADDR/openapi.json" \
  --header "Authorization: Bearer $TOKEN" \
  --checks "${API_CHECKS:-all}" \
  --exclude-path-regex '/(events|stream)$' \
  --max-time "$SECONDS_BUDGET" \
  --request-timeout 10 \
  --workers 2 \
  --suppress-health-check all \
  --no-color || status=$?
if [ "$status" -ne 0 ]; then
  log "warren's log: $WORK/warren.log"
  grep -E '"level":"(ERROR|WARN)"|ERROR|WARN' "$WORK/warren.log" | tail -20 >&2 || true
fi
exit "$status"
