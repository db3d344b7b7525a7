# Shared by the failure-rehearsal scripts: the development stack's settings, load, and the
# invariants check. Each scenario runs against scripts/dev-up.sh's stack, says what it does,
# and ends with `warren chaos verify`.
# shellcheck shell=bash

source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$ROOT"

# The rehearsals' `warren` commands run as the operator, whose chaos controls alone the
# components take (its broker user, its database role: `chaos verify` reads every schema).
if [ -z "${WARREN_AMQP_URL:-}${WARREN_DATABASE_URL:-}" ]; then
  mapfile -t operator < <(credentials operator)
  export "${operator[@]}"
fi
export WARREN_HTTP_ADDR="${WARREN_HTTP_ADDR:-127.0.0.1:8080}"
GATEWAY="http://$WARREN_HTTP_ADDR"
# The development operator token: every request below carries it (checkout runs in subshells).
WARREN_TOKEN="$(dev_token)"
export WARREN_TOKEN
# How long the system may take to settle after a fault.
SETTLE="${CHAOS_SETTLE:-180s}"
# Names unique to this run, so scenarios never disturb each other's data.
RUN="${CHAOS_RUN:-$(date +%s)-$$}"

warren() { "$WARREN_BIN" "$@"; }
say() { printf '\n### %s\n' "$*" >&2; }

require_stack() {
  [ -x "$WARREN_BIN" ] || die "no release build: run scripts/dev-up.sh first"
  # A previous rehearsal may have left the processes reconnecting: give them a minute.
  wait_for 60 curl -sf "$GATEWAY/readyz" || die "the stack is not ready at $GATEWAY: run scripts/dev-up.sh first"
  wait_for 60 warren chaos show || die "no process accepts injected faults: restart the stack with scripts/dev-up.sh"
}

# Five products and twenty customers for this run; the first customer can pay for nothing,
# so about a twentieth of the checkouts are declined.
seed() {
  local i
  for i in 1 2 3 4 5; do
    curl -sf -X PUT "$GATEWAY/v1/products/CHAOS-$RUN-$i" -H 'content-type: application/json' \
      -H "authorization: Bearer $WARREN_TOKEN" \
      --data "{\"name\": \"Chaos $i\", \"price_cents\": $((i * 250)), \"available\": 100000}" >/dev/null
  done
  for i in $(seq 0 19); do
    local balance=$(( i == 0 ? 0 : 100000000 ))
    curl -sf -X PUT "$GATEWAY/v1/accounts/chaos-$RUN-$i" -H 'content-type: application/json' \
      -H "authorization: Bearer $WARREN_TOKEN" \
      --data "{\"balance_cents\": $balance}" >/dev/null
  done
  wait_for 30 curl -sf -H "authorization: Bearer $WARREN_TOKEN" "$GATEWAY/v1/accounts/chaos-$RUN-19" \
    || die "the seed data did not arrive"
  wait_for 30 curl -sf -H "authorization: Bearer $WARREN_TOKEN" "$GATEWAY/v1/products/CHAOS-$RUN-5" \
    || die "the seed data did not arrive"
}

# One checkout the way a careful client sends it: the same Idempotency-Key until accepted.
checkout() {
  local i=$1 attempt
  local body="{\"customer_id\": \"chaos-$RUN-$((i % 20))\", \"items\": [{\"sku\": \"CHAOS-$RUN-$((i % 5 + 1))\", \"quantity\": $((i % 3 + 1))}]}"
  for attempt in $(seq 1 300); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' -X POST "$GATEWAY/v1/checkouts" \
          -H 'content-type: application/json' -H "Idempotency-Key: chaos-$RUN-$i" \
          -H "authorization: Bearer $WARREN_TOKEN" \
          --data "$body")" = 202 ]; then
      return 0
    fi
    sleep 0.2
  done
  echo "checkout $i was never accepted" >&2
  return 1
}
export -f checkout
export GATEWAY RUN

# Submits $1 checkouts (numbered from $2, default 1), 16 at a time, in the background;
# `wait_load` waits for them.
LOAD_PID=
start_load() {
  local count=$1 first=${2:-1}
  say "submitting $count checkouts (16 at a time)"
  seq "$first" $((first + count - 1)) | xargs -P 16 -I{} bash -c 'checkout {}' &
  LOAD_PID=$!
}
wait_load() {
  wait "$LOAD_PID" || die "some checkouts were never accepted"
  say "every checkout accepted"
}

# Waits until a component's process has died (a crash fault), up to $2 seconds.
wait_dead() {
  local component=$1 seconds=${2:-60}
  wait_for "$seconds" bash -c "! kill -0 $(cat "$(pidfile "$component")") 2>/dev/null"
}

# The components that must still run on their own (recovery without a restart).
check_alive() {
  local component dead=()
  for component in "$@"; do
    component_running "$component" || dead+=("$component")
  done
  [ ${#dead[@]} -eq 0 ] || { echo "FAIL: these processes died: ${dead[*]}" >&2; return 1; }
  echo "every process carried on: $*" >&2
}

# The invariants, re-checked until they hold or $SETTLE passes; exit status says which.
verify() {
  say "checking the invariants (waiting up to $SETTLE for the system to settle)"
  warren chaos verify --wait "$SETTLE"
}

# Closes every connection to the warren vhost through the management API.
drop_connections() {
  local names name count=0
  names=$(curl -sf -u guest:guest "$MANAGEMENT_URL/api/vhosts/warren/connections?columns=name" \
    | grep -o '"name":"[^"]*"' | cut -d'"' -f4)
  while IFS= read -r name; do
    [ -n "$name" ] || continue
    curl -sf -u guest:guest -X DELETE -H 'X-Reason: chaos rehearsal' \
      "$MANAGEMENT_URL/api/connections/$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$name")" \
      >/dev/null && count=$((count + 1))
  done <<<"$names"
  echo "$count"
}
