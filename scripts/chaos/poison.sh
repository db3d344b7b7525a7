#!/usr/bin/env bash
# Sends the payment queue a message that is not JSON and one that breaks its schema. Both must
# be parked with their reason (never applied, never looping); then they are purged.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_stack
say "sending two poison messages to payment.commands"
ids=$(warren --json chaos poison --queue payment.commands \
  | python3 -c 'import json, sys; print(" ".join(m["message_id"] for m in json.load(sys.stdin)["sent"]))')
purge=()
for id in $ids; do purge+=(--message-id "$id"); done
# Whatever happens, take this rehearsal's messages out of the parking queue again.
trap 'warren dlq purge --queue payment.commands "${purge[@]}" --yes >/dev/null 2>&1 || true' EXIT
for id in $ids; do
  wait_for 30 warren dlq show "$id" || die "poison message $id was not parked"
  say "parked: $id, $(warren dlq show "$id" | grep -a -m1 -i 'reason')"
done
warren dlq purge --queue payment.commands "${purge[@]}" --yes
verify
