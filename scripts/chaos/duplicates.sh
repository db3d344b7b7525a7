#!/usr/bin/env bash
# Every outgoing message is published twice for a while: each consumer's inbox must absorb the
# second copy, so every effect still happens once.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_stack
trap 'warren chaos clear >/dev/null 2>&1 || true' EXIT
seed
say "publishing every message twice"
warren chaos set --duplicate-rate 1
start_load 200
wait_load
warren chaos show
warren chaos clear >/dev/null
verify
