#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Prints the module-cache directory of a Go module version, downloading it from the Go module proxy when
# missing. Used to read third-party definitions (csi.proto, upstream CRDs) at build and test time without
# committing copies.   hack/go-module-dir.sh github.com/container-storage-interface/spec@v1.12.0
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: hack/go-module-dir.sh <module>@<version>" >&2; exit 2; }
CACHE_DIR="${LOOPSNAP_CACHE:-$HOME/.cache/loopsnap}"
export GOTOOLCHAIN=local GOMODCACHE="$CACHE_DIR/gomod" GOFLAGS=-mod=mod
cd /tmp
out="$(go mod download -json "$1")" || { echo "go mod download $1 failed: $out" >&2; exit 1; }
dir="$(printf '%s\n' "$out" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
[ -n "$dir" ] && [ -d "$dir" ] || { echo "no module directory for $1: $out" >&2; exit 1; }
echo "$dir"
