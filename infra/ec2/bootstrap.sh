#!/usr/bin/env bash
# Installs and (re)starts one saga service on an EC2 instance (Amazon Linux 2023: AWS CLI, curl,
# python3 and systemd preinstalled). The launch template's user data writes two files, checks
# this script against the release manifest and runs it as root:
#   /etc/saga/<service>.bootstrap  the release (bucket, prefix, manifest SHA-256), the database
#                                  coordinates, the secrets to read and the service's log group
#   /etc/saga/<service>.env        the service's own, non-secret environment (queue URLs, ...)
# Running it again by hand re-reads the secrets and restarts the service (DEPLOY.md: rotating the
# operator token, the webhook signing keys).
# usage: saga-bootstrap gateway|customer-api|transaction-api
# SAGA_ROOT (tests only) puts every path it writes under another directory.
set -euo pipefail

service="${1:-}"
case "$service" in
  gateway | customer-api | transaction-api) ;;
  *)
    echo "usage: $0 gateway|customer-api|transaction-api" >&2
    exit 2
    ;;
esac

root="${SAGA_ROOT:-}"
conf="$root/etc/saga"
# shellcheck source=/dev/null
source "$conf/$service.bootstrap"
: "${ARTIFACT_BUCKET:?missing in $conf/$service.bootstrap}"
: "${RELEASE_PREFIX:?missing in $conf/$service.bootstrap}"
: "${RELEASE_MANIFEST_SHA256:?missing in $conf/$service.bootstrap}"
: "${DATABASE_SECRET_ARN:?missing in $conf/$service.bootstrap}"
: "${APP_DATABASE_SECRET_ARN:?missing in $conf/$service.bootstrap}"
: "${DATABASE_HOST:?missing in $conf/$service.bootstrap}"
: "${DATABASE_PORT:?missing in $conf/$service.bootstrap}"
: "${DATABASE_NAME:?missing in $conf/$service.bootstrap}"
: "${DATABASE_CA_BUNDLE_URL:?missing in $conf/$service.bootstrap}"
: "${LOG_GROUP:?missing in $conf/$service.bootstrap}"
release="s3://$ARTIFACT_BUCKET/$RELEASE_PREFIX"

fail() {
  echo "saga-bootstrap: $*; refusing to start $service" >&2
  exit 1
}
# Past the start: the service runs, but nothing ships its log.
fail_shipping() {
  echo "saga-bootstrap: $*; $service runs, but its log stays on the instance ($LOG_GROUP gets nothing)" >&2
  exit 1
}

# Download to a scratch directory and check everything before installing anything: a restart
# never runs half a binary, nor a file that is not the release the stack names.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
fetch() {
  mkdir -p "$scratch/$(dirname "$1")"
  aws s3 cp --only-show-errors "$release/$1" "$scratch/$1"
}
# The stack holds the manifest's SHA-256 (ReleaseManifestSha256); the manifest holds each
# file's. A file the manifest does not list gets an empty expectation, which nothing matches.
verify() {
  local file="$1" want="$2" have
  have=$(sha256sum "$scratch/$file" | cut -d' ' -f1)
  [[ "$have" == "$want" ]] || fail "$release/$file has SHA-256 $have, the release says ${want:-nothing}"
}
fetch manifest.sha256
verify manifest.sha256 "$RELEASE_MANIFEST_SHA256"
files=("bin/$service" "ec2/saga-service@.service")
for file in "${files[@]}"; do
  fetch "$file"
  verify "$file" "$(awk -v f="$file" '$2 == f { print $1 }' "$scratch/manifest.sha256")"
done

# The database's certificate is verified (sslmode=verify-full: the CA and the host name) against
# the region's RDS CA bundle, fetched from AWS's trust store over HTTPS (authenticated by the
# system's CAs) at every boot rather than shipped in the release, so it follows AWS's CA rotations.
curl --fail --silent --show-error --proto '=https' --tlsv1.2 --retry 5 --max-time 60 \
  "$DATABASE_CA_BUNDLE_URL" -o "$scratch/rds-ca-bundle.pem" ||
  fail "cannot fetch the RDS CA bundle from $DATABASE_CA_BUNDLE_URL"
grep -q -- '-----BEGIN CERTIFICATE-----' "$scratch/rds-ca-bundle.pem" ||
  fail "$DATABASE_CA_BUNDLE_URL holds no certificate"

# The secrets. Two database users (decision 0043): the owner (the RDS master user, the service's
# DatabaseSecret) only migrates, below, through this script's environment, never written to
# disk; the service connects as its application role (AppDatabaseSecret), which may read and
# write rows and nothing else. DATABASE_URL and, for the gateway, OPERATOR_TOKEN and
# WEBHOOK_SIGNING_KEYS go where only root can read them; systemd reads EnvironmentFile= as root
# before it drops to the saga user. A secret travels through the environment of one short
# python3 process, never through its arguments, and is never printed.
secret=$(aws secretsmanager get-secret-value --secret-id "$DATABASE_SECRET_ARN" \
  --query SecretString --output text)
app_secret=$(aws secretsmanager get-secret-value --secret-id "$APP_DATABASE_SECRET_ARN" \
  --query SecretString --output text)
operator_token=""
if [[ -n "${OPERATOR_TOKEN_SECRET_ARN:-}" ]]; then
  operator_token=$(aws secretsmanager get-secret-value --secret-id "$OPERATOR_TOKEN_SECRET_ARN" \
    --query SecretString --output text)
  # One line of letters and digits: nothing in an EnvironmentFile can misread it.
  [[ "$operator_token" =~ ^[A-Za-z0-9]{32,}$ ]] ||
    fail "the operator token must be at least 32 letters and digits (see DEPLOY.md)"
fi
# The keys that sign webhooks (decision 0044), for the gateway's WEBHOOK_SIGNING_KEYS: the
# secret is a comma-separated list, the signing key first, of `whsk_` keys (base64 of a 32-byte
# Ed25519 seed) or words of at least 43 letters and digits (what CloudFormation generates, 256
# bits and more), each of which stands for the key `whsk_` + base64(SHA-256(word)): the same on
# every instance. Checked here, naming only an entry's position, never its text.
webhook_keys=""
if [[ -n "${WEBHOOK_SIGNING_KEYS_SECRET_ARN:-}" ]]; then
  webhook_secret=$(aws secretsmanager get-secret-value --secret-id "$WEBHOOK_SIGNING_KEYS_SECRET_ARN" \
    --query SecretString --output text)
  webhook_keys=$(SAGA_SECRET="$webhook_secret" python3 -c '
import base64, binascii, hashlib, os, re, sys
keys = []
for n, entry in enumerate(os.environ["SAGA_SECRET"].split(","), 1):
    entry = entry.strip()
    if not entry:
        continue
    if re.fullmatch(r"[A-Za-z0-9]{43,}", entry):
        keys.append("whsk_" + base64.b64encode(hashlib.sha256(entry.encode()).digest()).decode())
        continue
    try:
        seed = base64.b64decode(entry.removeprefix("whsk_"), validate=True)
    except (binascii.Error, ValueError):
        seed = b""
    if not entry.startswith("whsk_") or len(seed) != 32 or base64.b64encode(seed).decode() != entry[5:]:
        sys.exit(f"entry {n} is neither whsk_ and the base64 of 32 bytes nor 43 or more letters and digits")
    keys.append(entry)
if not keys:
    sys.exit("it names no key")
print(",".join(keys))
') || fail "the webhook signing keys secret is not a list of keys (see DEPLOY.md, \"Callbacks\")"
  unset webhook_secret
fi
database_url() {
  SAGA_SECRET="$1" python3 -c '
import json, os, sys
from urllib.parse import quote
creds = json.loads(os.environ["SAGA_SECRET"])
user, password = quote(creds["username"], safe=""), quote(creds["password"], safe="")
host, port, name, ca = sys.argv[1:5]
tls = "sslmode=verify-full&sslrootcert=" + quote(ca, safe="/")
print(f"postgres://{user}:{password}@{host}:{port}/{name}?{tls}")
' "$DATABASE_HOST" "$DATABASE_PORT" "$DATABASE_NAME" "/etc/saga/rds-ca-bundle.pem"
}
owner_url=$(database_url "$secret")
app_url=$(database_url "$app_secret")
umask 077
{
  printf 'DATABASE_URL=%s\n' "$app_url"
  if [[ -n "$operator_token" ]]; then printf 'OPERATOR_TOKEN=%s\n' "$operator_token"; fi
  if [[ -n "$webhook_keys" ]]; then printf 'WEBHOOK_SIGNING_KEYS=%s\n' "$webhook_keys"; fi
} >"$conf/$service.secret.env.new"
umask 022

# Everything checked: install. The service runs as an unprivileged system user that owns only
# its working directory.
if ! id saga >/dev/null 2>&1; then
  useradd --system --no-create-home --home-dir /var/lib/saga --shell /sbin/nologin saga
fi
install -d -m 0750 "$root/var/lib/saga"
chown saga:saga "$root/var/lib/saga"
# The service's output: systemd appends it to /var/log/saga/<service>.log (see the unit), in a
# directory only root reads. logrotate copies and truncates the file once it passes 100 MiB
# (systemd holds it open for the service, which could not reopen it), checking hourly rather
# than daily so that a burst cannot fill the disk; the agent notices the truncation and reads on
# from the start of the file.
install -d -m 0750 "$root/var/log/saga"
printf '%s\n' '/var/log/saga/*.log {' '    size 100M' '    rotate 5' '    compress' \
  '    delaycompress' '    copytruncate' '    missingok' '    notifempty' '}' >"$scratch/logrotate"
install -D -m 0644 "$scratch/logrotate" "$root/etc/logrotate.d/saga"
printf '%s\n' '[Timer]' 'OnCalendar=' 'OnCalendar=hourly' >"$scratch/logrotate-hourly"
install -D -m 0644 "$scratch/logrotate-hourly" "$root/etc/systemd/system/logrotate.timer.d/saga-hourly.conf"
install -D -m 0644 "$scratch/rds-ca-bundle.pem" "$conf/rds-ca-bundle.pem"
install -D -m 0755 "$scratch/bin/$service" "$root/usr/local/bin/$service"
install -D -m 0644 "$scratch/ec2/saga-service@.service" "$root/etc/systemd/system/saga-service@.service"
mv "$conf/$service.secret.env.new" "$conf/$service.secret.env"

# Migrate as the owner, as the saga user, then set up the application role the service connects
# as (`<service> migrate`); a release whose migrations fail starts nothing.
MIGRATE_DATABASE_URL="$owner_url" DATABASE_URL="$app_url" \
  runuser -u saga -- "$root/usr/local/bin/$service" migrate ||
  fail "$service migrate failed (its log is above)"
unset owner_url secret

systemctl daemon-reload
systemctl enable "saga-service@$service.service"
systemctl restart "saga-service@$service.service"
echo "saga-bootstrap: $service from $release (manifest $RELEASE_MANIFEST_SHA256) started"

# Ship the log: the CloudWatch agent (Amazon Linux's amazon-cloudwatch-agent package) tails the
# file into the service's own log group, one stream per instance, named after the instance id.
# It is installed after the service has started, so the package download never delays the health
# checks, and it reads the file from its beginning, so the lines written before it started are
# shipped too. It runs as root (the directory is root's) and only ships the file: no metrics, no
# log group or retention changes (the stack owns both), so the instance role needs nothing but
# writing to that one log group.
SAGA_LOG="/var/log/saga/$service.log" SAGA_LOG_GROUP="$LOG_GROUP" python3 -c '
import json, os
print(json.dumps({
    "agent": {"run_as_user": "root"},
    "logs": {"logs_collected": {"files": {"collect_list": [{
        "file_path": os.environ["SAGA_LOG"],
        "log_group_name": os.environ["SAGA_LOG_GROUP"],
        "log_stream_name": "{instance_id}",
    }]}}},
}, indent=2))
' >"$conf/cloudwatch-agent.json"
dnf install --assumeyes --quiet amazon-cloudwatch-agent logrotate ||
  fail_shipping "cannot install amazon-cloudwatch-agent and logrotate"
PATH="$PATH:/opt/aws/amazon-cloudwatch-agent/bin" amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 \
  -c "file:$conf/cloudwatch-agent.json" -s ||
  fail_shipping "the CloudWatch agent did not start"
systemctl enable logrotate.timer
systemctl restart logrotate.timer
echo "saga-bootstrap: $service ships its log to $LOG_GROUP"
