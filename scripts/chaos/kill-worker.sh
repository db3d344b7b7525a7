#!/usr/bin/env bash
# Kills a worker with SIGKILL in the middle of a load (default: payment), restarts it, and
# checks that nothing was lost or doubled: what it had not acked comes back from the broker.
# Usage: scripts/chaos/kill-worker.sh [component] [checkouts]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
component=${1:-payment}
count=${2:-300}
require_stack
seed
start_load "$count"
sleep 2
say "kill -9 $component (pid $(cat "$(pidfile "$component")")), down for 3 s, then restart it"
stop_component "$component" KILL
sleep 3
start_component "$component"
wait_load
verify
