#!/usr/bin/env bash
# Half the charges are declined while every compensation command fails for 20 s. The
# compensations are retried (delayed retry tiers, then the orchestrator's own re-sends) and
# every declined checkout still ends compensated, with its stock released.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_stack
trap 'warren chaos clear >/dev/null 2>&1 || true' EXIT
seed
say "declining half the charges; compensations fail for 20 s"
warren chaos set --decline-rate 0.5 --fail-compensations-for 20s
start_load 60
wait_load
warren chaos set --decline-rate 0 >/dev/null
sleep 20
warren chaos show
warren chaos clear >/dev/null
verify
