#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds the pinned third-party tools loopsnap tests and runs against, from the Go module proxy only,
# into ~/.cache/loopsnap/bin. A tool is skipped when its binary exists and its stamp matches the pin.
#
#   hack/build-tools.sh                  build every tool that is missing or stale
#   hack/build-tools.sh etcd csi-sanity  build only these
#   hack/build-tools.sh --regen k8s      regenerate a wrapper module's go.mod/go.sum (after a version bump)
#   LOOPSNAP_SKIP_PROMTOOL=1             leave promtool out of the default set (its tests then say it is absent)
#
# Wrapper modules live in hack/tools/<module>/ with committed go.mod and go.sum.
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TOOLS_DIR="$HACK_DIR/tools"
# shellcheck source=tools/versions.env
source "$TOOLS_DIR/versions.env"

CACHE_DIR="${LOOPSNAP_CACHE:-$HOME/.cache/loopsnap}"
BIN_DIR="$CACHE_DIR/bin"
export GOTOOLCHAIN=local
export GOMODCACHE="$CACHE_DIR/gomod"
export GOCACHE="$CACHE_DIR/gobuild"
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0
mkdir -p "$BIN_DIR" "$GOMODCACHE" "$GOCACHE"

ALL_TOOLS=(etcd kube-apiserver kube-controller-manager kubectl kubelet kube-scheduler crictl csi-sanity helm kubeconform)
[ "${LOOPSNAP_SKIP_PROMTOOL:-}" = 1 ] || ALL_TOOLS+=(promtool)

log() { printf '[build-tools] %s\n' "$*" >&2; }
die() { printf '[build-tools] error: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null || die "go is not installed; Go >= 1.24 is needed (Debian bookworm's golang-go is too old: install from go.dev or the machine image)"
go_minor="$(go env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')"
[ "${go_minor:-0}" -ge 24 ] || die "Go >= 1.24 is needed to build k8s v1.33 tools; found $(go env GOVERSION)"

module_of() {
  case "$1" in
    etcd) echo etcd ;;
    kube-apiserver|kube-controller-manager|kubectl|kubelet|kube-scheduler) echo k8s ;;
    csi-sanity) echo csi-sanity ;;
    crictl) echo cri-tools ;;
    helm|kubeconform|promtool) echo "$1" ;;
    *) die "unknown tool: $1 (known: ${ALL_TOOLS[*]})" ;;
  esac
}

package_of() {
  case "$1" in
    etcd) echo . ;;
    kube-apiserver|kube-controller-manager|kubectl|kubelet|kube-scheduler) echo "k8s.io/kubernetes/cmd/$1" ;;
    crictl) echo sigs.k8s.io/cri-tools/cmd/crictl ;;
    csi-sanity) echo github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity ;;
    helm) echo helm.sh/helm/v3/cmd/helm ;;
    kubeconform) echo github.com/yannh/kubeconform/cmd/kubeconform ;;
    promtool) echo github.com/prometheus/prometheus/cmd/promtool ;;
  esac
}

version_of() {
  case "$1" in
    etcd) echo "$ETCD_VERSION" ;;
    kube-apiserver|kube-controller-manager|kubectl|kubelet|kube-scheduler) echo "$K8S_VERSION" ;;
    crictl) echo "$CRI_TOOLS_VERSION" ;;
    csi-sanity) echo "$CSI_SANITY_VERSION" ;;
    helm) echo "$HELM_VERSION" ;;
    kubeconform) echo "$KUBECONFORM_VERSION" ;;
    promtool) echo "$PROMETHEUS_VERSION" ;;
  esac
}

# Build tags: promtool without Prometheus' service-discovery plugins (every cloud SDK), which it does not
# need for `check rules`/`check metrics` and which would triple its build time.
tags_of() {
  case "$1" in
    promtool) echo remove_all_sd ;;
    *) echo "" ;;
  esac
}

# The stamp ties a binary to its pin, to the exact go.sum it was built from, and to its build tags.
stamp_of() {
  local module tags; module="$(module_of "$1")"; tags="$(tags_of "$1")"
  printf '%s %s%s\n' "$(version_of "$1")" "$(sha256sum "$TOOLS_DIR/$module/go.sum" | cut -c1-16)" "${tags:+ tags=$tags}"
}

ldflags_of() {
  case "$1" in
    kube-apiserver|kube-controller-manager|kubectl|kubelet|kube-scheduler)
      local v="$K8S_VERSION" minor
      minor="$(echo "$v" | cut -d. -f2)"
      echo "-s -w -X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/client-go/pkg/version.gitVersion=$v -X k8s.io/component-base/version.gitTreeState=clean"
      ;;
    helm)
      echo "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
      ;;
    kubeconform) echo "-s -w -X main.version=$KUBECONFORM_VERSION" ;;
    crictl) echo "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=${CRI_TOOLS_VERSION#v}" ;;
    promtool)
      # Module tag v0.3MM.P is Prometheus v3.MM.P.
      local p="${PROMETHEUS_VERSION#v0.3}" minor patch
      minor="$((10#${p%%.*}))"; patch="${p#*.}"
      echo "-s -w -X github.com/prometheus/common/version.Version=3.$minor.$patch"
      ;;
    *) echo "-s -w" ;;
  esac
}

# Generates hack/tools/k8s/go.mod: k8s.io/kubernetes requires every staging module at v0.0.0, which only
# resolves inside its own repository, so each one is replaced by its published v0.<minor>.<patch> tag.
regen_k8s() {
  local dir="$TOOLS_DIR/k8s" staging upstream_mod
  staging="v0.${K8S_VERSION#v1.}"
  upstream_mod="$(cd /tmp && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  [ -f "$upstream_mod" ] || die "could not download k8s.io/kubernetes@$K8S_VERSION"
  {
    echo "module loopsnap.dev/hack/tools/k8s"
    echo
    echo "go $(sed -n 's/^go \(.*\)/\1/p' "$upstream_mod")"
    echo
    sed -n 's/^godebug \(.*\)/godebug \1/p' "$upstream_mod"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    grep -E '^\s+k8s\.io/[a-z0-9-]+ v0\.0\.0$' "$upstream_mod" | awk -v s="$staging" '{ printf "\t%s => %s %s\n", $1, $1, s }'
    echo ")"
  } > "$dir/go.mod"
  rm -f "$dir/go.sum"
  (cd "$dir" && go mod tidy)
}

regen_etcd() {
  local dir="$TOOLS_DIR/etcd"
  printf 'module loopsnap.dev/hack/tools/etcd\n\ngo 1.23\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > "$dir/go.mod"
  rm -f "$dir/go.sum"
  (cd "$dir" && go mod tidy)
}

regen_csi_sanity() {
  local dir="$TOOLS_DIR/csi-sanity"
  printf 'module loopsnap.dev/hack/tools/csi-sanity\n\ngo 1.25.0\n\nrequire github.com/kubernetes-csi/csi-test/v5 %s\n' "$CSI_SANITY_VERSION" > "$dir/go.mod"
  rm -f "$dir/go.sum"
  (cd "$dir" && go mod tidy)
}

# A wrapper module that pins one command: go.mod requiring <module>@<version> and a tools.go importing <pkg>.
regen_single() { # dir-name module version package
  local dir="$TOOLS_DIR/$1" goline
  mkdir -p "$dir"
  goline="$(cd /tmp && sed -n 's/^go \(.*\)/\1/p' "$(go mod download -json "$2@$3" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')")"
  [ -n "$goline" ] || die "could not download $2@$3"
  printf 'module loopsnap.dev/hack/tools/%s\n\ngo %s\n\nrequire %s %s\n' "$1" "$goline" "$2" "$3" > "$dir/go.mod"
  printf '//go:build tools\n\n// Package tools pins %s so that go.sum checksums every dependency.\npackage tools\n\nimport _ "%s"\n' \
    "$(basename "$4")" "$4" > "$dir/tools.go"
  rm -f "$dir/go.sum"
  (cd "$dir" && go mod tidy)
}

regen() {
  case "$1" in
    k8s) regen_k8s ;;
    etcd) regen_etcd ;;
    csi-sanity) regen_csi_sanity ;;
    helm) regen_single helm helm.sh/helm/v3 "$HELM_VERSION" "$(package_of helm)" ;;
    kubeconform) regen_single kubeconform github.com/yannh/kubeconform "$KUBECONFORM_VERSION" "$(package_of kubeconform)" ;;
    cri-tools) regen_single cri-tools sigs.k8s.io/cri-tools "$CRI_TOOLS_VERSION" "$(package_of crictl)" ;;
    promtool) regen_single promtool github.com/prometheus/prometheus "$PROMETHEUS_VERSION" "$(package_of promtool)" ;;
    *) die "unknown wrapper module: $1 (known: k8s etcd csi-sanity helm kubeconform promtool cri-tools)" ;;
  esac
}

build() {
  local tool="$1" module pkg stamp_file want start
  module="$(module_of "$tool")"
  pkg="$(package_of "$tool")"
  [ -f "$TOOLS_DIR/$module/go.mod" ] || regen "$module"
  stamp_file="$BIN_DIR/.$tool.stamp"
  want="$(stamp_of "$tool")"
  if [ -x "$BIN_DIR/$tool" ] && [ "$(cat "$stamp_file" 2>/dev/null)" = "$want" ]; then
    log "$tool $(version_of "$tool") is up to date"
    return 0
  fi
  log "building $tool $(version_of "$tool")"
  start=$(date +%s)
  (cd "$TOOLS_DIR/$module" && go build -trimpath -tags "$(tags_of "$tool")" -ldflags "$(ldflags_of "$tool")" -o "$BIN_DIR/$tool.tmp" "$pkg")
  mv -f "$BIN_DIR/$tool.tmp" "$BIN_DIR/$tool"
  echo "$want" > "$stamp_file"
  log "built $tool in $(( $(date +%s) - start ))s"
}

main() {
  if [ "${1:-}" = "--regen" ]; then
    shift
    [ $# -gt 0 ] || die "--regen needs a wrapper module name"
    for m in "$@"; do regen "$m"; done
    exit 0
  fi
  if [ "${1:-}" = "--bin-dir" ]; then echo "$BIN_DIR"; exit 0; fi
  local tools=("$@")
  [ ${#tools[@]} -gt 0 ] || tools=("${ALL_TOOLS[@]}")
  local start; start=$(date +%s)
  for t in "${tools[@]}"; do build "$t"; done
  log "all requested tools ready in $(( $(date +%s) - start ))s: $BIN_DIR"
}

main "$@"
