#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs whatever is missing for running and testing loopsnap on a Debian machine: Debian packages,
# node_modules (npm ci), the Go-built tools (hack/build-tools.sh) and the compiled TypeScript.
# Idempotent and quiet when everything is present.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

# command -> Debian package providing it
declare -A NEED=(
  [openssl]=openssl [curl]=curl [ss]=iproute2 [losetup]=util-linux [fsfreeze]=util-linux
  [mkfs.ext4]=e2fsprogs [mkfs.xfs]=xfsprogs [fio]=fio [mountpoint]=util-linux
  [fsck.ext4]=e2fsprogs [xfs_repair]=xfsprogs
  # The real node (hack/node.sh) and the images built without Docker (hack/image.sh).
  [containerd]=containerd [ctr]=containerd [runc]=runc [iptables]=iptables
  [mmdebstrap]=mmdebstrap [umoci]=umoci [skopeo]=skopeo [gcc]=gcc
)
missing=()
for cmd in "${!NEED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEED[$cmd]}")
done
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
# The pause image is linked statically (hack/image.sh): libc.a.
[ -n "$(find /usr/lib -name libc.a -path '*linux-gnu*' -print -quit 2>/dev/null)" ] || missing+=(libc6-dev)
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
  [ "$(id -u)" = 0 ] || die "missing Debian packages (${pkgs[*]}); run as root or install them"
  log "installing Debian packages: ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

# node_modules: reinstall when package-lock.json changed since the last npm ci.
lock_sum="$(sha256sum package-lock.json | cut -c1-16)"
if [ ! -d node_modules ] || [ "$(cat node_modules/.loopsnap-lock 2>/dev/null)" != "$lock_sum" ]; then
  log "npm ci"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$lock_sum" > node_modules/.loopsnap-lock
fi

"$ROOT/hack/build-tools.sh"

"$ROOT/hack/protos.sh"
log "compiling TypeScript"
npx tsc -p tsconfig.build.json
