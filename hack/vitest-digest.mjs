#!/usr/bin/env node
// SPDX-License-Identifier: Apache-2.0
// Prints the failed tests of a vitest JSON report (one line each: file, test name, first line of the error)
// and the totals line `N passed, N failed, N skipped`. Usage: hack/vitest-digest.mjs REPORT.json
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';

const path = process.argv[2];
if (!path) {
  console.error('usage: vitest-digest.mjs REPORT.json');
  process.exit(2);
}
let report;
try {
  report = JSON.parse(readFileSync(path, 'utf8'));
} catch (err) {
  console.log(`vitest digest: no report at ${path} (${err.message.split('\n')[0]})`);
  process.exit(0);
}
const ansiColour = new RegExp(`${String.fromCharCode(27)}\\[[0-9;]*m`, 'g');
const firstLine = (s) =>
  String(s ?? '')
    .replace(ansiColour, '')
    .split('\n')
    .find((l) => l.trim() !== '')
    ?.trim()
    .slice(0, 240) ?? '';
for (const file of report.testResults ?? []) {
  const name = relative(process.cwd(), file.name);
  const failed = (file.assertionResults ?? []).filter((t) => t.status === 'failed');
  for (const t of failed) console.log(`FAIL ${name} > ${t.fullName}: ${firstLine(t.failureMessages?.[0])}`);
  if (failed.length === 0 && file.status === 'failed') console.log(`FAIL ${name}: ${firstLine(file.message)}`);
}
const passed = report.numPassedTests ?? 0;
const failedN = report.numFailedTests ?? 0;
const skipped = (report.numPendingTests ?? 0) + (report.numTodoTests ?? 0);
console.log(`vitest: ${passed} passed, ${failedN} failed, ${skipped} skipped`);
