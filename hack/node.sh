#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# A real Kubernetes node on this machine, joined to the control plane of hack/cluster.sh: containerd + runc +
# CNI bridge from Debian packages, the kubelet and kube-scheduler built by hack/build-tools.sh, the pause
# image built here (hack/image.sh). Nothing leaves the machine: the node IP and the pod network live on a
# bridge this script creates, with no gateway, no NAT, no forwarding and no iptables chains.
#
#   hack/node.sh up       start (idempotent; starts the control plane too); prints the node name on stdout
#   hack/node.sh drain    cordon the node and delete its pods (not DaemonSet pods), waiting for them
#   hack/node.sh down     stop pods, kubelet, scheduler and containerd; remove every mount, loop device,
#                         cgroup, bridge and file this node made outside $LOOPSNAP_CLUSTER_DIR
#   hack/node.sh status   exit 0 when the Node is Ready
#   hack/node.sh values   print the chart values for this node (kubelet dir, state dir, API server, ...)
#   hack/node.sh crictl   run crictl against this node's containerd (hack/node.sh crictl ps)
#
# Layout: $LOOPSNAP_CLUSTER_DIR/node/ holds containerd's root, state and socket, runc's root, the kubelet's
# root dir (made rshared by the kubelet), CNI configuration and IPAM leases; logs go to $DIR/logs/.
# One node per machine: the kubelet's device-plugin socket has a fixed path (/var/lib/kubelet/device-plugins).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${LOOPSNAP_CLUSTER_DIR:-$ROOT/.loopsnap}"
NODE_DIR="$DIR/node"
BIN="$("$ROOT/hack/build-tools.sh" --bin-dir)"
P_API="${LOOPSNAP_PORT_APISERVER:-16443}"
P_SCHED="${LOOPSNAP_PORT_SCHEDULER:-10559}"
NODE_NAME="${LOOPSNAP_NODE_NAME:-loopsnap-node}"
# The bridge carries the node IP and the pods; pods reach the node IP and each other, nothing else.
BRIDGE=lsnap0
NODE_IP=10.213.0.1
POD_SUBNET=10.213.0.0/24
CGROUP_ROOT=loopsnap-node
PKI="$DIR/pki"
LOGS="$DIR/logs"
RUN="$NODE_DIR/run"
KUBELET_DIR="$NODE_DIR/kubelet"
CONTAINERD_SOCK="$RUN/containerd.sock"
# Fixed paths the kubelet, containerd 1.6 and its CNI library use whatever they are configured with; the
# ones that did not exist before `up` are removed by `down`.
FIXED_KUBELET_DIR=/var/lib/kubelet
FIXED_LOG_LINKS=/var/log/containers
FIXED_CNI_CACHE=/var/lib/cni
FIXED_SHIM_DIR=/run/containerd
FIXED_NETNS_DIR=/run/netns

log() { printf '[node] %s\n' "$*" >&2; }
die() { printf '[node] error: %s\n' "$*" >&2; exit 1; }

kubectl() { "$BIN/kubectl" --kubeconfig "$DIR/kubeconfig" "$@"; }
crictl() { "$BIN/crictl" --runtime-endpoint "unix://$CONTAINERD_SOCK" --image-endpoint "unix://$CONTAINERD_SOCK" --timeout 30s "$@"; }
api_ready() { curl -fsS --max-time 3 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "https://127.0.0.1:$P_API/readyz" >/dev/null 2>&1; }

# shellcheck source=lib/pki.sh
source "$ROOT/hack/lib/pki.sh"
# shellcheck source=lib/proc.sh
source "$ROOT/hack/lib/proc.sh"

check_host() {
  local missing=()
  for c in containerd runc ctr ip iptables-save; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
  [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] || missing+=("/usr/lib/cni/bridge")
  [ ${#missing[@]} -eq 0 ] || die "missing ${missing[*]} (hack/setup.sh installs containerd, runc, containernetworking-plugins, iptables)"
  [ "$(id -u)" = 0 ] || die "the node needs root (kubelet, containerd, mounts, cgroups)"
  [ -d /sys/fs/cgroup ] || die "no /sys/fs/cgroup"
}

# Another node on this machine would share the kubelet's fixed paths.
check_single_node() {
  local other
  for other in "$ROOT"/.loopsnap/node/run/kubelet.pid "$ROOT"/.loopsnap/*/node/run/kubelet.pid; do
    [ -f "$other" ] || continue
    [ "$other" = "$RUN/kubelet.pid" ] && continue
    pid_alive "$(cat "$other")" && die "another node is running ($other); stop it first: LOOPSNAP_CLUSTER_DIR=$(dirname "$(dirname "$(dirname "$other")")") hack/node.sh down"
  done
  return 0
}

# --- certificates and kubeconfigs ---------------------------------------------------------------------

node_pki() {
  pki_issue "kubelet-$NODE_NAME" "/CN=system:node:$NODE_NAME/O=system:nodes" "extendedKeyUsage=clientAuth"
  pki_issue "kubelet-serving-$NODE_NAME" "/CN=$NODE_NAME" "subjectAltName=IP:$NODE_IP,DNS:$NODE_NAME
extendedKeyUsage=serverAuth"
  pki_issue kube-scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
  pki_kubeconfig "$NODE_DIR/kubelet.kubeconfig" "kubelet-$NODE_NAME" "https://127.0.0.1:$P_API"
  pki_kubeconfig "$NODE_DIR/scheduler.kubeconfig" kube-scheduler "https://127.0.0.1:$P_API"
}

# --- network ------------------------------------------------------------------------------------------

up_bridge() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    log "creating bridge $BRIDGE ($NODE_IP, pods $POD_SUBNET; no gateway, no NAT, no forwarding)"
    ip link add "$BRIDGE" type bridge
    echo "$BRIDGE" > "$RUN/bridge"
  elif [ ! -f "$RUN/bridge" ]; then
    die "interface $BRIDGE exists and was not created by this node; remove it or free the name"
  fi
  ip addr replace "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  [ "$(cat /proc/sys/net/ipv4/ip_forward)" = 0 ] || log "warning: net.ipv4.ip_forward is 1 on this machine (not set by this script)"
}

write_cni() {
  mkdir -p "$NODE_DIR/cni/net.d" "$NODE_DIR/cni/ipam"
  cat > "$NODE_DIR/cni/net.d/10-loopsnap.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "loopsnap-pods",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": false,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$NODE_DIR/cni/ipam",
        "ranges": [[{ "subnet": "$POD_SUBNET", "rangeStart": "10.213.0.16", "rangeEnd": "10.213.0.254" }]]
      }
    }
  ]
}
EOF
}

# --- cgroups (v1 hybrid here; v2 also works) ----------------------------------------------------------

# Mount points of every cgroup hierarchy (v1 controllers, named ones and cgroup2).
cgroup_hierarchies() { awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/self/mounts | sort -u; }

# The cgroup root's name is fixed: like the bridge, it belongs to the node whose $RUN/cgroups says so, and
# another checkout's node neither joins nor removes it.
up_cgroups() {
  local h
  if [ ! -f "$RUN/cgroups" ]; then
    while read -r h; do
      [ -d "$h/$CGROUP_ROOT" ] || continue
      if find "$h/$CGROUP_ROOT" -name cgroup.procs -exec cat {} + 2>/dev/null | grep -q .; then
        die "cgroup $h/$CGROUP_ROOT has processes of a node this checkout did not start; stop that node first"
      fi
    done < <(cgroup_hierarchies)
    echo "$CGROUP_ROOT" > "$RUN/cgroups"
  fi
  while read -r h; do
    mkdir -p "$h/$CGROUP_ROOT"
    if [ -f "$h/cpuset.cpus" ] && [ -z "$(cat "$h/$CGROUP_ROOT/cpuset.cpus")" ]; then
      cat "$h/cpuset.cpus" > "$h/$CGROUP_ROOT/cpuset.cpus"
      cat "$h/cpuset.mems" > "$h/$CGROUP_ROOT/cpuset.mems"
    fi
  done < <(cgroup_hierarchies)
}

# Removes the node's cgroups deepest first; a cgroup with a process left in it stays, and is reported.
down_cgroups() {
  local h d left=0
  [ -f "$RUN/cgroups" ] || return 0
  while read -r h; do
    [ -d "$h/$CGROUP_ROOT" ] || continue
    while read -r d; do
      rmdir "$d" 2>/dev/null || { log "cgroup $d is still in use"; left=1; }
    done < <(find "$h/$CGROUP_ROOT" -depth -type d)
  done < <(cgroup_hierarchies)
  [ "$left" = 1 ] || rm -f "$RUN/cgroups"
  return "$left"
}

# --- containerd ---------------------------------------------------------------------------------------

write_containerd_config() {
  local pause="$1"
  mkdir -p "$NODE_DIR/containerd" "$RUN"
  cat > "$NODE_DIR/containerd/config.toml" <<EOF
version = 2
root = "$NODE_DIR/containerd/root"
state = "$NODE_DIR/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "$CONTAINERD_SOCK"

[ttrpc]
  address = "$RUN/containerd.sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$NODE_DIR/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause"
  # Root here lacks CAP_SYS_RESOURCE: a negative oom_score_adj for sandboxes would make runc fail.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  max_container_log_line_size = 16384

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  BinaryName = "$(command -v runc)"
  Root = "$NODE_DIR/runc"
  SystemdCgroup = false

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "$NODE_DIR/cni/net.d"
  max_conf_num = 1
EOF
}

up_containerd() {
  pid_alive "$(pid_of containerd)" && return 0
  [ -d "$FIXED_SHIM_DIR" ] || { mkdir -p "$FIXED_SHIM_DIR"; echo "$FIXED_SHIM_DIR" > "$RUN/created-shim-dir"; }
  [ -d "$FIXED_NETNS_DIR" ] || { mkdir -p "$FIXED_NETNS_DIR"; echo "$FIXED_NETNS_DIR" > "$RUN/created-netns-dir"; }
  log "starting containerd on $CONTAINERD_SOCK"
  start_component containerd containerd --config "$NODE_DIR/containerd/config.toml" --log-level warn
  wait_for containerd 60 "$(pid_of containerd)" ctr --address "$CONTAINERD_SOCK" version
}

# --- kubelet and scheduler ----------------------------------------------------------------------------

write_kubelet_config() {
  cat > "$NODE_DIR/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $PKI/kubelet-serving-$NODE_NAME.crt
tlsPrivateKeyFile: $PKI/kubelet-serving-$NODE_NAME.key
authentication:
  anonymous: { enabled: false }
  webhook: { enabled: true }
  x509: { clientCAFile: $PKI/ca.crt }
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
imageServiceEndpoint: unix://$CONTAINERD_SOCK
# cgroup v1 hybrid here: cgroupfs driver under a root of our own that exists in every hierarchy.
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
# No iptables chains: nothing on this node NATs or filters.
makeIPTablesUtilChains: false
podLogsDir: $NODE_DIR/pod-logs
staticPodPath: ""
maxPods: 110
# Imported images cannot be pulled again: never collect them, never evict for a nearly full disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
  imagefs.inodesFree: 1%
shutdownGracePeriod: 0s
serializeImagePulls: false
EOF
}

node_ready() {
  [ "$(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

up_kubelet() {
  pid_alive "$(pid_of kubelet)" && return 0
  [ -d "$FIXED_KUBELET_DIR" ] || { mkdir -p "$FIXED_KUBELET_DIR"; echo "$FIXED_KUBELET_DIR" > "$RUN/created-kubelet-dir"; }
  mkdir -p "$KUBELET_DIR" "$NODE_DIR/pod-logs"
  log "starting kubelet (node $NODE_NAME, $NODE_IP, root dir $KUBELET_DIR)"
  start_component kubelet "$BIN/kubelet" --config "$NODE_DIR/kubelet-config.yaml" \
    --kubeconfig "$NODE_DIR/kubelet.kubeconfig" --root-dir "$KUBELET_DIR" --cert-dir "$NODE_DIR/kubelet-pki" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v 0
  wait_for kubelet 180 "$(pid_of kubelet)" node_ready
}

up_scheduler() {
  pid_alive "$(pid_of kube-scheduler)" && return 0
  log "starting kube-scheduler"
  start_component kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$NODE_DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig "$NODE_DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig "$NODE_DIR/scheduler.kubeconfig" --leader-elect=false \
    --bind-address 127.0.0.1 --secure-port "$P_SCHED" --profiling=false --v 0
  wait_for kube-scheduler 60 "$(pid_of kube-scheduler)" curl -fsSk --max-time 2 "https://127.0.0.1:$P_SCHED/healthz"
}

# The chart values that make the chart work on this node (hack/start.sh and test/node use them).
write_values() {
  cat > "$NODE_DIR/chart-values.yaml" <<EOF
# Written by hack/node.sh for node $NODE_NAME: no kube-proxy or cluster DNS here, so the components run on
# the host network and reach the API server on 127.0.0.1.
apiServer:
  host: 127.0.0.1
  port: $P_API
node:
  kubeletDir: $KUBELET_DIR
  # Under the kubelet dir, which the kubelet makes rshared (the state dir is mounted Bidirectional).
  stateDir: $KUBELET_DIR/loopsnap
  hostNetwork: true
controller:
  hostNetwork: true
  # One node: two replicas would collide on the host network's metrics port.
  replicas: 1
  updateStrategy:
    type: RollingUpdate
    rollingUpdate: { maxSurge: 0, maxUnavailable: 1 }
EOF
}

cmd_up() {
  check_host
  mkdir -p "$NODE_DIR" "$RUN" "$LOGS"
  check_single_node
  "$ROOT/hack/build-tools.sh" kubelet kube-scheduler crictl >&2
  "$ROOT/hack/cluster.sh" up >/dev/null
  local start pause; start=$(date +%s%N)
  node_pki
  pause="$("$ROOT/hack/image.sh" ref pause)"
  up_bridge
  up_cgroups
  write_cni
  write_containerd_config "$pause"
  up_containerd
  "$ROOT/hack/image.sh" import --address "$CONTAINERD_SOCK" pause >&2
  write_kubelet_config
  up_kubelet
  up_scheduler
  write_values
  log "node $NODE_NAME ready in $(( ($(date +%s%N) - start) / 1000000 )) ms (values: $NODE_DIR/chart-values.yaml)"
  echo "$NODE_NAME"
}

# Mounts under a directory, deepest first.
mounts_under() { findmnt -rn -o TARGET | awk -v d="$1/" 'index($0, d) == 1' | awk '{ print length, $0 }' | sort -rn | cut -d' ' -f2-; }

fuse_abort() { # mount point
  local fstype majmin
  read -r fstype majmin < <(findmnt -rn -o FSTYPE,MAJ:MIN --mountpoint "$1" 2>/dev/null | head -n1) || return 0
  case "$fstype" in
    fuse|fuse.*) [ -w "/sys/fs/fuse/connections/${majmin#*:}/abort" ] && echo 1 > "/sys/fs/fuse/connections/${majmin#*:}/abort" ;;
  esac
  return 0
}

# Loop devices whose backing file lies under a directory.
loops_under() {
  losetup -l -n -O NAME,BACK-FILE 2>/dev/null | awk -v d="$1/" 'index($2, d) == 1 { print $1 }'
}

# Shims of this containerd, found by their -address argument (exact socket path).
our_shims() {
  local p
  for p in /proc/[0-9]*; do
    tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -q -- "-address $CONTAINERD_SOCK " && echo "${p#/proc/}"
  done
  return 0
}

cmd_down() {
  local failed=0 m l p
  stop_component kube-scheduler 20
  stop_component kubelet 30
  if pid_alive "$(pid_of containerd)" && [ -x "$BIN/crictl" ]; then
    # StopPodSandbox kills the containers, runs CNI DEL and unmounts the sandbox's shm and netns.
    for p in $(crictl pods -q 2>/dev/null); do crictl stopp "$p" >/dev/null 2>&1 || log "stopping sandbox $p failed"; done
    for p in $(crictl pods -q 2>/dev/null); do crictl rmp -f "$p" >/dev/null 2>&1 || log "removing sandbox $p failed"; done
  fi
  stop_component containerd 20
  for p in $(our_shims); do log "killing leftover shim (pid $p)"; kill -KILL "$p" 2>/dev/null || true; done
  # Volumes the kubelet mounted for pods, the node plugin's FUSE mount, the kubelet's rshared bind mount
  # of its root dir, overlay root file systems and shm of containers: all under the node dir.
  # A FUSE mount whose server died is aborted first, so that nothing waits on it.
  while read -r m; do
    [ -n "$m" ] || continue
    fuse_abort "$m"
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || { log "cannot unmount $m"; failed=1; }
  done < <(mounts_under "$NODE_DIR")
  for l in $(loops_under "$NODE_DIR"); do losetup -d "$l" 2>/dev/null || { log "cannot detach $l"; failed=1; }; done
  down_cgroups || failed=1
  if [ -f "$RUN/bridge" ]; then
    ip link del "$BRIDGE" 2>/dev/null || true
    rm -f "$RUN/bridge"
  fi
  # Fixed paths: symlinks into our pod logs, CNI results of our network, the kubelet's device-plugin dir.
  if [ -d "$FIXED_LOG_LINKS" ]; then
    find "$FIXED_LOG_LINKS" -maxdepth 1 -type l -lname "$NODE_DIR/*" -delete
  fi
  rm -f "$FIXED_CNI_CACHE"/results/loopsnap-pods-* 2>/dev/null || true
  rmdir "$FIXED_CNI_CACHE/results" "$FIXED_CNI_CACHE" 2>/dev/null || true
  rmdir "$FIXED_LOG_LINKS" 2>/dev/null || true
  if [ -f "$RUN/created-kubelet-dir" ]; then rm -rf "$FIXED_KUBELET_DIR"; rm -f "$RUN/created-kubelet-dir"; fi
  if [ -f "$RUN/created-shim-dir" ]; then rm -rf "$FIXED_SHIM_DIR"; rm -f "$RUN/created-shim-dir"; fi
  # Our shims are gone: an empty shim directory left from before is removed too (rmdir keeps others' sockets).
  rmdir "$FIXED_SHIM_DIR/s" "$FIXED_SHIM_DIR" 2>/dev/null || true
  if [ -f "$RUN/created-netns-dir" ]; then rmdir "$FIXED_NETNS_DIR" 2>/dev/null || true; rm -f "$RUN/created-netns-dir"; fi
  # Pods of this node are gone with it; its IP leases too.
  rm -rf "$NODE_DIR/cni/ipam" "$KUBELET_DIR/pods" "$NODE_DIR/containerd/state" "$NODE_DIR/pod-logs"
  if api_ready; then kubectl delete node "$NODE_NAME" --ignore-not-found --wait=false >/dev/null 2>&1 || true; fi
  [ "$failed" = 0 ] || die "node stopped, but leftovers remain (see above)"
}

# Cordons the node and deletes every pod on it that no DaemonSet owns, waiting until they are gone: the
# kubelet unpublishes and unstages their volumes while the CSI node plugin still runs. Run it before the
# plugin's DaemonSet goes (helm uninstall) and before `down`.
cmd_drain() {
  api_ready || { log "API server not reachable; nothing to drain"; return 0; }
  kubectl get node "$NODE_NAME" >/dev/null 2>&1 || return 0
  kubectl cordon "$NODE_NAME" >/dev/null
  local pods
  pods="$(kubectl get pods -A --field-selector "spec.nodeName=$NODE_NAME" \
    -o go-template='{{range .items}}{{$ds := false}}{{range .metadata.ownerReferences}}{{if eq .kind "DaemonSet"}}{{$ds = true}}{{end}}{{end}}{{if not $ds}}{{.metadata.namespace}}/{{.metadata.name}}{{"\n"}}{{end}}{{end}}')"
  [ -n "$pods" ] || return 0
  log "deleting $(printf '%s\n' "$pods" | wc -l) pod(s) on $NODE_NAME"
  local p
  while read -r p; do
    kubectl -n "${p%%/*}" delete pod "${p#*/}" --wait=false --ignore-not-found >/dev/null
  done <<< "$pods"
  while read -r p; do
    kubectl -n "${p%%/*}" wait --for=delete "pod/${p#*/}" --timeout=180s >/dev/null 2>&1 || log "pod $p still there after 180s"
  done <<< "$pods"
}

cmd_status() {
  local c ok=0
  for c in containerd kubelet kube-scheduler; do
    if pid_alive "$(pid_of "$c")"; then log "$c running (pid $(pid_of "$c"))"; else log "$c not running"; ok=1; fi
  done
  if node_ready; then log "node $NODE_NAME Ready"; else log "node $NODE_NAME not Ready"; ok=1; fi
  return "$ok"
}

case "${1:-}" in
  up) cmd_up ;;
  drain) cmd_drain ;;
  down) cmd_down ;;
  status) cmd_status ;;
  values) cat "$NODE_DIR/chart-values.yaml" 2>/dev/null || die "no values yet: run hack/node.sh up" ;;
  crictl) shift; crictl "$@" ;;
  *) die "usage: hack/node.sh up|drain|down|status|values|crictl [args]" ;;
esac
