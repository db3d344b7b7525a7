#!/usr/bin/env bash
# Closes every broker connection of the warren vhost twice under load, as a network failure
# would. Processes recover their connections, channels and consumers on their own.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_stack
seed
start_load 300
for round in 1 2; do
  sleep 2
  say "dropping every broker connection (round $round): $(drop_connections) closed"
done
wait_load
check_alive "${COMPONENTS[@]}"
verify
