#!/usr/bin/env bash
# A fifth of the saga replies are lost between the participants' outboxes and the broker. The
# orchestrator's step timeouts notice: retriable steps are asked again, the others compensate.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_stack
trap 'warren chaos clear >/dev/null 2>&1 || true' EXIT
seed
say "losing 20% of saga replies"
warren chaos set --drop-reply-rate 0.2
start_load 100
wait_load
warren chaos show
warren chaos clear >/dev/null
verify
