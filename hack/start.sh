#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The README's run command. Sets up what is missing; with $KUBECONFIG unset brings up the local control plane
# (hack/cluster.sh), otherwise uses that cluster; installs the CRDs; starts the node plugin and the controller
# (hack/run-components.sh, once they exist) in the foreground; stops everything cleanly on Ctrl-C.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf '[start] %s\n' "$*" >&2; }

"$ROOT/hack/setup.sh"
BIN="$("$ROOT/hack/build-tools.sh" --bin-dir)"

LOCAL_CLUSTER=0
if [ -z "${KUBECONFIG:-}" ]; then
  KUBECONFIG="$("$ROOT/hack/cluster.sh" up)"
  LOCAL_CLUSTER=1
fi
export KUBECONFIG
kubectl() { "$BIN/kubectl" "$@"; }

log "installing CRDs"
kubectl apply --server-side --force-conflicts -R -f "$ROOT/crds" >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd -l app.kubernetes.io/part-of=loopsnap >/dev/null

pids=()
idle_pid=""
cleanup() {
  trap - INT TERM EXIT
  [ -n "$idle_pid" ] && kill "$idle_pid" 2>/dev/null
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$LOCAL_CLUSTER" = 1 ] && [ "${LOOPSNAP_KEEP_CLUSTER:-0}" != 1 ]; then
    log "stopping the local control plane (set LOOPSNAP_KEEP_CLUSTER=1 to keep it running)"
    "$ROOT/hack/cluster.sh" down
  fi
  log "stopped"
}
trap cleanup INT TERM EXIT

if [ -x "$ROOT/hack/run-components.sh" ]; then
  # Starts the node plugin and the controller as children of this shell; they log to .loopsnap/logs/.
  # shellcheck source=/dev/null
  source "$ROOT/hack/run-components.sh"
fi

printf '\nloopsnap is running against %s\n\n  export KUBECONFIG=%s\n  export PATH=%s:$PATH\n' "$KUBECONFIG" "$KUBECONFIG" "$BIN" >&2
printf '  kubectl get --raw /readyz\n  kubectl get volumesnapshotclasses\n\nPress Ctrl-C to stop.\n' >&2

if [ ${#pids[@]} -gt 0 ]; then
  wait -n "${pids[@]}" || true
  log "a component exited; shutting down"
else
  sleep infinity &
  idle_pid=$!
  wait "$idle_pid" || true
fi
