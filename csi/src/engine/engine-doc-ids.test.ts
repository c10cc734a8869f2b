// SPDX-License-Identifier: Apache-2.0
// docs/engine.md defines every engine rule the repository cites.
//
// Citations, found in every .ts and .md file outside node_modules, dist, gen, coverage, .git and .loopsnap:
//   rule ids   OP-n, INV-n, EC-n (optional letter suffix); "OP-7..OP-10" and "OP-7..10" are ranges,
//              "OP-8/OP-9" and "INV-1/2/4" lists
//   figures    FIG. n, Fig n, figure n; "FIG. 45/46" is a list, "FIG. 24-27" a range
//   sections   §n or §n.m of the former design file; "§3.5-§3.8" and "§3.11-3.12" are ranges; a § right after
//              a file name ending in .md cites that file, not the design
//   steps      "OP-13 step 7", "OP-1 steps 2-5": the numbered top-level steps of that operation's section
// Definitions in docs/engine.md: a heading whose text starts with the id ("### OP-7 — ...", "### FIG. 43 — ...")
// or a list item whose bold lead is the id ("- **INV-3** — ...", "- **§3.9** — ..."), each id exactly once.
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const DOC = 'docs/engine.md';
const SKIP_DIRS = new Set(['node_modules', 'dist', 'gen', 'coverage', '.git', '.loopsnap']);
/** Longest range expanded; longer "ranges" are read as their two ends. */
const MAX_RANGE = 64;

interface Citation {
  /** Canonical id: "OP-7", "FIG. 43", "§3.9". */
  id: string;
  where: string;
}

interface StepCitation {
  op: string;
  step: number;
  where: string;
}

function sourceFiles(dir: string, out: string[] = []): string[] {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.isDirectory()) {
      if (!SKIP_DIRS.has(e.name)) sourceFiles(join(dir, e.name), out);
    } else if (e.isFile() && (e.name.endsWith('.ts') || e.name.endsWith('.md'))) {
      out.push(join(dir, e.name));
    }
  }
  return out;
}

function span(from: number, to: number): number[] {
  if (to < from || to - from > MAX_RANGE) return [from, to];
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}

const RULE = /\b(OP|INV|EC)-(\d+)([a-z]?)\b((?:\s*(?:\.\.|\/|–)\s*(?:\1-)?\d+\b)*)/g;
const RULE_TAIL = /\s*(\.\.|\/|–)\s*(?:[A-Z]+-)?(\d+)/g;
const FIG = /\bfig(?:ure)?s?\.?\s*(\d+)\b((?:\s*(?:\/|-|–)\s*\d+\b)*)/gi;
const FIG_TAIL = /\s*(\/|-|–)\s*(\d+)/g;
const SECTION = /§\s?(\d+(?:\.\d+)*)(?:\s*[-–]\s*§?\s?(\d+(?:\.\d+)*))?/g;
const STEP = /\b(OP-\d+)\s+steps?\s+(\d+)(?:\s*[-–]\s*(\d+))?/g;

/** Numbers of a list like "7..10/12": ranges for "..", "-" and "–", single numbers for "/". */
function listed(first: number, tail: string, re: RegExp): number[] {
  const out = [first];
  let last = first;
  for (const m of tail.matchAll(re)) {
    const n = Number(m[2]);
    if (m[1] === '/') out.push(n);
    else out.push(...span(last, n).slice(1));
    last = n;
  }
  return out;
}

/** "3.5".."3.8" -> 3.5, 3.6, 3.7, 3.8 when only the last component differs; else the two ends. */
function sectionRange(a: string, b: string | undefined): string[] {
  if (b === undefined) return [a];
  const pa = a.split('.');
  const pb = b.split('.');
  const head = pa.slice(0, -1).join('.');
  if (pa.length !== pb.length || head !== pb.slice(0, -1).join('.')) return [a, b];
  return span(Number(pa[pa.length - 1]), Number(pb[pb.length - 1])).map((n) => (head === '' ? `${n}` : `${head}.${n}`));
}

function citationsIn(text: string, file: string): { ids: Citation[]; steps: StepCitation[] } {
  const ids: Citation[] = [];
  const steps: StepCitation[] = [];
  text.split('\n').forEach((line, i) => {
    const where = `${file}:${i + 1}`;
    for (const m of line.matchAll(RULE)) {
      const suffix = m[3]!;
      const numbers = listed(Number(m[2]), m[4]!, RULE_TAIL);
      numbers.forEach((n, k) => ids.push({ id: `${m[1]}-${n}${k === 0 ? suffix : ''}`, where }));
    }
    for (const m of line.matchAll(FIG)) {
      for (const n of listed(Number(m[1]), m[2]!, FIG_TAIL)) ids.push({ id: `FIG. ${n}`, where });
    }
    for (const m of line.matchAll(SECTION)) {
      if (/\.md\s*$/.test(line.slice(Math.max(0, m.index - 8), m.index))) continue;
      for (const s of sectionRange(m[1]!, m[2])) ids.push({ id: `§${s}`, where });
    }
    for (const m of line.matchAll(STEP)) {
      const from = Number(m[2]);
      for (const step of m[3] === undefined ? [from] : span(from, Number(m[3]))) steps.push({ op: m[1]!, step, where });
    }
  });
  return { ids, steps };
}

/** The canonical id a definition token names, or null. */
function canonical(token: string): string | null {
  const t = token.trim();
  const rule = /^(OP|INV|EC)-(\d+[a-z]?)$/.exec(t);
  if (rule) return `${rule[1]}-${rule[2]}`;
  const fig = /^fig(?:ure)?\.?\s*(\d+)$/i.exec(t);
  if (fig) return `FIG. ${fig[1]}`;
  const section = /^§\s?(\d+(?:\.\d+)*)$/.exec(t);
  if (section) return `§${section[1]}`;
  return null;
}

interface DocDefinitions {
  /** id -> lines of docs/engine.md defining it. */
  lines: Map<string, number[]>;
  /** OP id -> the numbers of the top-level numbered steps of its section. */
  steps: Map<string, Set<number>>;
}

function definitions(doc: string): DocDefinitions {
  const lines = new Map<string, number[]>();
  const steps = new Map<string, Set<number>>();
  let section: Set<number> | null = null;
  doc.split('\n').forEach((line, i) => {
    const heading = /^#{1,6}\s+(.+)$/.exec(line);
    const item = /^\s*[-*]\s+\*\*(.+?)\*\*/.exec(line);
    const token = heading ? heading[1]!.split(/\s+—\s+/)[0]! : item ? item[1]! : null;
    const id = token === null ? null : canonical(token);
    if (heading) section = null;
    if (id !== null) {
      lines.set(id, [...(lines.get(id) ?? []), i + 1]);
      if (heading && id.startsWith('OP-')) {
        section = new Set();
        steps.set(id, section);
      }
    }
    const step = /^(\d+)\.\s/.exec(line);
    if (section !== null && step) section.add(Number(step[1]));
  });
  return { lines, steps };
}

describe('docs/engine.md defines every engine rule the repository cites', () => {
  const cited: Citation[] = [];
  const stepCites: StepCitation[] = [];
  for (const path of sourceFiles(ROOT)) {
    const found = citationsIn(readFileSync(path, 'utf8'), relative(ROOT, path));
    cited.push(...found.ids);
    stepCites.push(...found.steps);
  }
  const defs = definitions(readFileSync(join(ROOT, DOC), 'utf8'));
  const distinct = new Set(cited.map((c) => c.id));
  const kind = (prefix: string) => [...distinct].filter((id) => id.startsWith(prefix));

  it('finds the citations it is meant to check', () => {
    expect(kind('OP-').length + kind('INV-').length + kind('EC-').length).toBeGreaterThan(35);
    expect(kind('FIG. ').length).toBeGreaterThanOrEqual(7);
    expect(kind('§').length).toBeGreaterThanOrEqual(15);
    expect(stepCites.length).toBeGreaterThan(10);
    // Citations outside the document itself, so the check is not satisfied by the document alone.
    expect(cited.filter((c) => !c.where.startsWith(`${DOC}:`)).length).toBeGreaterThan(300);
  });

  it('defines every cited OP/INV/EC id, figure and § section', () => {
    const missing = cited.filter((c) => !defs.lines.has(c.id)).map((c) => `${c.id} cited at ${c.where}`);
    expect(missing, `${DOC} does not define:\n${missing.join('\n')}`).toEqual([]);
    expect(defs.lines.size).toBeGreaterThanOrEqual(distinct.size);
  });

  it('defines each id exactly once', () => {
    const twice = [...defs.lines].filter(([, at]) => at.length > 1).map(([id, at]) => `${id} at ${at.join(', ')}`);
    expect(twice).toEqual([]);
  });

  it('has the numbered steps that citations such as "OP-13 step 7" name', () => {
    const missing = stepCites
      .filter((c) => !(defs.steps.get(c.op)?.has(c.step) ?? false))
      .map((c) => `${c.op} step ${c.step} cited at ${c.where}`);
    expect(missing, `${DOC} has no such numbered step:\n${missing.join('\n')}`).toEqual([]);
  });
});
