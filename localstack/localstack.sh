#!/usr/bin/env bash
# Runs LocalStack in host mode (no Docker) from a virtual environment this script creates.
#   localstack.sh install   create/refresh the venv from the pinned requirements
#   localstack.sh start     start LocalStack in the background unless one already answers;
#                           prints "started <pid>" or "reused"
#   localstack.sh stop      stop the LocalStack this script started (pid file)
#   localstack.sh status    exit 0 when LocalStack answers its health check
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv="${LOCALSTACK_VENV:-$here/.venv}"
state="${LOCALSTACK_STATE_DIR:-$here/.state}"
listen="${LOCALSTACK_LISTEN:-127.0.0.1:4566}"
health="http://$listen/_localstack/health"
pidfile="$state/localstack.pid"
logfile="$state/localstack.log"

healthy() { curl -fsS --max-time 2 "$health" >/dev/null 2>&1; }

# shellcheck source=localstack/pyvenv.sh
source "$here/pyvenv.sh"
install() { pyvenv_install "$venv" localstack "$here/requirements.txt" "$here/constraints.txt"; }

start() {
  if healthy; then echo reused; return 0; fi
  install
  mkdir -p "$state"
  # Host-mode settings: see ARCHITECTURE.md ("Running locally") for why each one is here.
  GATEWAY_LISTEN="$listen" \
  LOCALSTACK_HOST="$listen" \
  SERVICES="${LOCALSTACK_SERVICES:-sns,sqs,cloudformation,sts,iam,s3,ses}" \
  SQS_ENDPOINT_STRATEGY=path \
  SQS_DISABLE_CLOUDWATCH_METRICS=1 \
  EAGER_SERVICE_LOADING=1 \
  DISABLE_EVENTS=1 \
  SKIP_SSL_CERT_DOWNLOAD=1 \
  FILESYSTEM_ROOT="$state/filesystem" \
    setsid nohup "$venv/bin/python" -m localstack.runtime.main >"$logfile" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$pidfile"
  local deadline=$((SECONDS + ${LOCALSTACK_START_TIMEOUT:-120}))
  until healthy; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "localstack: exited during start-up; last lines of $logfile:" >&2
      tail -n 30 "$logfile" >&2
      return 1
    fi
    if ((SECONDS > deadline)); then
      echo "localstack: not healthy after ${LOCALSTACK_START_TIMEOUT:-120}s; see $logfile" >&2
      stop
      return 1
    fi
    sleep 0.5
  done
  echo "started $pid"
}

# True when $1 is a LocalStack process (a stale pid file may name an unrelated process by now).
is_localstack() {
  [[ -r "/proc/$1/cmdline" ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q 'localstack.runtime.main'
}

stop() {
  [[ -f "$pidfile" ]] || return 0
  local pid
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null && is_localstack "$pid"; then
    # setsid made it a process-group leader: stop the whole group.
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) healthy ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
