#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# End to end on a kind cluster with real pods and real kubelets, for machines with Docker and kind (the
# development machines of this repository have no Docker engine; there, `npm test` runs the same files on a
# real node of the machine, hack/node.sh). Steps: create a kind cluster (one control plane, two workers, the
# host's /dev mounted so that loop devices and /dev/fuse work), build the image, load it, `helm install` the
# chart, then run the real-node tests (test/node/) with LOOPSNAP_E2E_TARGET=cluster: the same files, with
# the release `loopsnap` of this cluster instead of the local node's.
#
#   hack/kind-e2e.sh                    create or reuse the cluster, build, install, test, delete the cluster
#   KEEP_CLUSTER=1 hack/kind-e2e.sh     leave the cluster (and the release) for a look afterwards
#
# Environment: KIND_CLUSTER (loopsnap-e2e), KIND_NODE_IMAGE (kind's default node image), IMAGE (loopsnap:e2e),
# E2E_FILES (test/node/: every real-node file), LOOPSNAP_E2E_WORKLOAD_IMAGE (busybox:1.36, the pods' image; the
# tests use its sh, dd, head, sha256sum, strings, blockdev, ts and nsenter applets).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
KIND_CLUSTER="${KIND_CLUSTER:-loopsnap-e2e}"
IMAGE="${IMAGE:-loopsnap:e2e}"
E2E_FILES="${E2E_FILES:-test/node/}"
log() { printf '[kind-e2e] %s\n' "$*" >&2; }
die() { printf '[kind-e2e] error: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null || die "docker is not installed (this script needs a Docker engine)"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (docker info failed)"
command -v kind >/dev/null || die "kind is not installed (https://kind.sigs.k8s.io; go install sigs.k8s.io/kind@latest)"
"$ROOT/hack/setup.sh"
BIN="$("$ROOT/hack/build-tools.sh" --bin-dir)"
HELM="$BIN/helm"
KUBECTL="$BIN/kubectl"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/loopsnap-kind-e2e.XXXXXX")"
export KUBECONFIG="$WORK/kubeconfig"

cleanup() {
  local rc=$?
  if [ "${KEEP_CLUSTER:-}" = 1 ]; then
    log "keeping cluster $KIND_CLUSTER (kubeconfig: kind get kubeconfig --name $KIND_CLUSTER)"
  else
    kind delete cluster --name "$KIND_CLUSTER" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

if ! kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
  log "creating kind cluster $KIND_CLUSTER"
  cat > "$WORK/kind.yaml" <<'YAML'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
    extraMounts: [{hostPath: /dev, containerPath: /dev}]
  - role: worker
    extraMounts: [{hostPath: /dev, containerPath: /dev}]
YAML
  kind create cluster --name "$KIND_CLUSTER" --config "$WORK/kind.yaml" ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 120s
fi
kind get kubeconfig --name "$KIND_CLUSTER" > "$KUBECONFIG"
log "cluster: $("$KUBECTL" version -o json | sed -n 's/.*"gitVersion": "\(v[^"]*\)".*/\1/p' | tail -1)"

log "building $IMAGE"
docker build -t "$IMAGE" "$ROOT"
kind load docker-image "$IMAGE" --name "$KIND_CLUSTER"

log "helm install"
"$HELM" upgrade --install loopsnap "$ROOT/charts/loopsnap" -n loopsnap --create-namespace \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never \
  --wait --timeout 10m

log "running $E2E_FILES against the cluster"
LOOPSNAP_E2E_TARGET=cluster npx vitest run --project integration $E2E_FILES
