#!/usr/bin/env bash
# `make up`: LocalStack (reused when already running), the messaging topology, the three services
# and one sample enrollment. Stays in the foreground; Ctrl-C or SIGTERM stops everything it started.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=localstack/env.sh
source localstack/env.sh

run_dir="$root/.run"
mkdir -p "$run_dir/data"
started_localstack=0
pids=()
watcher=""

# shellcheck disable=SC2317,SC2329  # called from the EXIT trap
stop_all() {
  trap - EXIT INT TERM
  [[ -z "$watcher" ]] || kill -TERM "$watcher" 2>/dev/null || true
  if ((${#pids[@]})); then
    echo "up: stopping services" >&2
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  if ((started_localstack)); then
    echo "up: stopping LocalStack" >&2
    localstack/localstack.sh stop
  fi
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "up: building services" >&2
cargo build --quiet --bins
bin="${CARGO_TARGET_DIR:-target}/debug"

echo "up: starting LocalStack" >&2
# Own LocalStack from before it starts, so an interrupt during start-up still stops it.
if localstack/localstack.sh status; then
  echo "up: reusing the LocalStack already running" >&2
else
  started_localstack=1
  localstack/localstack.sh start >/dev/null
fi

echo "up: deploying the messaging topology" >&2
"$bin/sagactl" deploy --prefix "${NAME_PREFIX:-saga}" >"$run_dir/topology.txt"

# INSTANCES=N runs N instances of each service, competing consumers on their queues, sharing
# their service's database: PostgreSQL only. Unless *_DATABASE_URL say otherwise, each service
# gets a database saga_<service> on POSTGRES_URL (created when missing, with psql). Instance k
# listens on the service's port + 10 * (k - 1): gateways on 8080, 8090, 8100, ...
instances=${INSTANCES:-1}
[[ "$instances" =~ ^[1-9][0-9]*$ ]] || { echo "up: INSTANCES must be a positive number, not '$instances'" >&2; exit 2; }
if ((instances > 1)); then
  postgres_url=${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
  for service in customer-api transaction-api gateway; do
    var="$(echo "$service" | tr 'a-z-' 'A-Z_')_DATABASE_URL"
    if [[ -z "${!var:-}" ]]; then
      command -v psql >/dev/null 2>&1 || { echo "up: INSTANCES>1 needs PostgreSQL: set $var, or install psql to create the databases on $postgres_url" >&2; exit 2; }
      db="saga_${service//-/_}"
      if [[ -z "$(psql "$postgres_url/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]]; then
        psql "$postgres_url/postgres" -qc "CREATE DATABASE $db" >/dev/null
      fi
      export "$var=$postgres_url/$db"
    fi
    case "${!var}" in postgres://* | postgresql://*) ;; *) echo "up: INSTANCES>1 needs PostgreSQL; $var is not a postgres:// URL" >&2; exit 2 ;; esac
  done
fi

# The confirmation links the customer-api mailed, read back from the emulator's SES: one line
# "<mail id> <recipient> <link>" per link.
mail_links() {
  curl -fsS --max-time 5 "$AWS_ENDPOINT_URL/_aws/ses" | python3 -c '
import json, sys
for mail in json.load(sys.stdin).get("messages", []):
    text = (mail.get("Body") or {}).get("text_part") or ""
    to = ",".join((mail.get("Destination") or {}).get("ToAddresses") or [])
    for word in text.split():
        if "/confirm#" in word:
            print(mail.get("Id", ""), to, word)
'
}
# Every confirmation link mailed from now on is printed, so a person can open it
# (EMAIL_CONFIRMATION=required, the default: nothing is enrolled until then).
seen="$run_dir/mails-seen"
{ mail_links 2>/dev/null || true; } | cut -d' ' -f1 >"$seen"
(
  trap 'exit 0' TERM
  while sleep 2; do
    { mail_links 2>/dev/null || true; } | while read -r id to link; do
      grep -qxF "$id" "$seen" && continue
      echo "$id" >>"$seen"
      echo "up: mailed to $to, the confirmation link: $link" >&2
    done
  done
) &
watcher=$!

start() {
  local name=$1 db_var=$2 port=$3
  local db_url="${!db_var:-sqlite:$run_dir/data/$name.db}"
  local k label
  for ((k = 1; k <= instances; k++)); do
    label=$name
    ((instances == 1)) || label="$name#$k"
    HTTP_ADDR="127.0.0.1:$((port + 10 * (k - 1)))" DATABASE_URL="$db_url" TOPOLOGY_STACK="${NAME_PREFIX:-saga}-messaging" \
      "$bin/$name" > >(trap '' INT TERM; exec sed -u "s/^/[$label] /") 2>&1 &
    pids+=($!)
  done
}
# The operator routes (listing, stalled sagas, customer and points lookups) need a bearer token:
# yours if OPERATOR_TOKEN is set, else a fresh one, kept in .run/operator-token for other terminals.
if [[ -z "${OPERATOR_TOKEN:-}" ]]; then
  OPERATOR_TOKEN=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
fi
(umask 077 && printf '%s\n' "$OPERATOR_TOKEN" >"$run_dir/operator-token")

# Webhooks are signed with an Ed25519 key (Standard Webhooks, `v1a`): yours if
# WEBHOOK_SIGNING_KEYS is set, else a fresh one (`whsk_` + base64 of 32 random bytes), kept in
# .run/webhook-signing-key. Its public half is at /.well-known/webhook-keys.
if [[ -z "${WEBHOOK_SIGNING_KEYS:-}" ]]; then
  WEBHOOK_SIGNING_KEYS="whsk_$(head -c 32 /dev/urandom | base64 | tr -d '\n')"
fi
(umask 077 && printf '%s\n' "$WEBHOOK_SIGNING_KEYS" >"$run_dir/webhook-signing-key")

start customer-api CUSTOMER_API_DATABASE_URL 8081
start transaction-api TRANSACTION_API_DATABASE_URL 8082
OPERATOR_TOKEN="$OPERATOR_TOKEN" WEBHOOK_SIGNING_KEYS="$WEBHOOK_SIGNING_KEYS" start gateway GATEWAY_DATABASE_URL 8080

gateway=http://127.0.0.1:8080
deadline=$((SECONDS + 60))
until curl -fsS --max-time 2 "$gateway/ready" >/dev/null 2>&1; do
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "up: a service exited during start-up (see its log above)" >&2; exit 1; }
  done
  ((SECONDS < deadline)) || { echo "up: the gateway is not ready after 60 s" >&2; exit 1; }
  sleep 0.5
done

email="sample-$(date +%s)@example.com"
echo "up: submitting a sample enrollment for $email" >&2
# `Prefer: wait` holds the answer until the saga ends (201), waits for the owner of the address
# to confirm it (202, `awaiting_confirmation`) or the wait is over (202).
answer=$(mktemp)
headers=$(mktemp)
code=$(curl -sS -o "$answer" -D "$headers" -w '%{http_code}' -H 'content-type: application/json' -H 'prefer: wait=30' \
  -d "{\"name\": \"Sample Customer\", \"email\": \"$email\"}" "$gateway/api/enrollments") || code=000
case "$code" in
  201) echo "up: the sample enrollment ended: $(cat "$answer")" >&2 ;;
  202)
    if grep -q '"status":"awaiting_confirmation"' "$answer"; then
      # Confirmed as a person would: with the link from the mail (its token is after the `#`).
      link=""
      for _ in $(seq 60); do
        link=$({ mail_links 2>/dev/null || true; } | awk -v to="$email" '$2 == to { print $3; exit }')
        [[ -z "$link" ]] || break
        sleep 0.5
      done
      if [[ -z "$link" ]]; then
        echo "up: no confirmation mail to $email after 30 s; see the customer-api's log above" >&2
      else
        echo "up: confirming the sample enrollment with the link mailed to $email" >&2
        curl -sS -o /dev/null -H 'content-type: application/json' -d "{\"token\": \"${link#*#}\"}" "$gateway/api/confirmations"
        # Followed at its view key's address (the `Location` of the answer), not at its id.
        location=$(tr -d '\r' <"$headers" | awk 'tolower($1) == "location:" { print $2; exit }')
        curl -sS -o "$answer" -H 'prefer: wait=30' "$gateway$location" || true
        echo "up: the sample enrollment, once confirmed: $(cat "$answer")" >&2
      fi
    else
      echo "up: the sample enrollment is still running after 30 s: $(cat "$answer")" >&2
    fi
    ;;
  *) echo "up: the gateway did not accept the sample enrollment (HTTP $code); see its log above" >&2 ;;
esac
rm -f "$answer" "$headers"
echo "up: the system is running; the gateway answers on $gateway. Ctrl-C stops everything." >&2
if ((instances > 1)); then
  echo "up: $instances instances of each service on PostgreSQL; gateways on ports $(seq -s ' ' 8080 10 $((8080 + 10 * (instances - 1))))" >&2
fi
echo "up: the enrollment page: $gateway/" >&2
echo "up: the API reference: $gateway/docs (OpenAPI document: $gateway/openapi.json)" >&2
echo "up: operator routes take the token in .run/operator-token, e.g." >&2
echo "up:   curl -H \"Authorization: Bearer \$(cat .run/operator-token)\" '$gateway/api/enrollments?limit=10'" >&2

# Stay up until interrupted or until a service dies (then stop the rest).
wait -n "${pids[@]}"
echo "up: a service exited; stopping the others" >&2
exit 1
