#!/usr/bin/env bash
# moto in server mode, from a virtual environment this script creates (infra/moto/.venv) with
# the pinned versions of requirements.txt and constraints.txt.
#   moto.sh install   create/refresh the venv from requirements.txt; prints the moto_server path
#   moto.sh path      print the moto_server path (installing first when needed)
# The deploy test starts its own moto_server on a free port with that executable.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv="${MOTO_VENV:-$here/.venv}"
python="${PYTHON:-python3}"

install() {
  local stamp="$venv/.installed" want
  want=$(cat "$here/requirements.txt" "$here/constraints.txt" | sha256sum | cut -d' ' -f1)
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return 0; fi
  echo "moto: creating virtual environment in $venv (about a minute)" >&2
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    -r "$here/requirements.txt" -c "$here/constraints.txt"
  echo "$want" >"$stamp"
}

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
