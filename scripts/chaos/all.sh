#!/usr/bin/env bash
# Runs every failure rehearsal in turn against the running stack (scripts/dev-up.sh) and ends
# with PASS or FAIL. Takes a few minutes.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_stack
scenarios=(kill-worker drop-connections restart-broker restart-postgres duplicates lost-replies
           crash-after-commit compensation-outage poison)
passed=() failed=()
for scenario in "${scenarios[@]}"; do
  printf '\n===== %s =====\n' "$scenario" >&2
  start=$SECONDS
  if CHAOS_RUN="$RUN-$scenario" bash "$ROOT/scripts/chaos/$scenario.sh"; then
    passed+=("$scenario ($((SECONDS - start)) s)")
  else
    failed+=("$scenario")
  fi
done
printf '\n===== summary =====\n'
for s in "${passed[@]}"; do printf 'pass  %s\n' "$s"; done
for s in "${failed[@]}"; do printf 'FAIL  %s\n' "$s"; done
if [ ${#failed[@]} -eq 0 ]; then
  echo "PASS: ${#passed[@]} scenarios, every invariant held"
else
  echo "FAIL: ${#failed[@]} of ${#scenarios[@]} scenarios broke an invariant or did not finish"
  exit 1
fi
