#!/usr/bin/env bash
# `make fault-test` and the short run in `make test`: builds the service binaries and the suite,
# makes sure the shared LocalStack answers (starting one when none does, stopping it afterwards),
# and runs `fault-test` with the arguments given. See README.md ("Fault injection").
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
# Own LocalStack from before it starts, so a failed start stops the script and an interrupt during
# start-up still stops it (same as test.sh and up.sh).
if ! localstack/localstack.sh status; then
  started_localstack=1
  localstack/localstack.sh start >/dev/null
fi

cargo build --quiet --bins
bin="${CARGO_TARGET_DIR:-target}/debug"
"$bin/fault-test" --bin-dir "$bin" "$@"
