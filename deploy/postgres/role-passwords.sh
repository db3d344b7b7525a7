#!/usr/bin/env bash
# docker-compose.yml's one-shot `db-roles`, after the migrations (which create the roles): each
# database role may log in with the password of its secret, /run/secrets/<role>. It runs at every
# `up`, so a changed secret file changes the password. Passwords travel on standard input only.
set -euo pipefail
PGPASSFILE=$(mktemp)
export PGPASSFILE
trap 'rm -f "$PGPASSFILE"' EXIT
printf 'postgres:5432:*:postgres:%s\n' "$(cat /run/secrets/postgres)" >"$PGPASSFILE"
chmod 600 "$PGPASSFILE"
roles=()
for file in /run/secrets/warren_*; do
  role=$(basename "$file")
  password=$(cat "$file")
  password=${password//\'/\'\'}
  psql -h postgres -U postgres -d warren -q -v ON_ERROR_STOP=1 <<SQL
ALTER ROLE $role LOGIN PASSWORD '$password';
SQL
  roles+=("$role")
done
echo "database roles that may log in: ${roles[*]}"
