#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Copies third-party protobuf definitions from the Go module cache into gen/proto/ (ignored by git), where
# the gRPC loaders find them at run time:
#   gen/proto/csi.proto                              the CSI spec at CSI_SPEC_VERSION
#   gen/proto/pluginregistration/v1/api.proto        the kubelet plugin-registration API of module
#                                                    k8s.io/kubelet at the staging version of K8S_VERSION
#                                                    (v1.33.13 -> v0.33.13)
# Each has its own version stamp (gen/proto/.<name>-version); a copy whose stamp matches is left alone.
#
# api.proto imports github.com/gogo/protobuf/gogoproto/gogo.proto only for Go code-generation options
# (`option (gogoproto.*)`), which change nothing on the wire. They are stripped at copy time rather than
# copying gogo.proto too (which would pull in google/protobuf/descriptor.proto as well); the copy fails if
# a gogoproto reference is left that this script does not know how to strip (a field option, say).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=tools/versions.env
source "$ROOT/hack/tools/versions.env"
OUT="$ROOT/gen/proto"
mkdir -p "$OUT"

# up_to_date <file> <stamp> <version>
up_to_date() { [ -f "$1" ] && [ "$(cat "$2" 2>/dev/null)" = "$3" ]; }

stamp="$OUT/.csi-spec-version"
if ! up_to_date "$OUT/csi.proto" "$stamp" "$CSI_SPEC_VERSION"; then
  dir="$("$ROOT/hack/go-module-dir.sh" "github.com/container-storage-interface/spec@$CSI_SPEC_VERSION")"
  install -m 0644 "$dir/csi.proto" "$OUT/csi.proto"
  echo "$CSI_SPEC_VERSION" > "$stamp"
  echo "[protos] csi.proto $CSI_SPEC_VERSION -> $OUT" >&2
fi

KUBELET_MODULE_VERSION="v0.${K8S_VERSION#v1.}"
reg="$OUT/pluginregistration/v1/api.proto"
stamp="$OUT/.kubelet-version"
if ! up_to_date "$reg" "$stamp" "$KUBELET_MODULE_VERSION"; then
  dir="$("$ROOT/hack/go-module-dir.sh" "k8s.io/kubelet@$KUBELET_MODULE_VERSION")"
  mkdir -p "$(dirname "$reg")"
  sed -e '/^import "github.com\/gogo\/protobuf\/gogoproto\/gogo.proto";/d' \
    -e '/^option (gogoproto\.[a-z_]*) *= *[a-z]*;/d' \
    "$dir/pkg/apis/pluginregistration/v1/api.proto" > "$reg.tmp"
  if grep -n gogoproto "$reg.tmp" >&2; then
    rm -f "$reg.tmp"
    echo "[protos] api.proto of k8s.io/kubelet@$KUBELET_MODULE_VERSION has gogoproto references left (above)" >&2
    exit 1
  fi
  chmod 0644 "$reg.tmp"
  mv "$reg.tmp" "$reg"
  echo "$KUBELET_MODULE_VERSION" > "$stamp"
  echo "[protos] pluginregistration/v1/api.proto k8s.io/kubelet@$KUBELET_MODULE_VERSION -> $OUT" >&2
fi
