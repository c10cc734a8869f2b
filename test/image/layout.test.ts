// SPDX-License-Identifier: Apache-2.0
// The Dockerfile and hack/image.sh make the same file layout. No Docker here: the Dockerfile's final stage is
// read (COPY sources and destinations, WORKDIR, the printf commands of RUN, CMD) and every COPY source is
// resolved to what its build stage holds, from the repository: compiled sources, protos, package.json, and for
// node_modules the production packages of package-lock.json. That expected list is compared, both ways, with
// the files (and symlinks) under /app and /usr/local in the layers of the image hack/image.sh built.
// The image is built first when its inputs changed (a no-op otherwise; cold, a few minutes as root).
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { finalStageFiles, parseDockerfile } from '../../hack/image/dockerfile.js';
import { REPO_ROOT } from '../support/paths.js';
import { blob, builtImage, layerEntries, layerFile, type ImageSummary, type LayerEntry } from './lib.js';

const COMPARED = /^(app|usr\/local)\//;

function repoFiles(dir: string): string[] {
  const root = join(REPO_ROOT, dir);
  if (!existsSync(root)) throw new Error(`${dir} does not exist (hack/image.sh build makes it)`);
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.push(relative(root, p));
    }
  };
  walk(root);
  return out;
}

/** What the image takes of tsc -p tsconfig.build.json for <pkg>/src: each product .ts as .js and .js.map. */
function compiled(pkg: string): string[] {
  return repoFiles(join(pkg, 'src'))
    .filter((f) => f.endsWith('.ts') && !f.endsWith('.test.ts') && !f.endsWith('.testing.ts') && !f.endsWith('.d.ts'))
    .flatMap((f) => [`src/${f.slice(0, -3)}.js`, `src/${f.slice(0, -3)}.js.map`]);
}

interface LockPackage {
  dev?: boolean;
  bin?: Record<string, string>;
}

/** The production tree of package-lock.json: each package's package.json, its bin links, the hidden lock file. */
function productionModules(): { files: string[]; judged: (p: string) => boolean } {
  const lock = JSON.parse(readFileSync(join(REPO_ROOT, 'package-lock.json'), 'utf8')) as {
    packages: Record<string, LockPackage>;
  };
  const files = ['.package-lock.json'];
  for (const [key, pkg] of Object.entries(lock.packages)) {
    if (key === '' || pkg.dev) continue;
    files.push(`${key.replace(/^node_modules\//, '')}/package.json`);
    // npm links a package's bins into the node_modules directory it sits in.
    const binDir = `${key.replace(/(@[^/]+\/)?[^/]+$/, '').replace(/^node_modules\//, '')}.bin`;
    for (const name of Object.keys(pkg.bin ?? {})) files.push(`${binDir}/${name}`);
  }
  // Compared: each package's own package.json, the .bin links and the hidden lock file.
  const name = '(@[^/]+/)?[^/.][^/]*';
  const pkgJson = new RegExp(`^${name}(/node_modules/${name})*/package\\.json$`);
  const judged = (p: string) => p === '.package-lock.json' || /(^|\/)\.bin\/[^/]+$/.test(p) || pkgJson.test(p);
  return { files, judged };
}

interface Source {
  readonly isDir: boolean;
  readonly files: readonly string[]; // relative to the source dir ('' for a file source)
  readonly judged?: (relPath: string) => boolean; // compare only the paths this accepts
}

/** What each build stage of the Dockerfile holds at a COPY source, derived from the repository. */
function resolveSource(stage: string | undefined, source: string): Source {
  const key = `${stage ?? '<context>'}:${source}`;
  const dist = /^build:\/src\/dist\/(common|controller|csi)$/.exec(key);
  if (dist) return { isDir: true, files: compiled(dist[1]!) };
  switch (key) {
    case 'build:/src/package.json':
    case 'node:/node/package/bin/node':
    case 'node:/node/package/LICENSE':
      return { isDir: false, files: [''] };
    case 'build:/src/csi/proto':
      return { isDir: true, files: repoFiles('csi/proto') };
    case 'protos:/src/gen/proto':
      return { isDir: true, files: repoFiles('gen/proto') };
    case 'modules:/app/node_modules': {
      const m = productionModules();
      return { isDir: true, files: m.files, judged: m.judged };
    }
    default:
      throw new Error(`no rule for COPY ${stage ? `--from=${stage} ` : ''}${source}: teach test/image/layout.test.ts`);
  }
}

const dockerfileText = readFileSync(join(REPO_ROOT, 'Dockerfile'), 'utf8');
const docker = finalStageFiles(parseDockerfile(dockerfileText), (s, src) => resolveSource(s, src).isDir);

let summary: ImageSummary;
let archive: string;
let appEntries: Map<string, { entry: LayerEntry; digest: string }>;
let baseEntries: LayerEntry[];

beforeAll(() => {
  ({ summary, archive } = builtImage('loopsnap'));
  appEntries = new Map();
  for (const layer of summary.layers.slice(1)) {
    for (const entry of layerEntries(archive, layer.digest))
      appEntries.set(entry.path, { entry, digest: layer.digest });
  }
  baseEntries = layerEntries(archive, summary.layers[0]!.digest);
}, 1_300_000);

describe('Dockerfile and hack/image.sh: same layout', () => {
  it('has the same files and symlinks under /app and /usr/local', () => {
    const expected = new Set<string>();
    const judgedTrees: Array<{ root: string; judged: (rel: string) => boolean }> = [];
    for (const p of docker.placed) {
      const dest = p.path.slice(1);
      if (p.content !== undefined) {
        expected.add(dest);
        continue;
      }
      const src = resolveSource(p.copy!.stage, p.copy!.source);
      for (const f of src.files) expected.add(f === '' ? dest : `${dest}/${f}`);
      if (src.judged) judgedTrees.push({ root: `${dest}/`, judged: src.judged });
    }
    const actual = [...appEntries.values()]
      .filter(({ entry }) => entry.type !== 'dir' && COMPARED.test(entry.path))
      .map(({ entry }) => entry.path)
      .filter((path) => {
        const tree = judgedTrees.find((t) => path.startsWith(t.root));
        return !tree || tree.judged(path.slice(tree.root.length));
      });
    const missing = [...expected].filter((p) => COMPARED.test(p) && !actual.includes(p)).sort();
    const extra = actual.filter((p) => !expected.has(p)).sort();
    expect({ missingFromImage: missing, notInDockerfile: extra }).toEqual({
      missingFromImage: [],
      notInDockerfile: [],
    });
    expect(actual.length).toBeGreaterThan(300);
  });

  it('puts nothing under /app in the base (Debian) layer, under /usr/local only what base-files makes', () => {
    // base-files' postinst makes the /usr/local tree and the usr/local/man symlink (as in debian:*-slim).
    const notDirs = baseEntries.filter((e) => e.type !== 'dir' && COMPARED.test(`${e.path}/`));
    expect(notDirs.map((e) => [e.path, e.type, e.linkTarget])).toEqual([['usr/local/man', 'symlink', 'share/man']]);
    expect(baseEntries.filter((e) => e.path === 'app' || e.path.startsWith('app/'))).toEqual([]);
  });

  it('writes the commands byte for byte as the Dockerfile, executable, and copies package.json as it is', () => {
    for (const p of docker.placed.filter((x) => x.content !== undefined)) {
      const found = appEntries.get(p.path.slice(1));
      expect(found, p.path).toBeDefined();
      expect(layerFile(archive, found!.digest, p.path.slice(1)).toString()).toBe(p.content);
      expect(found!.entry.mode & 0o777, p.path).toBe(0o755);
    }
    const pkg = appEntries.get('app/package.json')!;
    expect(layerFile(archive, pkg.digest, 'app/package.json').toString()).toBe(
      readFileSync(join(REPO_ROOT, 'package.json'), 'utf8'),
    );
    expect(appEntries.get('usr/local/bin/node')!.entry.mode & 0o777).toBe(0o755);
    expect(appEntries.get('usr/local/bin/node')!.entry.size).toBeGreaterThan(50 << 20);
  });

  it('ships no test-only code (*.testing.*) and no tests', () => {
    const testOnly = [...appEntries.keys()].filter(
      (p) => p.startsWith('app/dist/') && /\.test(ing)?\.js(\.map)?$/.test(p),
    );
    expect(testOnly).toEqual([]);
    expect(
      repoFiles('csi/src').some((f) => f.endsWith('.testing.ts')),
      'the check is not vacuous',
    ).toBe(true);
  });

  it('keeps the compiled files current with the sources (no stale dist/ leftovers, none missing)', () => {
    for (const pkg of ['common', 'controller', 'csi']) {
      for (const f of compiled(pkg).filter((x) => x.endsWith('.js'))) {
        const found = appEntries.get(`app/dist/${pkg}/${f}`);
        expect(found, f).toBeDefined();
        expect(found!.entry.size, f).toBe(statSync(join(REPO_ROOT, 'dist', pkg, f)).size);
      }
    }
  });

  it('has the Dockerfile CMD and WORKDIR in its config, and no ENTRYPOINT (the chart sets command)', () => {
    const config = JSON.parse(blob(archive, summary.config).toString()) as {
      config: { Cmd?: string[]; Entrypoint?: string[]; WorkingDir?: string; Env?: string[] };
    };
    expect(config.config.Cmd).toEqual(docker.cmd);
    expect(config.config.WorkingDir).toBe(docker.workdir);
    expect(config.config.Entrypoint).toBeUndefined();
    expect(config.config.Env).toContain('PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin');
  });
});
