#!/usr/bin/env bash
# The AsyncAPI parser, installed from the pinned package-lock.json into node_modules here (no
# install scripts run). The bus-document test (gateway/tests/bus_document.rs) runs it.
#   check.sh install          install when missing or when the lock file changed
#   check.sh validate FILE    validate FILE, installing first when needed
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"

install() {
  command -v npm >/dev/null 2>&1 || { echo "asyncapi: npm (Node.js) is needed: see README's prerequisites" >&2; exit 1; }
  local stamp=node_modules/.installed-lock
  if [[ -f $stamp ]] && cmp -s package-lock.json "$stamp"; then return 0; fi
  npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2
  cp package-lock.json "$stamp"
}

case "${1:-}" in
  install) install ;;
  validate)
    [[ $# -eq 2 ]] || { echo "usage: $0 validate FILE" >&2; exit 2; }
    install
    exec node validate.mjs "$2"
    ;;
  *)
    echo "usage: $0 install|validate FILE" >&2
    exit 2
    ;;
esac
