#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Runs csi-sanity (kubernetes-csi/csi-test, pinned in hack/tools/versions.env, built by hack/build-tools.sh)
# against a real node plugin (real engine, FUSE, loop devices; needs root) on a unix socket, once per access
# type, with small volumes. For each access type a fresh plugin and state dir are used; afterwards the plugin
# is stopped and the run fails if any loop device or mount of it is left.
#
#   hack/csi-sanity.sh                         mount, then block
#   hack/csi-sanity.sh --access-type block     one access type
#   hack/csi-sanity.sh -- --ginkgo.focus=NodeStage   extra csi-sanity flags after --
#
# Prints per access type "csi-sanity <type>: N passed, N failed, N skipped, N pending" and at the end the
# total as "N passed, N failed". Exits non-zero on any failure, on leftovers, and when a skipped or pending
# spec is not listed in docs/csi-sanity.md (every skip needs a written reason).
# Environment: LOOPSNAP_SANITY_VOLUME_BYTES (default 16 MiB), LOOPSNAP_SANITY_KEEP=1 keeps the work dir.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ACCESS_TYPES=(mount block)
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --access-type) ACCESS_TYPES=("$2"); shift 2 ;;
    --access-type=*) ACCESS_TYPES=("${1#*=}"); shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "csi-sanity.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

log() { printf '[csi-sanity] %s\n' "$*" >&2; }
die() { printf '[csi-sanity] error: %s\n' "$*" >&2; echo "0 passed, 1 failed"; exit 1; }

[ "$(id -u)" = 0 ] || die "csi-sanity runs the real node plugin (loop devices, FUSE, mounts) and needs root"

VOLUME_BYTES="${LOOPSNAP_SANITY_VOLUME_BYTES:-16777216}"
EXPAND_BYTES=$((VOLUME_BYTES * 2))
DOC="$ROOT/docs/csi-sanity.md"

"$ROOT/hack/build-tools.sh" csi-sanity >/dev/null 2>&1 || die "building csi-sanity failed (hack/build-tools.sh csi-sanity)"
SANITY="$("$ROOT/hack/build-tools.sh" --bin-dir)/csi-sanity"
"$ROOT/hack/protos.sh" || die "hack/protos.sh failed"
# Rebuild when a TypeScript source is newer than the compiled entry point.
MAIN="$ROOT/dist/csi/src/main.js"
if [ ! -f "$MAIN" ] || [ -n "$(find "$ROOT/csi/src" "$ROOT/common/src" -name '*.ts' -newer "$MAIN" -print -quit)" ]; then
  log "compiling TypeScript"
  if ! npx tsc -p tsconfig.build.json; then
    # tsc emits despite type errors elsewhere; go on only when the plugin's JS is fresh.
    [ -z "$(find "$ROOT/csi/src" "$ROOT/common/src" -name '*.ts' -newer "$MAIN" -print -quit)" ] || die "tsc failed"
    log "tsc reported errors, but the node plugin's JavaScript was emitted; continuing"
  fi
fi

WORK="$(mktemp -d /tmp/loopsnap-sanity-XXXXXX)"
PLUGIN_PID=""

stop_plugin() {
  [ -n "$PLUGIN_PID" ] || return 0
  if kill -0 "$PLUGIN_PID" 2>/dev/null; then
    kill -TERM "$PLUGIN_PID" 2>/dev/null
    for _ in $(seq 1 150); do kill -0 "$PLUGIN_PID" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$PLUGIN_PID" 2>/dev/null; then
      log "plugin $PLUGIN_PID did not stop on SIGTERM; killing it"
      kill -KILL "$PLUGIN_PID" 2>/dev/null
    fi
  fi
  wait "$PLUGIN_PID" 2>/dev/null
  PLUGIN_PID=""
}

# Removes only what lives under $WORK: loop devices backed by files under it, then mounts under it.
force_cleanup() {
  local dev mnt
  while read -r dev; do
    [ -n "$dev" ] && losetup -d "$dev" 2>/dev/null
  done < <(losetup -l -n -O NAME,BACK-FILE 2>/dev/null | awk -v w="$WORK/" 'index($2, w) == 1 { print $1 }')
  while read -r mnt; do
    [ -n "$mnt" ] && umount -l "$mnt" 2>/dev/null
  done < <(awk -v w="$WORK/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
}

leftovers() {
  {
    losetup -l -n -O NAME,BACK-FILE 2>/dev/null | awk -v w="$WORK/" 'index($2, w) == 1 { print "loop " $1 " on " $2 }'
    awk -v w="$WORK/" 'index($5, w) == 1 { print "mount " $5 }' /proc/self/mountinfo
  }
}

on_exit() {
  stop_plugin
  force_cleanup
  if [ "${LOOPSNAP_SANITY_KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap on_exit EXIT
trap 'exit 130' INT TERM

start_plugin() { # dir
  local dir="$1"
  mkdir -p "$dir"
  node --enable-source-maps "$MAIN" \
    --node-id "sanity-node" \
    --state-dir "$dir/state" \
    --endpoint "unix://$dir/csi.sock" \
    --kubelet-dir "$dir" \
    --log-level "${LOOPSNAP_SANITY_LOG_LEVEL:-info}" \
    >"$dir/plugin.log" 2>&1 &
  PLUGIN_PID=$!
  for _ in $(seq 1 300); do
    if grep -q '"msg":"Started node plugin"' "$dir/plugin.log" 2>/dev/null; then return 0; fi
    kill -0 "$PLUGIN_PID" 2>/dev/null || break
    sleep 0.1
  done
  tail -20 "$dir/plugin.log" >&2
  return 1
}

TOTAL_PASSED=0
TOTAL_FAILED=0
STATUS=0
FAIL_REPORT=""

for at in "${ACCESS_TYPES[@]}"; do
  case "$at" in mount|block) ;; *) die "access type must be mount or block, got $at" ;; esac
  dir="$WORK/$at"
  start_plugin "$dir" || { log "node plugin did not start ($at)"; TOTAL_FAILED=$((TOTAL_FAILED + 1)); STATUS=1; stop_plugin; continue; }
  log "running csi-sanity ($at, volumes of $VOLUME_BYTES bytes)"
  "$SANITY" \
    --csi.endpoint "unix://$dir/csi.sock" \
    --csi.mountdir "$dir/target" \
    --csi.stagingdir "$dir/staging" \
    --csi.testvolumesize "$VOLUME_BYTES" \
    --csi.testvolumeexpandsize "$EXPAND_BYTES" \
    --csi.testvolumeaccesstype "$at" \
    --csi.junitfile "$dir/junit.xml" \
    --ginkgo.no-color \
    "${EXTRA[@]}" >"$dir/sanity.out" 2>&1
  rc=$?
  stop_plugin
  summary="$(grep -E '^(SUCCESS|FAIL)! -- ' "$dir/sanity.out" | tail -1)"
  passed="$(sed -n 's/.* \([0-9]*\) Passed.*/\1/p' <<<"$summary")"
  failed="$(sed -n 's/.* \([0-9]*\) Failed.*/\1/p' <<<"$summary")"
  pending="$(sed -n 's/.* \([0-9]*\) Pending.*/\1/p' <<<"$summary")"
  skipped="$(sed -n 's/.* \([0-9]*\) Skipped.*/\1/p' <<<"$summary")"
  if [ -z "$passed" ] || [ -z "$failed" ]; then
    log "no csi-sanity summary ($at, exit $rc); last lines:"
    tail -40 "$dir/sanity.out" >&2
    passed=0; failed=1; pending=0; skipped=0
  fi
  if [ "$rc" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
  if [ "$failed" != 0 ]; then
    grep -E '^\s*\[FAIL\]|^  \[FAILED\]|\[FAIL\] ' "$dir/sanity.out" | sed 's/^/  /' >&2
    # Repeated at the very end (CI shows the tail): each failed spec with the message it failed with.
    FAIL_REPORT+="$at:"$'\n'"$(grep -E -A4 '^\s*\[FAILED\]' "$dir/sanity.out" | grep -v '^--$' | head -60 | sed 's/^/    /')"$'\n'
    FAIL_REPORT+="$(sed -n '/^Summarizing [0-9]* Failure/,$p' "$dir/sanity.out" | head -20 | sed 's/^/    /')"$'\n'
    keep="$ROOT/.loopsnap/test-logs/csi-sanity-$at"
    rm -rf "$keep" && mkdir -p "$keep" && cp "$dir/sanity.out" "$dir/plugin.log" "$dir/junit.xml" "$keep/" 2>/dev/null
    log "csi-sanity output, plugin log and junit kept in $keep"
    log "plugin log: $dir/plugin.log (kept: LOOPSNAP_SANITY_KEEP=1)"
    [ "${LOOPSNAP_SANITY_KEEP:-0}" = 1 ] || tail -30 "$dir/plugin.log" >&2
    STATUS=1
  fi
  left="$(leftovers)"
  if [ -n "$left" ]; then
    log "the node plugin left resources behind ($at):"
    printf '  %s\n' "$left" >&2
    failed=$((failed + 1)); STATUS=1
    force_cleanup
  fi
  # Every skipped or pending spec must be documented with its reason (not checkable when extra flags such
  # as --ginkgo.focus make csi-sanity skip specs on purpose).
  undocumented=0
  [ ${#EXTRA[@]} -eq 0 ] && while IFS= read -r name; do
    [ -n "$name" ] || continue
    if ! grep -qF -- "$name" "$DOC" 2>/dev/null; then
      log "skipped spec not listed in docs/csi-sanity.md: $name"
      undocumented=$((undocumented + 1))
    fi
  done < <(sed -n 's/.*<testcase name="\[It\] \([^"]*\)"[^>]*status="\(skipped\|pending\)".*/\1/p' "$dir/junit.xml" 2>/dev/null | sed 's/&#39;/'"'"'/g; s/&quot;/"/g; s/&amp;/\&/g')
  if [ "$undocumented" != 0 ]; then failed=$((failed + undocumented)); STATUS=1; fi
  echo "csi-sanity $at: $passed passed, $failed failed, $skipped skipped, $pending pending"
  TOTAL_PASSED=$((TOTAL_PASSED + passed))
  TOTAL_FAILED=$((TOTAL_FAILED + failed))
done

if [ -n "$FAIL_REPORT" ]; then
  echo "csi-sanity failures:"
  printf '%s' "$FAIL_REPORT"
fi
echo "$TOTAL_PASSED passed, $TOTAL_FAILED failed"
[ "$TOTAL_FAILED" = 0 ] && [ "$STATUS" = 0 ]
