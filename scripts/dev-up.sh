#!/usr/bin/env bash
# Brings up the whole system on this machine: PostgreSQL and RabbitMQ (installed and started if
# missing), the broker definitions and management UI, the migrations, and Warren itself in the
# background. Returns once the gateway is ready. Safe to run again.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

RECORD_STARTS=1
ensure_tools
ensure_postgres
ensure_rabbitmq

log "building warren (release)"
cargo build --release --locked -p warren
BIN="$WARREN_BIN"
export WARREN_HTTP_ADDR="${WARREN_HTTP_ADDR:-127.0.0.1:8080}"
# The operator's part, before any component starts: the migrations as the database's owner
# (they create a role per service), a password for each role, then the broker topology as the
# operator's user. Each component then runs as its own broker user and database role.
WARREN_DATABASE_URL="${WARREN_DATABASE_URL:-postgres://postgres:postgres@$PG_HOST:$PG_PORT/$WARREN_DB}" \
  "$BIN" migrate
ensure_db_roles
as_operator "$BIN" topology apply
# The audit tap copies every message into warren.audit for watching in the management UI, at
# about the broker's cost of the message itself: off unless WARREN_AUDIT=on.
if [ "${WARREN_AUDIT:-off}" = on ]; then
  as_operator "$BIN" topology audit on
  AUDIT_STATE="tapped: a copy of every message; scripts/operator.sh topology audit off stops it"
else
  as_operator "$BIN" topology audit off >/dev/null
  AUDIT_STATE="not tapped; scripts/operator.sh topology audit on (or WARREN_AUDIT=on) copies every message in"
fi

ready() { curl -sf "http://$WARREN_HTTP_ADDR/readyz"; }
if [ -f "$STATE/warren.pid" ] || component_running gateway; then
  log "warren is already running; restarting it on the new build"
  "$ROOT/scripts/dev-down.sh" --keep-servers
fi
# Seven processes share PostgreSQL's 100 connections.
export WARREN_DB_POOL="${WARREN_DB_POOL:-6}"
for component in "${COMPONENTS[@]}"; do
  log "starting $component (log: .warren/logs/$component.log)"
  start_component "$component"
done
if ! wait_for 90 ready; then
  tail -n 20 "$STATE"/logs/*.log >&2
  die "the gateway did not become ready on http://$WARREN_HTTP_ADDR/readyz"
fi

# A development operator token, readable by this user only; printed below.
(umask 077; "$BIN" auth token --subject dev-operator --scope "operator ui" --ttl 720h \
  >"$STATE/dev-token")
TOKEN=$(cat "$STATE/dev-token")

metrics_urls=""
for component in "${COMPONENTS[@]}"; do
  metrics_urls+=$(printf '\n                   %-13s http://%s/metrics' "$component" "$(metrics_addr "$component")")
done

cat <<MSG

Warren is up.
  Gateway          http://$WARREN_HTTP_ADDR  (health: /healthz, readiness: /readyz, metrics: /metrics)
  Live page        http://$WARREN_HTTP_ADDR/ui#token=$TOKEN
  Operator token   $STATE/dev-token (development only; scopes operator and ui, 30 days):
                   TOKEN=\$(cat .warren/dev-token); curl -H "authorization: Bearer \$TOKEN" ...
                   $TOKEN
  RabbitMQ UI      $MANAGEMENT_URL  (warren-operator, password in .warren/secrets/rabbitmq/warren-operator; vhost "warren")
  Operator CLI     scripts/operator.sh <warren command>  (e.g. dlq list: as the operator's broker user and database role)
  Audit queue      $MANAGEMENT_URL/#/queues/warren/warren.audit  ($AUDIT_STATE)
  Metrics          each process (also /healthz and /readyz):$metrics_urls
  RabbitMQ metrics $RABBITMQ_PROMETHEUS_URL/metrics
                   $RABBITMQ_PROMETHEUS_URL/metrics/detailed?vhost=warren&family=queue_coarse_metrics  (per queue)
  Prometheus       deploy/prometheus/prometheus.local.yml scrapes all of these
  Logs             $STATE/logs/<component>.log (one process per component)
  Rehearse faults  scripts/chaos/all.sh
  Stop             scripts/dev-down.sh
MSG
