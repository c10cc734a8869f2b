#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The README's run command: a local cluster with a real node, and loopsnap installed on it with Helm from the
# image built here. Steps: setup (packages, npm ci, tools, TypeScript); the control plane (hack/cluster.sh)
# and the node (hack/node.sh: kubelet + containerd); the images (hack/image.sh: built only when their inputs
# changed, imported into the node's containerd); `helm upgrade --install` of charts/loopsnap with the node's
# values; then it waits. Ctrl-C tears down in order: workloads (the node is drained, so the kubelet unmounts
# their volumes while the node plugin still runs), the chart, the node, the control plane.
# LOOPSNAP_KEEP_CLUSTER=1 leaves everything running on Ctrl-C (stop it later with `hack/node.sh drain`,
# `helm uninstall`, `hack/node.sh down`, `hack/cluster.sh down`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DIR="${LOOPSNAP_CLUSTER_DIR:-$ROOT/.loopsnap}"
RELEASE=loopsnap
RELEASE_NS=loopsnap
log() { printf '[start] %s\n' "$*" >&2; }
die() { printf '[start] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "npm start runs a kubelet and containerd: run it as root"
[ -z "${KUBECONFIG:-}" ] || log "note: KUBECONFIG is ignored; npm start runs its own cluster (install on yours with helm, see README)"
"$ROOT/hack/setup.sh"
BIN="$("$ROOT/hack/build-tools.sh" --bin-dir)"
export KUBECONFIG="$DIR/kubeconfig"
helm() { "$BIN/helm" --kubeconfig "$KUBECONFIG" "$@"; }

started=0
idle=""
cleanup() {
  local rc=$?
  trap - INT TERM EXIT
  [ -z "$idle" ] || kill "$idle" 2>/dev/null || true
  if [ "$started" = 1 ] && [ "${LOOPSNAP_KEEP_CLUSTER:-0}" = 1 ]; then
    log "leaving the cluster, the node and the release running (LOOPSNAP_KEEP_CLUSTER=1)"
    exit "$rc"
  fi
  if [ "$started" = 1 ]; then
    log "stopping: workloads, chart, node, control plane"
    "$ROOT/hack/node.sh" drain || true
    helm uninstall "$RELEASE" -n "$RELEASE_NS" --wait --timeout 5m >/dev/null 2>&1 || log "helm uninstall failed"
  fi
  "$ROOT/hack/node.sh" down || rc=1
  "$ROOT/hack/cluster.sh" down || rc=1
  log "stopped"
  exit "$rc"
}
trap cleanup INT TERM EXIT

t0=$(date +%s)
node_name="$("$ROOT/hack/node.sh" up)"
started=1
"$ROOT/hack/image.sh" build >&2
"$ROOT/hack/image.sh" import --address "$DIR/node/run/containerd.sock" loopsnap busybox >&2
ref="$("$ROOT/hack/image.sh" ref loopsnap)"
log "helm upgrade --install $RELEASE (image $ref)"
helm upgrade --install "$RELEASE" "$ROOT/charts/loopsnap" -n "$RELEASE_NS" --create-namespace \
  -f "$DIR/node/chart-values.yaml" --set "image.repository=${ref%:*}" --set "image.tag=${ref##*:}" \
  --set image.pullPolicy=Never --wait --timeout 10m >/dev/null
deadline=$(( $(date +%s) + 180 ))
until "$BIN/kubectl" get csinode "$node_name" -o jsonpath='{.spec.drivers[*].name}' 2>/dev/null | grep -qw csi.loopsnap.dev; do
  [ "$(date +%s)" -lt "$deadline" ] || die "the node plugin did not register with the kubelet (kubectl -n $RELEASE_NS logs ds/loopsnap-node)"
  sleep 0.5
done
# helm --wait counts a one-replica rollout with maxUnavailable 1 as done: wait for the pods themselves.
"$BIN/kubectl" -n "$RELEASE_NS" rollout status deployment/loopsnap-controller --timeout=180s >/dev/null \
  || die "the controller did not become ready (kubectl -n $RELEASE_NS logs deploy/loopsnap-controller)"
"$BIN/kubectl" -n "$RELEASE_NS" rollout status daemonset/loopsnap-node --timeout=180s >/dev/null \
  || die "the node plugin did not become ready (kubectl -n $RELEASE_NS logs ds/loopsnap-node)"
log "ready in $(( $(date +%s) - t0 )) s"

cat >&2 <<EOF

loopsnap is running on node $node_name (kubelet + containerd on this machine), installed with Helm.

  export KUBECONFIG=$KUBECONFIG
  export PATH=$BIN:\$PATH
  kubectl -n $RELEASE_NS get pods                    # the controller and the node plugin, Running
  kubectl apply -f examples/pvc.yaml -f examples/pod.yaml
  kubectl wait --for=condition=Ready pod/writer
  kubectl exec writer -- cat /data/hello
  kubectl apply -f examples/snapshot.yaml            # README "Snapshots with kubectl" goes on from here

Press Ctrl-C to stop (workloads, chart, node and control plane are torn down in that order).
EOF
sleep infinity &
idle=$!
wait "$idle" || true
