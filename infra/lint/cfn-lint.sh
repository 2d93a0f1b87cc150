#!/usr/bin/env bash
# cfn-lint from a small virtual environment of its own (infra/lint/.venv), with the pinned
# versions of requirements.txt and constraints.txt: linting never needs LocalStack's environment.
#   cfn-lint.sh install          create/refresh the venv; prints the cfn-lint path
#   cfn-lint.sh run [ARGS...]    lint ARGS (default: infra/*.yaml), installing first when needed
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
venv="${CFN_LINT_VENV:-$here/.venv}"

# shellcheck source=localstack/pyvenv.sh
source "$root/localstack/pyvenv.sh"
install() { pyvenv_install "$venv" cfn-lint "$here/requirements.txt" "$here/constraints.txt"; }

case "${1:-}" in
  install)
    install
    echo "$venv/bin/cfn-lint"
    ;;
  run)
    shift
    install
    if (($# == 0)); then
      cd "$root"
      set -- infra/*.yaml
    fi
    exec "$venv/bin/cfn-lint" "$@"
    ;;
  *)
    echo "usage: $0 install|run [cfn-lint arguments]" >&2
    exit 2
    ;;
esac
