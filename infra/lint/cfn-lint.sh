#!/usr/bin/env bash
# cfn-lint from a small virtual environment of its own (infra/lint/.venv), with the pinned
# versions of requirements.txt and constraints.txt: linting never needs LocalStack's environment.
#   cfn-lint.sh install          create/refresh the venv; prints the cfn-lint path
#   cfn-lint.sh run [ARGS...]    lint ARGS (default: infra/*.yaml), installing first when needed
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
venv="${CFN_LINT_VENV:-$here/.venv}"
python="${PYTHON:-python3}"

install() {
  local stamp="$venv/.installed" want
  want=$(cat "$here/requirements.txt" "$here/constraints.txt" | sha256sum | cut -d' ' -f1)
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return 0; fi
  echo "cfn-lint: creating virtual environment in $venv (about half a minute)" >&2
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    -r "$here/requirements.txt" -c "$here/constraints.txt"
  echo "$want" >"$stamp"
}

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
