#!/usr/bin/env bash
# schemathesis from a virtual environment of its own (gateway/contract/.venv), with the pinned
# versions of requirements.txt and constraints.txt. The contract test (gateway/tests/
# api_document.rs) runs it against a real gateway; `make test` installs it up front.
#   schemathesis.sh install         create/refresh the venv; prints the `st` path
#   schemathesis.sh run [ARGS...]   run `st run ARGS`, installing first when needed
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv="${SCHEMATHESIS_VENV:-$here/.venv}"
# shellcheck source=localstack/pyvenv.sh
source "$here/../../localstack/pyvenv.sh"
install() { pyvenv_install "$venv" schemathesis "$here/requirements.txt" "$here/constraints.txt"; }

case "${1:-}" in
  install)
    install
    echo "$venv/bin/st"
    ;;
  run)
    shift
    install
    exec "$venv/bin/st" --config-file "$here/schemathesis.toml" run "$@"
    ;;
  *)
    echo "usage: $0 install|run [st run arguments]" >&2
    exit 2
    ;;
esac
