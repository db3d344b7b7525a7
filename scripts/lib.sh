# Shared by dev-up.sh, dev-down.sh and test.sh: make sure PostgreSQL and RabbitMQ are installed,
# running and set up for Warren. Installs with apt where a server is missing.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE="$ROOT/.warren"
mkdir -p "$STATE/logs"

PG_HOST=127.0.0.1
PG_PORT=5432
# The password only matters where PostgreSQL asks for one (a fresh Debian install); under
# trust authentication it is ignored.
PG_ADMIN_URL="postgres://postgres:postgres@$PG_HOST:$PG_PORT/postgres"
WARREN_DB="${WARREN_DB:-warren}"
MANAGEMENT_URL=http://127.0.0.1:15672
# RabbitMQ's own Prometheus endpoint (plugin rabbitmq_prometheus): /metrics for node totals,
# /metrics/detailed?vhost=warren&family=queue_coarse_metrics for each queue's depth.
RABBITMQ_PROMETHEUS_URL=http://127.0.0.1:15692

# dev-up.sh sets RECORD_STARTS so that dev-down.sh stops only the servers dev-up.sh started.
log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  if [ -z "${APT_UPDATED:-}" ]; then
    as_root apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@"
}

# Waits up to $1 seconds for the command that follows to succeed.
wait_for() {
  local seconds=$1; shift
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.5
  done
}

ensure_tools() {
  local missing=()
  command -v curl >/dev/null || missing+=(curl)
  command -v psql >/dev/null || missing+=(postgresql-client)
  # The fuzz crate's check builds libFuzzer (C++); scripts/api-check.sh makes a Python venv.
  command -v g++ >/dev/null || missing+=(g++)
  command -v python3 >/dev/null || missing+=(python3)
  python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}" ca-certificates
  command -v cargo >/dev/null || die "cargo is missing: install Rust with rustup (https://rustup.rs), then run this again"
}

ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null; then
    log "installing PostgreSQL"
    apt_install postgresql
  fi
  if ! pg_isready -h $PG_HOST -p $PG_PORT -q; then
    local version
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    [ -n "$version" ] || die "PostgreSQL is installed but has no cluster under /etc/postgresql"
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
    [ -z "${RECORD_STARTS:-}" ] || echo "$version" > "$STATE/started-postgres"
    wait_for 60 pg_isready -h $PG_HOST -p $PG_PORT -q || die "PostgreSQL did not start"
  fi
  if ! psql "$PG_ADMIN_URL" -qtAc 'SELECT 1' >/dev/null 2>&1; then
    # A fresh install authenticates TCP logins by password: give postgres the one we use.
    as_root runuser -u postgres -- psql -qc "ALTER USER postgres PASSWORD 'postgres'"
  fi
  # Outbox rows are deleted as they are published and saga rows rewritten at every step: without
  # autovacuum (some machines turn it off) dead rows pile up and every claim gets slower.
  if [ "$(psql "$PG_ADMIN_URL" -qtAc 'SHOW autovacuum')" != on ]; then
    log "turning PostgreSQL's autovacuum on"
    psql "$PG_ADMIN_URL" -qc "ALTER SYSTEM SET autovacuum = on" -c "SELECT pg_reload_conf()" >/dev/null
  fi
  if [ "$(psql "$PG_ADMIN_URL" -qtAc "SELECT 1 FROM pg_database WHERE datname = '$WARREN_DB'")" != 1 ]; then
    log "creating database $WARREN_DB"
    psql "$PG_ADMIN_URL" -qc "CREATE DATABASE $WARREN_DB"
  fi
}

# `ping` answers quickly; `rabbitmqctl status` can hang for minutes on a busy node.
rabbit_running() { as_root timeout 30 rabbitmq-diagnostics -q ping >/dev/null 2>&1; }

ensure_rabbitmq() {
  if ! command -v rabbitmq-server >/dev/null; then
    log "installing RabbitMQ"
    apt_install rabbitmq-server
  fi
  if ! rabbit_running; then
    log "starting RabbitMQ"
    as_root rabbitmq-server -detached
    [ -z "${RECORD_STARTS:-}" ] || touch "$STATE/started-rabbitmq"
  fi
  # The node answers pings before it has finished booting; then wait for the boot.
  wait_for 120 rabbit_running || die "RabbitMQ did not start"
  as_root timeout 150 rabbitmqctl -q await_startup --timeout 120 || die "RabbitMQ did not finish booting"
  # The management plugin (UI and HTTP API on 15672) and the Prometheus plugin (15692), as
  # rabbitmq/enabled_plugins has them for the containers. Enabling is idempotent, and the
  # plugin CLI can print its answer and then hang: look at what the plugins serve instead, and
  # enable only when one of them does not answer.
  if ! curl -sf --max-time 20 -o /dev/null -u guest:guest "$MANAGEMENT_URL/api/overview" \
     || ! curl -sf --max-time 20 -o /dev/null "$RABBITMQ_PROMETHEUS_URL/metrics"; then
    log "enabling the management and prometheus plugins"
    as_root timeout 120 rabbitmq-plugins -q enable rabbitmq_management rabbitmq_prometheus >/dev/null || true
  fi
  wait_for 60 curl -sf -u guest:guest "$MANAGEMENT_URL/api/overview" || die "the management API does not answer on $MANAGEMENT_URL"
  # Metrics are for watching, not for Warren to work: a broker without them only gets a warning.
  wait_for 30 curl -sf --max-time 10 -o /dev/null "$RABBITMQ_PROMETHEUS_URL/metrics" \
    || log "warning: RabbitMQ's Prometheus endpoint does not answer on $RABBITMQ_PROMETHEUS_URL/metrics"
  # Vhost, users and their permissions, exchanges, queues and bindings; importing is
  # idempotent, but leaves the users without a password: ensure_broker_users gives them theirs.
  curl -sf -u guest:guest -H 'content-type: application/json' -X POST \
    --data-binary @"$ROOT/rabbitmq/definitions.json" "$MANAGEMENT_URL/api/definitions" >/dev/null \
    || die "importing rabbitmq/definitions.json failed"
  ensure_broker_users
}

# Credentials. Every broker user of rabbitmq/definitions.json (one per component, and the
# operator's) and every database role of migrations/20261201000010_roles.sql gets a password of
# its own, generated on first use into .warren/secrets/rabbitmq/<user> and
# .warren/secrets/postgres/<role> (mode 600; .warren is git-ignored). Components read theirs
# from the file (WARREN_AMQP_PASSWORD_FILE, WARREN_DATABASE_PASSWORD_FILE), so no password is
# ever in an environment or on a command line. The same files are docker-compose.yml's secrets.
SECRETS="$STATE/secrets"

# The components (and the operator), as they declare themselves: deploy/components.tsv, written
# by `warren components` (a test holds it current). Columns: name, broker user, database role,
# metrics port.
component_table() { grep -v '^#' "$ROOT/deploy/components.tsv"; }
mapfile -t BROKER_USERS < <(component_table | cut -f2)
mapfile -t DB_ROLES < <(component_table | cut -f3)

# Prints the path of the secret $2 of kind $1 (rabbitmq, postgres), generating it first if need be.
secret() {
  local file="$SECRETS/$1/$2"
  if [ ! -s "$file" ]; then
    (
      umask 077
      mkdir -p "$SECRETS/$1"
      head -c 48 /dev/urandom | base64 | tr -d '/+=\n' | cut -c1-40 >"$file.new"
      mv "$file.new" "$file"
    )
  fi
  chmod 600 "$file"
  echo "$file"
}

# Every secret docker-compose.yml names, the compose PostgreSQL's superuser's included, and
# their copies in .warren/compose-secrets/: compose bind-mounts a secret file with its host mode
# and owner, which the components (not root in their containers) could not read at mode 600.
# The copies are readable by all, in a directory only its owner may enter (700).
ensure_secrets() {
  local name kind
  for name in "${BROKER_USERS[@]}"; do secret rabbitmq "$name" >/dev/null; done
  for name in "${DB_ROLES[@]}" postgres; do secret postgres "$name" >/dev/null; done
  (umask 077 && mkdir -p "$STATE/compose-secrets")
  chmod 700 "$STATE/compose-secrets"
  for kind in rabbitmq postgres; do
    mkdir -p "$STATE/compose-secrets/$kind"
    for name in "$SECRETS/$kind"/*; do
      install -m 644 "$name" "$STATE/compose-secrets/$kind/$(basename "$name")"
    done
  done
}

# Gives each broker user the password of its file (the operator keeps the management tag of the
# definitions, to log into the management UI), and takes guest's permissions on the warren vhost
# away: guest is for tests, in vhosts of their own.
ensure_broker_users() {
  local user tags
  for user in "${BROKER_USERS[@]}"; do
    tags=""
    [ "$user" != warren-operator ] || tags=monitoring
    # Through standard input: the password is on no command line (printf is a shell builtin).
    printf '{"password": "%s", "tags": "%s"}' "$(cat "$(secret rabbitmq "$user")")" "$tags" \
      | curl -sf -u guest:guest -H 'content-type: application/json' -X PUT --data-binary @- \
          "$MANAGEMENT_URL/api/users/$user" >/dev/null \
      || die "cannot set the password of the broker user $user"
  done
  curl -s -o /dev/null -u guest:guest -X DELETE "$MANAGEMENT_URL/api/permissions/warren/guest" || true
}

# Each database role (created by the migration; here too, should this run first) may log in with
# the password of its file. Roles belong to the whole cluster.
ensure_db_roles() {
  local role password
  for role in "${DB_ROLES[@]}"; do
    password=$(cat "$(secret postgres "$role")")
    password=${password//\'/\'\'}   # as an SQL string
    # Through standard input, not psql's command line.
    psql "$PG_ADMIN_URL" -q -v ON_ERROR_STOP=1 >/dev/null <<SQL || die "cannot set up the database role $role"
DO \$\$ BEGIN CREATE ROLE $role; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$;
ALTER ROLE $role LOGIN PASSWORD '$password';
SQL
  done
}

# The database role of a component (or of the operator).
db_role() {
  local role
  role=$(component_table | awk -F'\t' -v name="$1" '$1 == name { print $3 }')
  [ -n "$role" ] || die "no database role for $1 in deploy/components.tsv"
  echo "$role"
}

# The settings that log component $1 (or the operator) into the broker as its user and into the
# database as its role, one NAME=value per line, for `env`. Only file names: no password.
credentials() {
  local role
  role=$(db_role "$1")
  echo "WARREN_AMQP_URL=amqp://warren-$1@127.0.0.1:5672/warren"
  echo "WARREN_AMQP_PASSWORD_FILE=$(secret rabbitmq "warren-$1")"
  echo "WARREN_DATABASE_URL=postgres://$role@$PG_HOST:$PG_PORT/$WARREN_DB"
  echo "WARREN_DATABASE_PASSWORD_FILE=$(secret postgres "$role")"
}

# Runs a command (the warren CLI) as the operator: `as_operator "$WARREN_BIN" dlq list`.
as_operator() {
  local settings
  mapfile -t settings < <(credentials operator)
  env "${settings[@]}" "$@"
}

# docker-compose (v1.29, Debian's package) checks docker-compose.yml with `docker-compose config
# -q`, which needs no Docker engine. (`docker compose`, v2, is not packaged for Debian 12.)
ensure_compose() {
  if ! command -v docker-compose >/dev/null; then
    log "installing docker-compose"
    apt_install docker-compose
  fi
}

# The browser tests drive headless Chromium through chromedriver, both from Debian's packages.
ensure_chromium() {
  if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    log "installing Chromium and chromedriver"
    apt_install chromium chromium-driver
  fi
}

# A vhost of its own for the tests, so they never touch a running stack's queues. It starts
# empty, and vhosts left by interrupted end-to-end tests (warren_t...) are removed.
ensure_test_vhost() {
  local stale
  stale=$(curl -sf -u guest:guest "$MANAGEMENT_URL/api/vhosts?columns=name" \
    | grep -o '"name":"warren_t[a-z0-9_]*"' | cut -d'"' -f4 || true)
  for vhost in $stale; do
    curl -sf -u guest:guest -X DELETE "$MANAGEMENT_URL/api/vhosts/$vhost" >/dev/null || true
  done
  curl -sf -u guest:guest -X DELETE "$MANAGEMENT_URL/api/vhosts/warren_test" >/dev/null || true
  curl -sf -u guest:guest -X PUT "$MANAGEMENT_URL/api/vhosts/warren_test" >/dev/null
  curl -sf -u guest:guest -H 'content-type: application/json' -X PUT \
    --data '{"configure":".*","write":".*","read":".*"}' \
    "$MANAGEMENT_URL/api/permissions/warren_test/guest" >/dev/null
}

# The components dev-up.sh runs, each as its own process (so one can be killed and restarted):
# every one of deploy/components.tsv, the gateway last, so it takes requests once they can be
# served.
mapfile -t COMPONENTS < <(component_table | cut -f1 | grep -vx -e gateway -e operator; echo gateway)
WARREN_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/warren"

pidfile() { echo "$STATE/$1.pid"; }

component_running() {
  local file; file=$(pidfile "$1")
  [ -f "$file" ] && kill -0 "$(cat "$file")" 2>/dev/null
}

# Where each component serves /metrics, /healthz and /readyz (WARREN_METRICS_ADDR), as
# deploy/prometheus/prometheus.local.yml scrapes them: one port each, so they can share this
# machine. The gateway serves them on its HTTP address instead.
metrics_addr() {
  local port
  [ "$1" != gateway ] || { echo "${WARREN_HTTP_ADDR:-127.0.0.1:8080}"; return; }
  port=$(component_table | awk -F'\t' -v name="$1" '$1 == name { print $4 }')
  [[ "$port" =~ ^[0-9]+$ ]] || die "no metrics port for component $1 in deploy/components.tsv"
  echo "127.0.0.1:$port"
}

# Development mode only: the gateway's token secret, made once and kept in .warren/secrets
# (git-ignored, readable by this user only). Outside development no default credential exists:
# a gateway without WARREN_JWT_KEY_FILE or WARREN_API_KEYS_FILE refuses to start.
dev_credentials() {
  local secret="$STATE/secrets/jwt-secret"
  mkdir -p "$STATE/secrets"
  chmod 700 "$STATE/secrets"
  if [ ! -s "$secret" ]; then
    (umask 077; head -c 48 /dev/urandom | base64 | tr -d '\n' >"$secret")
  fi
  export WARREN_JWT_KEY_FILE="$secret"
}

# The development operator token (scopes operator and ui), as dev-up.sh wrote it.
dev_token() {
  [ -s "$STATE/dev-token" ] || die "no $STATE/dev-token: run scripts/dev-up.sh first"
  cat "$STATE/dev-token"
}

# Starts one component in the background (logs in .warren/logs/<component>.log), with its
# metrics address, as its own broker user and database role. The development stack accepts
# injected faults (from the operator), so scripts/chaos/ can rehearse failures.
start_component() {
  local component=$1 metrics
  component_running "$component" && return 0
  if [ "$component" = gateway ]; then
    dev_credentials
    # One person trying things, and the failure rehearsals' load, come as one client.
    metrics=(-u WARREN_METRICS_ADDR "WARREN_RATE_LIMIT=${WARREN_RATE_LIMIT:-500}"
             "WARREN_RATE_BURST=${WARREN_RATE_BURST:-1000}")   # metrics only on WARREN_HTTP_ADDR
  else
    metrics=("WARREN_METRICS_ADDR=$(metrics_addr "$component")")
  fi
  local settings
  mapfile -t settings < <(credentials "$component")
  WARREN_ALLOW_CHAOS=true nohup env "${metrics[@]}" "${settings[@]}" "$WARREN_BIN" run "$component" \
    >>"$STATE/logs/$component.log" 2>&1 &
  echo $! >"$(pidfile "$component")"
}

# Stops one component: SIGTERM and its grace period, or SIGKILL with `kill`.
stop_component() {
  local component=$1 signal=${2:-TERM} file pid
  file=$(pidfile "$component")
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill "-$signal" "$pid" 2>/dev/null || true
    wait_for 30 bash -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

# Restarts the servers in place, for failure rehearsals.
restart_postgres() {
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main restart
  wait_for 60 pg_isready -h $PG_HOST -p $PG_PORT -q || die "PostgreSQL did not come back"
}

restart_rabbitmq() {
  as_root timeout 120 rabbitmqctl -q stop_app
  as_root timeout 120 rabbitmqctl -q start_app
  as_root timeout 150 rabbitmqctl -q await_startup --timeout 120 || die "RabbitMQ did not come back"
}

# Raises a memory alarm on the broker (a high watermark far below what it uses), which blocks
# every publishing connection, as a broker short of memory does; `unblock_rabbitmq` puts the
# watermark back as it was (kept in $STATE/watermark).
block_rabbitmq() {
  mkdir -p "$STATE"
  [[ -f "$STATE/watermark" ]] || as_root timeout 60 rabbitmqctl -q eval \
    'vm_memory_monitor:get_vm_memory_high_watermark().' > "$STATE/watermark"
  as_root timeout 60 rabbitmqctl -q set_vm_memory_high_watermark 0.000001
}

unblock_rabbitmq() {
  local was="0.4"
  [[ -f "$STATE/watermark" ]] && was=$(cat "$STATE/watermark")
  if [[ "$was" =~ ^\{absolute,([0-9]+)\}$ ]]; then
    as_root timeout 60 rabbitmqctl -q set_vm_memory_high_watermark absolute "${BASH_REMATCH[1]}"
  else
    as_root timeout 60 rabbitmqctl -q set_vm_memory_high_watermark "$was"
  fi
  rm -f "$STATE/watermark"
}
