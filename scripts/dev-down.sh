#!/usr/bin/env bash
# Stops what dev-up.sh started: Warren, and PostgreSQL or RabbitMQ if dev-up.sh had to start
# them (pass --keep-servers to leave them running). Safe to run again.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Warren drains in-flight messages within its grace period. The gateway stops first, so no
# new work arrives while the workers drain.
for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
  component=${COMPONENTS[i]}
  if component_running "$component"; then
    log "stopping $component"
  fi
  stop_component "$component"
done
# A stack started by an older dev-up.sh ran as one process.
if [ -f "$STATE/warren.pid" ]; then
  stop_pid=$(cat "$STATE/warren.pid")
  kill -TERM "$stop_pid" 2>/dev/null || true
  wait_for 30 bash -c "! kill -0 $stop_pid" || kill -KILL "$stop_pid" 2>/dev/null || true
  rm -f "$STATE/warren.pid"
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
