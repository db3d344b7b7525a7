#!/usr/bin/env bash
# Runs the warren CLI of the release build as the operator: its broker user (`warren dlq`,
# `chaos`, `topology apply`, `bench`) and its database role (`warren saga`, `chaos verify`),
# with the passwords of .warren/secrets/. E.g. `scripts/operator.sh dlq list`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ -x "$WARREN_BIN" ] || die "no release build: run scripts/dev-up.sh first"
as_operator "$WARREN_BIN" "$@"
