// SPDX-License-Identifier: Apache-2.0
// Runs a CEL/validation corpus in upstream's format (external-snapshotter client/hack/cel-tests):
//   <case>.yaml [+ <case>.yaml.err]              server-side dry-run apply; `.err` holds an expected error text
//   <case>.pre.yaml -> <case>.post.yaml [+ .post.yaml.tx_err]   apply pre for real, then apply post as an update
// Every .yaml file (pre and post files too) is also a single dry-run case, as upstream's runner does.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';

export interface CorpusCase {
  readonly name: string;
  readonly kind: 'single' | 'transition';
  readonly file: string;
  readonly pre?: string;
  /** Expected error text; undefined means the request must be accepted. */
  readonly expectedError?: string;
}

export function loadCorpus(dir: string): CorpusCase[] {
  const files = readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() && e.name.endsWith('.yaml'))
    .map((e) => join(e.parentPath, e.name))
    .sort();
  const cases: CorpusCase[] = [];
  for (const file of files) {
    const err = readOptional(`${file}.err`);
    cases.push({
      name: relative(dir, file),
      kind: 'single',
      file,
      ...(err === undefined ? {} : { expectedError: err }),
    });
  }
  for (const pre of files.filter((f) => f.endsWith('.pre.yaml'))) {
    const post = pre.replace(/\.pre\.yaml$/, '.post.yaml');
    if (!existsSync(post)) throw new Error(`${pre} has no matching ${post}`);
    const err = readOptional(`${post}.tx_err`);
    cases.push({
      name: `${relative(dir, pre)} -> ${relative(dir, post)}`,
      kind: 'transition',
      file: post,
      pre,
      ...(err === undefined ? {} : { expectedError: err }),
    });
  }
  return cases;
}

function readOptional(path: string): string | undefined {
  return existsSync(path) ? readFileSync(path, 'utf8').trim() : undefined;
}

export interface CaseOutcome {
  readonly accepted: boolean;
  readonly output: string;
}

/** Runs one case with the given kubectl runner (which throws on a non-zero exit with the server's message). */
export function runCase(c: CorpusCase, kubectl: (args: string[]) => string): CaseOutcome {
  const attempt = (args: string[]): CaseOutcome => {
    try {
      return { accepted: true, output: kubectl(args) };
    } catch (err) {
      return { accepted: false, output: (err as Error).message };
    }
  };
  if (c.kind === 'single') return attempt(['apply', '--dry-run=server', '-f', c.file]);
  kubectl(['apply', '-f', c.pre!]);
  try {
    return attempt(['apply', '-f', c.file]);
  } finally {
    attempt(['delete', '--ignore-not-found', '--wait=false', '-f', c.pre!]);
  }
}
