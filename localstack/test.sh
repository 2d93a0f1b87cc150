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
cleanup() {
  if ((started_localstack)); then localstack/localstack.sh stop; fi
}
trap cleanup EXIT

case "$(localstack/localstack.sh start)" in
  started*) started_localstack=1 ;;
  *) echo "test: reusing the LocalStack already running" >&2 ;;
esac

echo "test: cfn-lint infra/*.yaml" >&2
localstack/.venv/bin/cfn-lint infra/*.yaml

echo "test: shellcheck and systemd-analyze on infra/ec2" >&2
infra/ec2/check.sh
# The EC2 deployment test runs against moto (infra/tests/deploy_moto.rs); install it up front.
infra/moto/moto.sh install >/dev/null

echo "test: cargo test --workspace" >&2
log=$(mktemp)
trap 'rm -f "$log"; cleanup' EXIT
status=0
cargo test --workspace --all-targets "$@" 2>&1 | tee "$log" || status=$?
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "total: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
