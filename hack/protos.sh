#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Copies third-party protobuf definitions from the Go module cache into gen/proto/ (ignored by git), where
# the gRPC loaders find them at run time: the CSI spec's csi.proto at the pinned version.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=tools/versions.env
source "$ROOT/hack/tools/versions.env"
OUT="$ROOT/gen/proto"
stamp="$OUT/.csi-spec-version"
if [ -f "$OUT/csi.proto" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$CSI_SPEC_VERSION" ]; then exit 0; fi
dir="$("$ROOT/hack/go-module-dir.sh" "github.com/container-storage-interface/spec@$CSI_SPEC_VERSION")"
mkdir -p "$OUT"
install -m 0644 "$dir/csi.proto" "$OUT/csi.proto"
echo "$CSI_SPEC_VERSION" > "$stamp"
echo "[protos] csi.proto $CSI_SPEC_VERSION -> $OUT" >&2
