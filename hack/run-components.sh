#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Sourced by hack/start.sh (which provides ROOT, BIN, KUBECONFIG, log and the `pids` array): installs the
# CSIDriver, StorageClasses and VolumeSnapshotClasses from examples/, makes the mutual-TLS material the
# controller and the node plugin use (.loopsnap/mtls/, made once), then starts this machine's node plugin and
# the controller as background children of the calling shell, logging to .loopsnap/logs/, and appends their
# PIDs to `pids`. Returns once both are serving, or fails with the last lines of the failing log.
#
# Environment (all optional): LOOPSNAP_NODE_ID (default: hostname), LOOPSNAP_STATE_DIR (default
# .loopsnap/node), LOOPSNAP_NODE_PORT (mTLS CSI endpoint, default 9820), LOOPSNAP_CONTROLLER_HTTP (default
# 127.0.0.1:9808), LOOPSNAP_NAMESPACE (Leases and CSIStorageCapacity, default kube-system).

_ls_root="${ROOT:?run-components.sh is sourced by hack/start.sh}"
_ls_dir="$_ls_root/.loopsnap"
_ls_logs="$_ls_dir/logs"
_ls_tls="$_ls_dir/mtls"
_ls_node="${LOOPSNAP_NODE_ID:-$(hostname)}"
_ls_state="${LOOPSNAP_STATE_DIR:-$_ls_dir/node}"
_ls_port="${LOOPSNAP_NODE_PORT:-9820}"
_ls_http="${LOOPSNAP_CONTROLLER_HTTP:-127.0.0.1:9808}"
_ls_ns="${LOOPSNAP_NAMESPACE:-kube-system}"
mkdir -p "$_ls_logs" "$_ls_state"

if [ "$(id -u)" != 0 ]; then
  log "error: the node plugin needs root (FUSE, loop devices, mounts); run npm start as root"
  return 1
fi

_ls_mtls() { # CA, node plugin server certificate (127.0.0.1, localhost), controller client certificate
  [ -f "$_ls_tls/ca.crt" ] && [ -f "$_ls_tls/server.crt" ] && [ -f "$_ls_tls/client.crt" ] && return 0
  log "generating mutual-TLS certificates in $_ls_tls"
  mkdir -p "$_ls_tls"
  local d="$_ls_tls"
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$d/ca.key" -sha256 -days 3650 -subj "/CN=loopsnap-local-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$d/ca.crt" 2>/dev/null
  local leaf cn usage san
  for leaf in server client; do
    if [ "$leaf" = server ]; then cn=loopsnap-node; usage=serverAuth; san="subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"
    else cn=loopsnap-controller; usage=clientAuth; san=""; fi
    openssl ecparam -name prime256v1 -genkey -noout -out "$d/$leaf.key" 2>/dev/null
    openssl req -new -key "$d/$leaf.key" -subj "/CN=$cn" -out "$d/$leaf.csr" 2>/dev/null
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=$usage" $san > "$d/$leaf.ext"
    openssl x509 -req -in "$d/$leaf.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 3650 -sha256 \
      -extfile "$d/$leaf.ext" -out "$d/$leaf.crt" 2>/dev/null
    rm -f "$d/$leaf.csr" "$d/$leaf.ext"
  done
  chmod 600 "$d"/*.key
}

_ls_fail() { # name logfile
  log "error: $1 did not start; last lines of $2:"
  tail -n 20 "$2" >&2 || true
  return 1
}

_ls_mtls
log "installing the CSIDriver, StorageClasses and VolumeSnapshotClasses (examples/)"
"$BIN/kubectl" apply -f "$_ls_root/examples/csidriver.yaml" -f "$_ls_root/examples/storageclass.yaml" \
  -f "$_ls_root/examples/volumesnapshotclasses.yaml" >/dev/null

log "starting the node plugin for node $_ls_node (state in $_ls_state, log .loopsnap/logs/node-plugin.log)"
node --enable-source-maps "$_ls_root/dist/csi/src/main.js" \
  --node-id "$_ls_node" --state-dir "$_ls_state/state" --endpoint "unix://$_ls_state/csi.sock" \
  --tcp-endpoint "127.0.0.1:$_ls_port" --tls-cert-file "$_ls_tls/server.crt" --tls-key-file "$_ls_tls/server.key" \
  --tls-client-ca-file "$_ls_tls/ca.crt" --kubeconfig "$KUBECONFIG" --registry-namespace "$_ls_ns" \
  >>"$_ls_logs/node-plugin.log" 2>&1 &
_ls_node_pid=$!
pids+=("$_ls_node_pid")

log "starting the controller (metrics on http://$_ls_http/metrics, log .loopsnap/logs/controller.log)"
node --enable-source-maps "$_ls_root/dist/controller/src/main.js" \
  --kubeconfig "$KUBECONFIG" --namespace "$_ls_ns" --http-endpoint "$_ls_http" \
  --tls-ca-file "$_ls_tls/ca.crt" --tls-cert-file "$_ls_tls/client.crt" --tls-key-file "$_ls_tls/client.key" \
  >>"$_ls_logs/controller.log" 2>&1 &
_ls_ctl_pid=$!
pids+=("$_ls_ctl_pid")

_ls_deadline=$(( $(date +%s) + 90 ))
until "$BIN/kubectl" -n "$_ls_ns" get lease "loopsnap-node-$_ls_node" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null \
    | grep -qx "$_ls_node"; do
  kill -0 "$_ls_node_pid" 2>/dev/null || { _ls_fail "the node plugin" "$_ls_logs/node-plugin.log"; return 1; }
  [ "$(date +%s)" -lt "$_ls_deadline" ] || { _ls_fail "the node plugin" "$_ls_logs/node-plugin.log"; return 1; }
  sleep 0.3
done
until curl -fsS --max-time 2 "http://$_ls_http/readyz" >/dev/null 2>&1 \
    && curl -fsS --max-time 2 "http://$_ls_http/healthz/leader-election" 2>/dev/null | grep -q leader; do
  kill -0 "$_ls_ctl_pid" 2>/dev/null || { _ls_fail "the controller" "$_ls_logs/controller.log"; return 1; }
  [ "$(date +%s)" -lt "$_ls_deadline" ] || { _ls_fail "the controller" "$_ls_logs/controller.log"; return 1; }
  sleep 0.3
done
log "node plugin (pid $_ls_node_pid) and controller (pid $_ls_ctl_pid) are serving"
printf '\nTry it (see README "Snapshots with kubectl"):\n  kubectl apply -f examples/pvc.yaml -f examples/snapshot.yaml\n  kubectl get pvc,volumesnapshot\n  kubectl apply -f examples/restore-pvc.yaml\n' >&2
