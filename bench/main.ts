// SPDX-License-Identifier: Apache-2.0
// `npm run bench -- <suite> [--json]`: runs one benchmark suite. Each suite prints progress lines and, with
// --json, one JSON object as the very last line of its output (fields named in its issue, ratios measured
// side by side with their baseline in the same run).
import { suites } from './suites.js';

async function main(argv: readonly string[]): Promise<number> {
  const json = argv.includes('--json');
  const names = argv.filter((a) => !a.startsWith('--'));
  const name = names[0];
  if (!name || !(name in suites)) {
    process.stderr.write(`usage: npm run bench -- <${Object.keys(suites).join('|')}> [--json]\n`);
    return 2;
  }
  const suite = suites[name];
  if (!suite) return 2;
  const result = await suite.run({ json, args: argv.slice(1), log: (line) => process.stderr.write(`${line}\n`) });
  process.stdout.write(`${json ? JSON.stringify(result) : JSON.stringify(result, null, 2)}\n`);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
