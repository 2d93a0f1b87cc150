#!/usr/bin/env bash
# `make test`: the whole suite against a real LocalStack and real databases (SQLite files and the
# PostgreSQL server at TEST_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres).
# Starts LocalStack when none answers, and stops it again afterwards.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=localstack/env.sh
source localstack/env.sh

started_localstack=0
# shellcheck disable=SC2317,SC2329  # called from the EXIT trap
cleanup() {
  # The fault suite's runs in the background (Ctrl-C reaches them too) tear their stacks down
  # first.
  wait || true
  if ((started_localstack)); then localstack/localstack.sh stop; fi
}
trap cleanup EXIT

# Own LocalStack from before it starts, so an interrupt during start-up still stops it.
if localstack/localstack.sh status; then
  echo "test: reusing the LocalStack already running" >&2
else
  started_localstack=1
  localstack/localstack.sh start >/dev/null
fi

echo "test: cfn-lint infra/*.yaml" >&2
infra/lint/cfn-lint.sh run

echo "test: shellcheck and systemd-analyze on infra/ec2" >&2
infra/ec2/check.sh
# The EC2 deployment test runs against moto (infra/tests/deploy_moto.rs); install it up front.
infra/moto/moto.sh install >/dev/null
# The gateway's contract test runs schemathesis (gateway/tests/api_document.rs), and the
# bus-document test the AsyncAPI parser (gateway/tests/bus_document.rs).
gateway/contract/schemathesis.sh install >/dev/null
gateway/contract/asyncapi/check.sh install

echo "test: cargo test --workspace" >&2
log=$(mktemp)
trap 'rm -f "$log"; cleanup' EXIT
status=0
cargo test --workspace --all-targets "$@" 2>&1 | tee "$log" || status=$?
fault_passed=0
fault_failed=0
if ((status == 0)); then
  # The fault-injection suite, short profile: the real binaries under kill -9, SIGTERM,
  # duplicated deliveries and poison on SQLite; a database outage and two instances of every
  # service under kill -9 on PostgreSQL. The two backends run at the same time (their own stacks,
  # ports, databases and run directories; most of each phase is waiting on deadlines and
  # leases), each line prefixed with its backend.
  echo "test: fault-test --profile short, SQLite and PostgreSQL at once" >&2
  cargo build --quiet --bins
  bin="${CARGO_TARGET_DIR:-target}/debug"
  pids=()
  for backend in sqlite postgres; do
    ("$bin/fault-test" --profile short --backend "$backend" --bin-dir "$bin" 2>&1 | sed -u "s/^/[$backend] /"
      exit "${PIPESTATUS[0]}") &
    pids+=("$!")
  done
  for pid in "${pids[@]}"; do
    if wait "$pid"; then
      fault_passed=$((fault_passed + 1))
    else
      status=1
      fault_failed=$((fault_failed + 1))
    fi
  done
fi
# One closing line for the whole suite (cargo prints one per test binary; each fault-test run
# counts as one test).
awk -v fp="$fault_passed" -v ff="$fault_failed" \
  '/^test result:/ { p += $4; f += $6 } END { printf "total: %d passed, %d failed\n", p + fp, f + ff }' "$log"
exit "$status"
