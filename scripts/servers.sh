#!/usr/bin/env bash
# Restarts PostgreSQL or RabbitMQ in place, for failure rehearsals (the chaos tests and
# scripts/chaos/ call it): `scripts/servers.sh restart-postgres|restart-rabbitmq`; or blocks
# the broker with a memory alarm and lifts it again: `block-rabbitmq|unblock-rabbitmq`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
case "${1:-}" in
  restart-postgres) restart_postgres ;;
  restart-rabbitmq) restart_rabbitmq ;;
  block-rabbitmq) block_rabbitmq ;;
  unblock-rabbitmq) unblock_rabbitmq ;;
  *) die "usage: $0 restart-postgres|restart-rabbitmq|block-rabbitmq|unblock-rabbitmq" ;;
esac
