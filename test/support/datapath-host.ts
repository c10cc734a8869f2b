// SPDX-License-Identifier: Apache-2.0
// Data-path test helpers: a forked host process running the FUSE server (csi/src/frontend/datapath-host.testing.ts),
// the compiled-JS freshness check it needs, and a resource tracker that removes every loop device, mount,
// process and temp dir a test made, whether it passed or not.
import { type ChildProcess, execFile, fork } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, open, readdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { FUSE_FSTYPE } from '../../csi/src/frontend/fuse-mount.js';
import { cleanupStale } from '../../csi/src/mount/cleanup.js';
import { detachLoop } from '../../csi/src/mount/loop-device.js';
import { unmount } from '../../csi/src/mount/mounts.js';
import { REPO_ROOT } from './paths.js';

const execFileP = promisify(execFile);

export const isRoot = process.getuid?.() === 0;

export const HOST_SCRIPT = join(REPO_ROOT, 'dist', 'csi', 'src', 'frontend', 'datapath-host-main.testing.js');

async function newestMtime(dir: string): Promise<number> {
  let newest = 0;
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) newest = Math.max(newest, await newestMtime(p));
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.test.ts')) newest = Math.max(newest, (await stat(p)).mtimeMs);
  }
  return newest;
}

/** Compiles to dist/ when the worker and host JS are older than the sources they come from. */
export async function ensureBuilt(): Promise<void> {
  const built = await stat(HOST_SCRIPT).then(
    (s) => s.mtimeMs,
    () => 0,
  );
  const src = Math.max(
    await newestMtime(join(REPO_ROOT, 'csi', 'src')),
    await newestMtime(join(REPO_ROOT, 'common', 'src')),
  );
  if (built >= src) return;
  try {
    await execFileP('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: REPO_ROOT });
  } catch (err) {
    // tsc still emits when some other module has a type error; what matters is fresh data-path JS.
    const after = await stat(HOST_SCRIPT).then(
      (s) => s.mtimeMs,
      () => 0,
    );
    if (after < src) throw err;
  }
}

export interface HostClient {
  readonly pid: number;
  call<T = unknown>(method: string, params?: Record<string, unknown>): Promise<T>;
  /** SIGKILL and wait for the exit. */
  kill(): Promise<void>;
  /** Asks the host to stop its data path (force) and exit. */
  close(): Promise<void>;
  readonly exited: boolean;
}

export async function startHost(): Promise<HostClient> {
  const child: ChildProcess = fork(HOST_SCRIPT, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  let nextId = 1;
  let exited = false;
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  const exit = new Promise<void>((resolve) =>
    child.once('exit', () => {
      exited = true;
      for (const p of pending.values()) p.reject(new Error('data-path host exited'));
      pending.clear();
      resolve();
    }),
  );
  const ready = new Promise<void>((resolve, reject) => {
    child.once('error', reject);
    child.on(
      'message',
      (m: { id: number; ok: boolean; result?: unknown; error?: { code: string; message: string } }) => {
        if (m.id === 0) {
          resolve();
          return;
        }
        const p = pending.get(m.id);
        if (!p) return;
        pending.delete(m.id);
        if (m.ok) p.resolve(m.result);
        else p.reject(Object.assign(new Error(`${m.error?.code}: ${m.error?.message}`), { code: m.error?.code }));
      },
    );
  });
  await ready;
  return {
    pid: child.pid ?? -1,
    get exited() {
      return exited;
    },
    call<T>(method: string, params: Record<string, unknown> = {}): Promise<T> {
      if (exited) return Promise.reject(new Error('data-path host exited'));
      const id = nextId++;
      return new Promise<T>((resolve, reject) => {
        pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
        child.send({ id, method, params });
      });
    },
    async kill() {
      if (!exited) child.kill('SIGKILL');
      await exit;
    },
    async close() {
      if (exited) return;
      child.disconnect();
      const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
      await exit;
      clearTimeout(timer);
    },
  };
}

/** Everything a data-path test creates, removed in reverse order by cleanup(). */
export class Resources {
  private readonly mounts: string[] = [];
  private readonly loops: string[] = [];
  private readonly hosts: HostClient[] = [];
  private readonly dirs: string[] = [];
  private readonly stateDirs: string[] = [];

  async tempDir(prefix = 'loopsnap-dp-'): Promise<string> {
    const d = await mkdtemp(join('/var/tmp', prefix));
    this.dirs.push(d);
    return d;
  }

  mount(path: string): string {
    this.mounts.push(path);
    return path;
  }

  loop(device: string): string {
    this.loops.push(device);
    return device;
  }

  host(h: HostClient): HostClient {
    this.hosts.push(h);
    return h;
  }

  /** A state dir whose stale FUSE mount and loop devices are removed at cleanup, whatever happened. */
  stateDir(path: string): string {
    this.stateDirs.push(path);
    return path;
  }

  async cleanup(): Promise<void> {
    const errors: unknown[] = [];
    const attempt = async (fn: () => Promise<unknown>): Promise<void> => {
      try {
        await fn();
      } catch (err) {
        errors.push(err);
      }
    };
    for (const m of this.mounts.splice(0).reverse()) {
      await attempt(() => execFileP('fsfreeze', ['--unfreeze', m]).catch(() => undefined));
      await attempt(() => unmount(m, { lazy: true }));
    }
    for (const l of this.loops.splice(0).reverse()) await attempt(() => detachLoop(l));
    for (const h of this.hosts.splice(0).reverse()) await attempt(() => h.close());
    for (const s of this.stateDirs.splice(0)) {
      await attempt(() => cleanupStale({ fuseMountpoint: join(s, 'fuse'), fuseFsType: FUSE_FSTYPE }));
    }
    for (const d of this.dirs.splice(0).reverse()) await attempt(() => rm(d, { recursive: true, force: true }));
    if (errors.length > 0) throw new AggregateError(errors, 'data-path test cleanup failed');
  }
}

export function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

export async function sha256File(path: string): Promise<string> {
  return sha256(await readFile(path));
}

/** Writes `data` to `path` and fsyncs the file (and so, through the file system, the device). */
export async function writeFileSynced(path: string, data: Uint8Array): Promise<void> {
  const fh = await open(path, 'w');
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Runs a command (async: never block this process while the host serves I/O). */
export async function sh(cmd: string, args: readonly string[]): Promise<string> {
  return (await execFileP(cmd, [...args], { maxBuffer: 64 << 20 })).stdout;
}
