#!/usr/bin/env bash
# Restarts PostgreSQL under load. Handlers fail transiently and are retried; relays and
# listeners reconnect; nothing is acked before its commit, so nothing is lost.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_stack
seed
start_load 300
sleep 2
say "restarting PostgreSQL"
restart_postgres
wait_load
check_alive "${COMPONENTS[@]}"
verify
