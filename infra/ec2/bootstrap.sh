#!/usr/bin/env bash
# Installs and (re)starts one saga service on an EC2 instance (Amazon Linux 2023: AWS CLI, python3
# and systemd preinstalled). The launch template's user data writes two files and runs this as root:
#   /etc/saga/<service>.bootstrap  ARTIFACT_BUCKET, RELEASE_PREFIX and the database coordinates
#   /etc/saga/<service>.env        the service's own, non-secret environment (queue URLs, ...)
# usage: saga-bootstrap gateway|customer-api|transaction-api
set -euo pipefail

service="${1:-}"
case "$service" in
  gateway | customer-api | transaction-api) ;;
  *)
    echo "usage: $0 gateway|customer-api|transaction-api" >&2
    exit 2
    ;;
esac

conf=/etc/saga
# shellcheck source=/dev/null
source "$conf/$service.bootstrap"
: "${ARTIFACT_BUCKET:?missing in $conf/$service.bootstrap}"
: "${RELEASE_PREFIX:?missing in $conf/$service.bootstrap}"
: "${DATABASE_SECRET_ARN:?missing in $conf/$service.bootstrap}"
: "${DATABASE_HOST:?missing in $conf/$service.bootstrap}"
: "${DATABASE_PORT:?missing in $conf/$service.bootstrap}"
: "${DATABASE_NAME:?missing in $conf/$service.bootstrap}"
release="s3://$ARTIFACT_BUCKET/$RELEASE_PREFIX"

# The service runs as an unprivileged system user that owns only its working directory.
if ! id saga >/dev/null 2>&1; then
  useradd --system --no-create-home --home-dir /var/lib/saga --shell /sbin/nologin saga
fi
install -d -o saga -g saga -m 0750 /var/lib/saga

# Download to a scratch directory, then install: a restart never runs half a binary.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
aws s3 cp --only-show-errors "$release/bin/$service" "$scratch/$service"
aws s3 cp --only-show-errors "$release/ec2/saga-service@.service" "$scratch/saga-service@.service"
install -m 0755 "$scratch/$service" "/usr/local/bin/$service"
install -m 0644 "$scratch/saga-service@.service" /etc/systemd/system/saga-service@.service

# DATABASE_URL comes from the service's own secret and goes where only root can read it; systemd
# reads EnvironmentFile= as root before it drops to the saga user. The secret travels through the
# environment of one short python3 process, never through its arguments.
secret=$(aws secretsmanager get-secret-value --secret-id "$DATABASE_SECRET_ARN" \
  --query SecretString --output text)
umask 077
SAGA_SECRET="$secret" python3 -c '
import json, os, sys
from urllib.parse import quote
creds = json.loads(os.environ["SAGA_SECRET"])
user, password = quote(creds["username"], safe=""), quote(creds["password"], safe="")
host, port, name = sys.argv[1:4]
print(f"DATABASE_URL=postgres://{user}:{password}@{host}:{port}/{name}?sslmode=require")
' "$DATABASE_HOST" "$DATABASE_PORT" "$DATABASE_NAME" >"$conf/$service.secret.env.new"
mv "$conf/$service.secret.env.new" "$conf/$service.secret.env"
umask 022

systemctl daemon-reload
systemctl enable "saga-service@$service.service"
systemctl restart "saga-service@$service.service"
echo "saga-bootstrap: $service from $release started"
