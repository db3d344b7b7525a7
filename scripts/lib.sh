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
WARREN_DB=warren
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
  # Vhost, users, exchanges, queues and bindings; importing is idempotent.
  curl -sf -u guest:guest -H 'content-type: application/json' -X POST \
    --data-binary @"$ROOT/rabbitmq/definitions.json" "$MANAGEMENT_URL/api/definitions" >/dev/null \
    || die "importing rabbitmq/definitions.json failed"
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

# The components dev-up.sh runs, each as its own process (so one can be killed and restarted).
COMPONENTS=(orchestrator order inventory payment image notification gateway)
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
  case $1 in
    orchestrator) echo 127.0.0.1:9181 ;;
    order) echo 127.0.0.1:9182 ;;
    inventory) echo 127.0.0.1:9183 ;;
    payment) echo 127.0.0.1:9184 ;;
    image) echo 127.0.0.1:9185 ;;
    notification) echo 127.0.0.1:9186 ;;
    gateway) echo "${WARREN_HTTP_ADDR:-127.0.0.1:8080}" ;;
    *) die "no metrics address for component $1" ;;
  esac
}

# Starts one component in the background (logs in .warren/logs/<component>.log), with its
# metrics address. The development stack accepts injected faults, so scripts/chaos/ can
# rehearse failures.
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
  WARREN_ALLOW_CHAOS=true nohup env "${metrics[@]}" "$WARREN_BIN" run "$component" \
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
