#!/usr/bin/env bash
# The payment worker aborts right after a commit and before its ack, three times under load.
# Each time the broker redelivers the message to the restarted worker, whose inbox already
# holds it: the charge is not taken twice.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_stack
# Whatever happens, leave a payment worker running.
trap 'component_running payment || start_component payment' EXIT
seed
for round in 1 2 3; do
  say "payment crashes after its next commit (round $round)"
  warren chaos set --target payment --crash-rate 1 >/dev/null
  start_load 50 $((round * 100))
  wait_dead payment 60 || die "the payment worker did not crash"
  say "payment crashed; restarting it (a restarted process injects nothing)"
  rm -f "$(pidfile payment)"
  start_component payment
  wait_for 30 warren chaos show --target payment || die "the payment worker did not come back"
  wait_load
done
verify
