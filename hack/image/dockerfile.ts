// SPDX-License-Identifier: Apache-2.0
// Reads the repository's Dockerfile far enough to say which files its final stage puts where, without Docker:
// stages, WORKDIR, COPY (with --from) and the `printf '...' > /path` commands of RUN. Used by the tests that
// compare its layout with the image hack/image.sh builds (test/image/layout.test.ts) and pin its inputs
// (hack/image/pins.test.ts). Anything it does not understand in the final stage is an error, not a guess.
import { posix } from 'node:path';

export interface Instruction {
  readonly keyword: string; // upper case: FROM, RUN, COPY, ...
  readonly args: string; // the rest, continuation lines joined with a space, comment lines dropped
  readonly line: number; // 1-based line of the keyword
}

export interface Stage {
  readonly base: string; // FROM image, with global ARG defaults substituted
  readonly name: string | undefined;
  readonly instructions: readonly Instruction[];
}

export interface Dockerfile {
  readonly args: Readonly<Record<string, string>>; // global ARGs (before the first FROM) and their defaults
  readonly stages: readonly Stage[];
}

/** Splits a Dockerfile into instructions and stages. */
export function parseDockerfile(text: string): Dockerfile {
  const instructions: Instruction[] = [];
  let pending: { keyword: string; parts: string[]; line: number } | undefined;
  text.split('\n').forEach((raw, i) => {
    let line = raw.replace(/\r$/, '');
    if (/^\s*#/.test(line)) return; // comments (also inside a continuation) and parser directives
    if (pending === undefined) {
      if (line.trim() === '') return;
      const m = /^\s*([A-Za-z]+)\s*(.*)$/.exec(line);
      if (!m) throw new Error(`Dockerfile line ${i + 1}: not an instruction: ${line}`);
      pending = { keyword: m[1]!.toUpperCase(), parts: [], line: i + 1 };
      line = m[2]!;
    }
    const continued = /\\\s*$/.test(line);
    pending.parts.push(line.replace(/\\\s*$/, '').trim());
    if (!continued) {
      instructions.push({ keyword: pending.keyword, args: pending.parts.join(' ').trim(), line: pending.line });
      pending = undefined;
    }
  });
  if (pending) throw new Error(`Dockerfile ends inside a continued ${pending.keyword} (line ${pending.line})`);

  const args: Record<string, string> = {};
  const stages: Array<{ base: string; name: string | undefined; instructions: Instruction[] }> = [];
  for (const ins of instructions) {
    if (ins.keyword === 'FROM') {
      const m = /^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i.exec(ins.args);
      if (!m) throw new Error(`Dockerfile line ${ins.line}: cannot read FROM ${ins.args}`);
      const base = m[1]!.replace(/\$\{(\w+)\}|\$(\w+)/g, (_, a?: string, b?: string) => args[(a ?? b)!] ?? '');
      stages.push({ base, name: m[2], instructions: [] });
    } else if (stages.length === 0) {
      if (ins.keyword !== 'ARG') throw new Error(`Dockerfile line ${ins.line}: ${ins.keyword} before the first FROM`);
      const m = /^(\w+)(?:=(.*))?$/.exec(ins.args);
      if (!m) throw new Error(`Dockerfile line ${ins.line}: cannot read ARG ${ins.args}`);
      args[m[1]!] = m[2] ?? '';
    } else {
      stages[stages.length - 1]!.instructions.push(ins);
    }
  }
  if (stages.length === 0) throw new Error('Dockerfile has no FROM');
  return { args, stages };
}

/** A file (or symlink) the final stage puts at `path`, copied from `source` or written with `content`. */
export interface PlacedFile {
  readonly path: string; // absolute path in the image
  readonly line: number;
  readonly copy?: { readonly stage: string | undefined; readonly source: string; readonly sourceIsDir: boolean };
  readonly content?: string;
}

/** Where each COPY source and printf target of the final stage lands. COPY of a directory copies its contents. */
export function finalStageFiles(
  df: Dockerfile,
  isDir: (stage: string | undefined, source: string) => boolean,
): {
  readonly workdir: string;
  readonly cmd: readonly string[] | undefined;
  readonly placed: readonly PlacedFile[];
} {
  const stage = df.stages[df.stages.length - 1]!;
  let workdir = '/';
  let cmd: string[] | undefined;
  const placed: PlacedFile[] = [];
  for (const ins of stage.instructions) {
    switch (ins.keyword) {
      case 'WORKDIR':
        workdir = posix.resolve(workdir, ins.args);
        break;
      case 'COPY': {
        const words = ins.args.split(/\s+/);
        let from: string | undefined;
        while (words[0]?.startsWith('--')) {
          const flag = words.shift()!;
          const m = /^--from=(.+)$/.exec(flag);
          if (m) from = m[1];
          else if (!/^--(chmod|chown|link)(=|$)/.test(flag))
            throw new Error(`Dockerfile line ${ins.line}: unknown COPY flag ${flag}`);
        }
        if (words.length < 2 || words[0]!.startsWith('['))
          throw new Error(`Dockerfile line ${ins.line}: COPY form not understood: ${ins.args}`);
        const dest = words.pop()!;
        const destDir = dest.endsWith('/') || dest === '.' || words.length > 1;
        const destPath = posix.resolve(workdir, dest);
        for (const source of words) {
          const sourceIsDir = isDir(from, source);
          const path = sourceIsDir || !destDir ? destPath : posix.join(destPath, posix.basename(source));
          placed.push({ path, line: ins.line, copy: { stage: from, source, sourceIsDir } });
        }
        break;
      }
      case 'RUN':
        for (const m of ins.args.matchAll(/printf\s+'([^']*)'\s*>\s*(\S+)/g)) {
          placed.push({ path: posix.resolve(workdir, m[2]!), line: ins.line, content: printfText(m[1]!) });
        }
        break;
      case 'CMD':
        cmd = JSON.parse(ins.args) as string[];
        break;
      case 'ARG':
      case 'ENV':
      case 'LABEL':
      case 'USER':
      case 'EXPOSE':
      case 'ENTRYPOINT':
        break;
      default:
        throw new Error(`Dockerfile line ${ins.line}: ${ins.keyword} in the final stage is not understood`);
    }
  }
  return { workdir, cmd, placed };
}

/** What `printf 'FORMAT'` without arguments prints (the escapes the Dockerfile uses). */
export function printfText(format: string): string {
  if (/%[^%]/.test(format)) throw new Error(`printf format with conversions not understood: ${format}`);
  return format.replace(/\\(n|t|\\)|%%/g, (s, e?: string) =>
    s === '%%' ? '%' : e === 'n' ? '\n' : e === 't' ? '\t' : '\\',
  );
}
