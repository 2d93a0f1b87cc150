#!/usr/bin/env bash
# Static checks of what runs on the instances: shellcheck on the bootstrap and the deploy
# scripts and on the launch templates' user data, and `systemd-analyze verify` on the unit in a
# scratch root that holds the system's own units plus a stand-in for the service binary (the
# unit names /usr/local/bin/%i).
# Any warning fails the check: systemd-analyze reports bad settings but still exits 0.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

shellcheck "$here/bootstrap.sh" "$here/check.sh" "$root/infra/moto/moto.sh" "$root/infra/lint/cfn-lint.sh" \
  "$root"/localstack/*.sh "$root/.ci/run"
# The launch templates' user data is a script too (it checks the release before running it).
cfn_lint=$("$root/infra/lint/cfn-lint.sh" install)
userdata=$(mktemp -d)
"$(dirname "$cfn_lint")/python" "$here/userdata.py" "$root/infra/app.yaml" "$userdata"
shellcheck --shell=bash "$userdata"/*.sh
rm -rf "$userdata"
echo "ec2-check: shellcheck clean (scripts and user data)" >&2

if ! command -v systemd-analyze >/dev/null 2>&1 || [[ ! -d /usr/lib/systemd/system ]]; then
  echo "ec2-check: systemd-analyze not available here; unit not verified" >&2
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
