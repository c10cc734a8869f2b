#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# A real Kubernetes control plane on 127.0.0.1: etcd + kube-apiserver + kube-controller-manager, built by
# hack/build-tools.sh. Certificates, data and logs live under $LOOPSNAP_CLUSTER_DIR (default .loopsnap/).
#
#   hack/cluster.sh up       start (idempotent); prints the kubeconfig path on stdout
#   hack/cluster.sh down     stop every process this cluster started; leaves no process or port behind
#   hack/cluster.sh status   exit 0 when the API server answers /readyz
#   hack/cluster.sh purge    down, then delete data, certificates and logs
#
# Ports (override with LOOPSNAP_PORT_APISERVER / _ETCD / _ETCD_PEER / _KCM):
#   apiserver 16443, etcd 12379 (peer 12380), kube-controller-manager 10557
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${LOOPSNAP_CLUSTER_DIR:-$ROOT/.loopsnap}"
BIN="$("$ROOT/hack/build-tools.sh" --bin-dir)"
P_API="${LOOPSNAP_PORT_APISERVER:-16443}"
P_ETCD="${LOOPSNAP_PORT_ETCD:-12379}"
P_PEER="${LOOPSNAP_PORT_ETCD_PEER:-12380}"
P_KCM="${LOOPSNAP_PORT_KCM:-10557}"
PKI="$DIR/pki"
LOGS="$DIR/logs"
RUN="$DIR/run"
KUBECONFIG_OUT="$DIR/kubeconfig"
COMPONENTS=(kube-controller-manager kube-apiserver etcd)

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=lib/proc.sh
source "$ROOT/hack/lib/proc.sh"

port_in_use() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

curl_api() {
  curl -fsS --max-time 3 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$P_API$1"
}

# shellcheck source=lib/pki.sh
source "$ROOT/hack/lib/pki.sh"

gen_pki() {
  [ -f "$PKI/ca.crt" ] && [ -f "$PKI/admin.crt" ] && [ -f "$PKI/sa.key" ] || log "generating certificates in $PKI"
  pki_ca
  pki_issue apiserver "/CN=kube-apiserver" "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
extendedKeyUsage=serverAuth"
  pki_issue admin "/CN=loopsnap-admin/O=system:masters" "extendedKeyUsage=clientAuth"
  pki_issue kcm "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
  pki_issue apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client/O=system:masters" "extendedKeyUsage=clientAuth"
  if [ ! -f "$PKI/sa.key" ]; then
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
    chmod 600 "$PKI/sa.key"
  fi
}

write_kubeconfig() { # file user-cert-name
  pki_kubeconfig "$1" "$2" "https://127.0.0.1:$P_API"
}

up_etcd() {
  pid_alive "$(pid_of etcd)" && return 0
  port_in_use "$P_ETCD" && die "port $P_ETCD (etcd) is already in use by another process"
  log "starting etcd on 127.0.0.1:$P_ETCD"
  start_component etcd "$BIN/etcd" --name loopsnap --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$P_ETCD" --advertise-client-urls "http://127.0.0.1:$P_ETCD" \
    --listen-peer-urls "http://127.0.0.1:$P_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$P_PEER" \
    --initial-cluster "loopsnap=http://127.0.0.1:$P_PEER" --listen-metrics-urls "" \
    --unsafe-no-fsync --quota-backend-bytes 2147483648 --log-level warn
  wait_for etcd 60 "$(pid_of etcd)" curl -fsS --max-time 2 "http://127.0.0.1:$P_ETCD/health"
}

up_apiserver() {
  if pid_alive "$(pid_of kube-apiserver)"; then return 0; fi
  port_in_use "$P_API" && die "port $P_API (kube-apiserver) is already in use by another process"
  log "starting kube-apiserver on 127.0.0.1:$P_API"
  start_component kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$P_ETCD" --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
    --secure-port "$P_API" --cert-dir "$PKI" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" --authorization-mode Node,RBAC \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --service-account-issuer "https://127.0.0.1:$P_API" --service-account-key-file "$PKI/sa.pub" \
    --service-account-signing-key-file "$PKI/sa.key" --api-audiences "https://127.0.0.1:$P_API" \
    --service-cluster-ip-range 10.0.0.0/24 --endpoint-reconciler-type none --allow-privileged=true \
    --enable-admission-plugins NodeRestriction \
    --profiling=false --v 0
  wait_for kube-apiserver 120 "$(pid_of kube-apiserver)" curl_api /readyz
}

up_kcm() {
  pid_alive "$(pid_of kube-controller-manager)" && return 0
  port_in_use "$P_KCM" && die "port $P_KCM (kube-controller-manager) is already in use by another process"
  write_kubeconfig "$DIR/kcm.kubeconfig" kcm
  log "starting kube-controller-manager"
  start_component kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$DIR/kcm.kubeconfig" --authentication-kubeconfig "$DIR/kcm.kubeconfig" \
    --authorization-kubeconfig "$DIR/kcm.kubeconfig" --leader-elect=false \
    --bind-address 127.0.0.1 --secure-port "$P_KCM" --cert-dir "$DIR/kcm-certs" \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --use-service-account-credentials=true --controllers '*,-nodeipam,-cloud-node-lifecycle' \
    --profiling=false --v 0
  wait_for kube-controller-manager 90 "$(pid_of kube-controller-manager)" \
    curl -fsSk --max-time 2 "https://127.0.0.1:$P_KCM/healthz"
}

cmd_up() {
  command -v openssl >/dev/null || die "openssl is missing (apt-get install openssl)"
  "$ROOT/hack/build-tools.sh" etcd kube-apiserver kube-controller-manager kubectl >&2
  mkdir -p "$DIR"
  gen_pki
  local start; start=$(date +%s%N)
  up_etcd
  up_apiserver
  write_kubeconfig "$KUBECONFIG_OUT" admin
  up_kcm
  # The default ServiceAccount appears once the service-account controller has run.
  local deadline=$(( $(date +%s) + 60 ))
  until "$BIN/kubectl" --kubeconfig "$KUBECONFIG_OUT" -n default get serviceaccount default >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || die "default ServiceAccount never appeared (log: $LOGS/kube-controller-manager.log)"
    sleep 0.2
  done
  log "control plane ready in $(( ($(date +%s%N) - start) / 1000000 )) ms"
  echo "$KUBECONFIG_OUT"
}

cmd_down() {
  for c in "${COMPONENTS[@]}"; do stop_component "$c"; done
  for p in "$P_API" "$P_ETCD" "$P_PEER" "$P_KCM"; do
    local deadline=$(( $(date +%s) + 10 ))
    while port_in_use "$p"; do
      [ "$(date +%s)" -lt "$deadline" ] || die "port $p is still in use after shutdown"
      sleep 0.1
    done
  done
}

cmd_status() {
  for c in "${COMPONENTS[@]}"; do
    if pid_alive "$(pid_of "$c")"; then log "$c running (pid $(pid_of "$c"))"; else log "$c not running"; fi
  done
  curl_api /readyz >/dev/null 2>&1 && { log "kube-apiserver ready: $KUBECONFIG_OUT"; return 0; }
  return 1
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  purge) cmd_down; rm -rf "$DIR/etcd" "$DIR/pki" "$DIR/logs" "$DIR/run" "$DIR/kcm-certs" "$DIR"/*.kubeconfig "$KUBECONFIG_OUT" ;;
  *) die "usage: hack/cluster.sh up|down|status|purge" ;;
esac
