#!/usr/bin/env bash
# Rewrites the files derived from the code: rabbitmq/definitions.json (exchanges, queues,
# bindings, users and their permissions: `warren topology export`) and deploy/components.tsv
# (names, users, database roles, metrics ports: `warren components`). Run it after adding a
# component, a message its queues take, or a saga step; tests fail, naming this script, until
# the files are current. Needs neither the broker nor the database.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build -q -p warren
warren=${CARGO_TARGET_DIR:-target}/debug/warren
"$warren" topology export --into rabbitmq/definitions.json
"$warren" components >deploy/components.tsv
echo "rewrote rabbitmq/definitions.json and deploy/components.tsv"
