#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The README's test command: sets up what is missing, then runs every suite (lint, unit, integration with
# root and the real control plane, csi-sanity). Runs all suites even when one fails, prints each suite's
# summary, and exits non-zero when anything failed.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/hack/setup.sh" || { echo "setup failed"; exit 1; }

failed=()
run_suite() { # name command...
  local name="$1"; shift
  printf '\n==> %s\n' "$name"
  if "$@"; then printf '==> %s: ok\n' "$name"; else failed+=("$name"); printf '==> %s: FAILED\n' "$name"; fi
}

if [ "$(id -u)" != 0 ]; then
  echo "warning: not root; tests that need loop devices, mounts or FUSE will be reported as skipped" >&2
fi

run_suite lint npm run --silent lint
report="$ROOT/.loopsnap/test-logs/vitest-report.json"
mkdir -p "$(dirname "$report")" && rm -f "$report"
run_suite vitest npx vitest run --reporter=default --reporter=json --outputFile.json="$report" "$@"
for s in "$ROOT"/hack/suites/*.sh; do
  [ -e "$s" ] || continue
  run_suite "$(basename "$s" .sh)" "$s"
done

echo
# Last lines of the output name every failed test: CI shows only the tail.
node "$ROOT/hack/vitest-digest.mjs" "$report"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED suites: ${failed[*]}"
  exit 1
fi
echo "all suites passed"
