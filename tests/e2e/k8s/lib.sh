# Shared settings and helpers for the e2e cluster scripts. Sourced, not run.
# Everything lives on loopback; state under $E2E_STATE, build cache under $E2E_CACHE.
set -euo pipefail

E2E_CACHE=${E2E_CACHE:-$HOME/.cache/smb3-csi-e2e}
E2E_STATE=${E2E_STATE:-/tmp/smb3-csi-e2e}
K8S_VERSION=1.20.2
K8S_BIN=$E2E_CACHE/bin
KUBECTL=$K8S_BIN/kubectl
KUBELET_DIR=$E2E_STATE/kubelet
KUBECONFIG_ADMIN=$E2E_STATE/pki/admin.kubeconfig
APISERVER_PORT=${APISERVER_PORT:-16443}
ETCD_CLIENT_PORT=${ETCD_CLIENT_PORT:-12379}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-12380}
NODE_NAME=${NODE_NAME:-e2e-node}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
E2E_DIR=$REPO_ROOT/tests/e2e/k8s

log() { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

kc() { "$KUBECTL" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

# wait_for DESCRIPTION TIMEOUT_S COMMAND...: poll until the command succeeds.
wait_for() {
  local what=$1 timeout=$2; shift 2
  local start=$SECONDS
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS - start >= timeout )); then
      log "timed out after ${timeout}s waiting for $what"
      return 1
    fi
    sleep 1
  done
}

# Daemons are started by hand (no systemd); each writes its PID to $E2E_STATE/run/<name>.pid.
pidfile() { echo "$E2E_STATE/run/$1.pid"; }
is_running() {
  local f; f=$(pidfile "$1")
  [[ -f $f ]] && kill -0 "$(cat "$f")" 2>/dev/null
}
start_daemon() {
  local name=$1; shift
  mkdir -p "$E2E_STATE/run" "$E2E_STATE/logs"
  if is_running "$name"; then log "$name already running (pid $(cat "$(pidfile "$name")"))"; return 0; fi
  log "starting $name"
  # Daemons get the usual umask whatever the caller set.
  umask 022
  setsid "$@" >>"$E2E_STATE/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$(pidfile "$name")"
}
stop_daemon() {
  local name=$1 f pid i
  f=$(pidfile "$name")
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}
