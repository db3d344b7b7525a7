#!/usr/bin/env bash
# Sends the payment queue a message that is not JSON and one that breaks its schema. Both must
# be parked with their reason (never applied, never looping); then they are purged.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_stack
say "sending two poison messages to payment.commands"
ids=$(warren --json chaos poison --queue payment.commands \
  | python3 -c 'import json, sys; print(" ".join(m["message_id"] for m in json.load(sys.stdin)["sent"]))')
for id in $ids; do
  wait_for 30 warren dlq show "$id" || die "poison message $id was not parked"
  say "parked: $id"
  warren dlq show "$id" | grep -i reason >&2 || true
done
args=()
for id in $ids; do args+=(--message-id "$id"); done
warren dlq purge --queue payment.commands "${args[@]}" --yes
verify
