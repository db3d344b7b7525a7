#!/usr/bin/env bash
# Generates every password Warren's users need, once, into .warren/secrets/ (mode 600,
# git-ignored): rabbitmq/<user> for each broker user, postgres/<role> for each database role and
# postgres/postgres for the containers' database superuser. docker-compose.yml reads them as
# secrets: run this before `docker compose up`. (scripts/dev-up.sh makes the ones it needs.)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_secrets
log "passwords in $SECRETS (existing ones kept)"
