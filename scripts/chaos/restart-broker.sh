#!/usr/bin/env bash
# Restarts RabbitMQ (stop_app, start_app) under load. Every process must reconnect and resume
# consuming on its own: no process is restarted.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_stack
seed
start_load 300
sleep 2
say "restarting RabbitMQ"
restart_rabbitmq
wait_load
check_alive "${COMPONENTS[@]}"
verify
