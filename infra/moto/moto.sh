#!/usr/bin/env bash
# moto in server mode, from a virtual environment this script creates (infra/moto/.venv) with
# the pinned versions of requirements.txt and constraints.txt.
#   moto.sh install   create/refresh the venv from requirements.txt; prints the moto_server path
#   moto.sh path      print the moto_server path (installing first when needed)
# The deploy test starts its own moto_server on a free port with that executable.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv="${MOTO_VENV:-$here/.venv}"

# shellcheck source=localstack/pyvenv.sh
source "$here/../../localstack/pyvenv.sh"
install() { pyvenv_install "$venv" moto "$here/requirements.txt" "$here/constraints.txt"; }

case "${1:-}" in
  install | path)
    install
    echo "$venv/bin/moto_server"
    ;;
  *)
    echo "usage: $0 install|path" >&2
    exit 2
    ;;
esac
