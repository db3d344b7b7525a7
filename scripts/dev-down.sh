#!/usr/bin/env bash
# Stops what dev-up.sh started: Warren, and PostgreSQL or RabbitMQ if dev-up.sh had to start
# them (pass --keep-servers to leave them running). Safe to run again.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PIDFILE="$STATE/warren.pid"
if [ -f "$PIDFILE" ]; then
  pid=$(cat "$PIDFILE")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping warren (pid $pid)"
    kill -TERM "$pid"
    # Warren drains in-flight messages within its grace period.
    wait_for 30 bash -c "! kill -0 $pid" || { log "warren did not stop in time; killing it"; kill -KILL "$pid" || true; }
  fi
  rm -f "$PIDFILE"
fi

if [ "${1:-}" != "--keep-servers" ]; then
  if [ -f "$STATE/started-rabbitmq" ]; then
    log "stopping RabbitMQ (dev-up.sh started it)"
    as_root timeout 120 rabbitmqctl -q stop || true
    rm -f "$STATE/started-rabbitmq"
  fi
  if [ -f "$STATE/started-postgres" ]; then
    log "stopping PostgreSQL (dev-up.sh started it)"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(cat "$STATE/started-postgres")" main stop || true
    rm -f "$STATE/started-postgres"
  fi
fi
log "stopped"
