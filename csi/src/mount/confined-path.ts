// SPDX-License-Identifier: Apache-2.0
// Staging and target paths come from the CO. Before the node plugin mounts on one, creates one or removes
// one, the path is confined:
//   lexically  absolute, normalised, no `..`, no NUL or control characters, at most 4096 bytes (255 a
//              component), strictly below the kubelet directory (--kubelet-dir, or its real path), and
//              neither inside nor above the plugin's state directory
//   on disk    no symbolic link anywhere below the kubelet directory, every parent a directory, none in
//              procfs, sysfs and the like (path-ops.ts walks it race-free with O_PATH | O_NOFOLLOW)
// Everything refused is INVALID_ARGUMENT naming the path and the reason (CSI_ERR_PATH_*). Mounts target the
// checked entry through `/proc/self/fd/<fd>` (mount --no-canonicalize), unmounts name the entry relative to
// its parent's descriptor, so a symlink swapped in after the check is never followed either.
//
// Every file-system call on such a path runs on a path worker thread and is bounded by --path-timeout-seconds
// (DEADLINE_EXCEEDED, CSI_ERR_PATH_TIMEOUT); mount(8) and umount(8) run as child processes bounded by 120 s. A
// worker that does not answer is abandoned (it may sit in the kernel on a hung mount) and later calls get a
// fresh one, so a hung path never blocks the plugin, a volume lock or another volume's calls.
import { closeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import koffi from 'koffi';
import type { Logger } from '../../../common/src/log.js';
import { CsiError } from '../errors.js';
import { run } from './exec.js';
import { type MountEntry, mountsAt } from './mountinfo.js';
import * as ops from './path-ops.js';
import type { PathOpName, PathReply } from './path-worker.js';

export const PATH_MAX_BYTES = 4096;
export const NAME_MAX_BYTES = 255;
/** Bound of one mount(8) / umount(8) on a confined path. */
export const MOUNT_TIMEOUT_MS = 120_000;
/** Path workers kept for the next call. */
const IDLE_WORKERS = 2;
/** Abandoned workers (calls that never returned) after which path calls fail at once. */
const MAX_STUCK_WORKERS = 16;

export interface PathPolicy {
  /** --kubelet-dir as configured. */
  readonly kubeletDir: string;
  /** The node plugin's state directory: no staging or target path may lie in or above it. */
  readonly stateDir: string;
  /** Bound of each file-system call on a confined path (--path-timeout-seconds). */
  readonly timeoutMs: number;
  /** Other spellings of kubeletDir and stateDir (their real paths). */
  readonly kubeletDirAliases?: readonly string[];
  readonly stateDirAliases?: readonly string[];
}

/** A path that passed the lexical checks: `root` (a kubelet dir spelling) + `components` is `path`. */
export interface ConfinedPath {
  readonly field: string;
  readonly path: string;
  readonly root: string;
  readonly components: readonly string[];
}

/** What the plugin created at a path (recorded, so that only that is ever removed). */
export interface CreatedEntry {
  readonly kind: 'dir' | 'file';
  readonly dev: string;
  readonly ino: string;
  /** Birth time, ns: an inode number may be reused by a later object at the same path. */
  readonly born?: string;
}

function strip(p: string): string {
  const n = p.replace(/\/+/g, '/');
  return n.length > 1 && n.endsWith('/') ? n.slice(0, -1) : n;
}

function refuse(field: string, path: string, why: string): CsiError {
  return new CsiError('CSI_ERR_PATH_NOT_ALLOWED', `${field} ${JSON.stringify(path)} ${why}`, {
    details: { field, path },
  });
}

// eslint-disable-next-line no-control-regex -- paths with control characters are refused outright
const CONTROL_CHARS = /[\u0000-\u001f\u007f]/;

/** `inner` is `outer` or lies below it. */
export function isWithin(inner: string, outer: string): boolean {
  return inner === outer || inner.startsWith(outer === '/' ? '/' : `${outer}/`);
}

/**
 * The lexical checks (pure): returns the confined path or throws CSI_ERR_PATH_NOT_ALLOWED with the reason.
 * `kubeletDirs` and `stateDirs` are the spellings of those directories (configured and real paths).
 */
export function confinePath(
  field: string,
  raw: string,
  kubeletDirs: readonly string[],
  stateDirs: readonly string[],
): ConfinedPath {
  if (typeof raw !== 'string' || raw === '') throw refuse(field, String(raw), 'is empty');
  if (Buffer.byteLength(raw) > PATH_MAX_BYTES) {
    throw refuse(field, `${raw.slice(0, 64)}...`, `is longer than ${PATH_MAX_BYTES} bytes`);
  }
  if (CONTROL_CHARS.test(raw)) throw refuse(field, raw, 'contains a NUL or control character');
  if (!raw.startsWith('/')) throw refuse(field, raw, 'is not an absolute path');
  const segments = raw.split('/');
  if (segments.includes('..')) throw refuse(field, raw, 'contains a ".." segment');
  if (segments.includes('.')) throw refuse(field, raw, 'contains a "." segment');
  if (segments.some((s) => Buffer.byteLength(s) > NAME_MAX_BYTES)) {
    throw refuse(field, raw, `has a component longer than ${NAME_MAX_BYTES} bytes`);
  }
  const path = strip(raw);
  const root = kubeletDirs.map(strip).find((k) => path !== k && isWithin(path, k));
  if (root === undefined && kubeletDirs.map(strip).includes(path)) {
    throw refuse(field, path, 'is the kubelet directory itself; it must lie below it');
  }
  if (root === undefined) {
    throw refuse(field, path, `lies outside the kubelet directory ${strip(kubeletDirs[0] ?? '?')}`);
  }
  for (const s of stateDirs.map(strip)) {
    if (isWithin(path, s)) throw refuse(field, path, `lies inside the node plugin's state directory ${s}`);
    if (isWithin(s, path)) throw refuse(field, path, `contains the node plugin's state directory ${s}`);
  }
  const rest = path.slice(root === '/' ? 1 : root.length + 1);
  return { field, path, root, components: rest.split('/') };
}

function failureError(c: ConfinedPath, f: ops.PathFailure): CsiError {
  const p = JSON.stringify(c.path);
  const details = { field: c.field, path: c.path, at: f.at, reason: f.reason };
  switch (f.reason) {
    case 'symlink':
      return new CsiError(
        'CSI_ERR_PATH_SYMLINK',
        `${c.field} ${p}: ${f.at} is a symbolic link; no symlink is followed below the kubelet directory`,
        { details },
      );
    case 'special-fs':
      return new CsiError('CSI_ERR_PATH_NOT_ALLOWED', `${c.field} ${p}: ${f.at} lies in a ${f.fsType} file system`, {
        details,
      });
    case 'not-dir':
      return new CsiError(
        'CSI_ERR_PATH_UNUSABLE',
        `${c.field} ${p}: ${f.at} is a ${kindName(f.kind)}, not a directory`,
        {
          details,
        },
      );
    case 'missing':
      return new CsiError('CSI_ERR_PATH_UNUSABLE', `${c.field} ${p}: ${f.at} does not exist`, { details });
    case 'errno':
      if (f.errno === 'ENOSPC' || f.errno === 'EDQUOT') {
        return new CsiError('CSI_ERR_NO_SPACE', `${c.field} ${p}: ${f.at}: no space left (${f.errno})`, { details });
      }
      return new CsiError('CSI_ERR_PATH_UNUSABLE', `${c.field} ${p}: ${f.at}: ${f.errno} (${f.message})`, { details });
  }
}

export function kindName(kind: ops.EntryKind): string {
  return {
    dir: 'directory',
    file: 'regular file',
    symlink: 'symbolic link',
    block: 'block device',
    other: 'special file',
  }[kind];
}

/** "3 entries: a, b, c" */
export function describeListing(l: ops.DirListing): string {
  const more = l.count > l.names.length ? `, ... (${l.count - l.names.length} more)` : '';
  return `${l.count} ${l.count === 1 ? 'entry' : 'entries'}: ${l.names.map((n) => JSON.stringify(n)).join(', ')}${more}`;
}

export function pathWorkerScript(): string {
  const here = fileURLToPath(import.meta.url);
  // Under vitest this module runs from TypeScript source; workers always load the compiled JS.
  const dir = here.endsWith('.ts') ? join(dirname(here), '../../../dist/csi/src/mount') : dirname(here);
  return join(dir, 'path-worker.js');
}

interface Runner {
  call<T>(op: PathOpName, args: readonly unknown[], what: string): Promise<T>;
  close(): Promise<void>;
  /** Calls abandoned after their timeout that have not returned yet. */
  stuck(): number;
}

/**
 * Ends the process with `code` at once (libc _exit). process.exit would join every worker thread first, and a
 * path worker abandoned in a hung mount's killable wait never returns; exit_group ends it. Call it only after
 * everything is flushed and closed.
 */
export function exitPastStuckCalls(code: number): never {
  const c = koffi.load('libc.so.6');
  const exit = c.func('void _exit(int)') as (status: number) => void;
  exit(code);
  throw new Error('_exit returned');
}

/** Runs path-ops.ts on this thread: for tests only (a hung call would hang the caller). */
class InlineRunner implements Runner {
  async call<T>(op: PathOpName, args: readonly unknown[]): Promise<T> {
    const fn = (ops as unknown as Record<string, (...a: unknown[]) => unknown>)[op]!;
    return fn(...args) as T;
  }
  async close(): Promise<void> {}
  stuck(): number {
    return 0;
  }
}

/** Late replies of abandoned calls may carry descriptors: close them. */
function fdsIn(value: unknown): number[] {
  if (typeof value !== 'object' || value === null) return [];
  const v = value as { parentFd?: unknown; fd?: unknown };
  return [v.parentFd, v.fd].filter((x): x is number => typeof x === 'number');
}

class WorkerRunner implements Runner {
  private readonly idle: Worker[] = [];
  private stuckCount = 0;
  private nextId = 1;
  private closed = false;

  constructor(
    private readonly script: string,
    private readonly timeoutMs: number,
    private readonly log: Logger,
  ) {}

  private spawn(): Worker {
    const w = new Worker(this.script, { name: 'path-worker' });
    w.unref();
    w.on('error', (err) => this.log.error({ err }, 'Path worker failed'));
    return w;
  }

  private release(w: Worker): void {
    if (!this.closed && this.idle.length < IDLE_WORKERS) this.idle.push(w);
    else void w.terminate();
  }

  private abandon(w: Worker, id: number): void {
    this.stuckCount++;
    const late = (r: PathReply): void => {
      if (r.id !== id) return;
      w.off('message', late);
      if (r.ok) ops.closeFds(fdsIn(r.value));
      void w.terminate();
    };
    w.on('message', late);
    w.once('exit', () => {
      this.stuckCount--;
    });
  }

  call<T>(op: PathOpName, args: readonly unknown[], what: string): Promise<T> {
    if (this.stuckCount >= MAX_STUCK_WORKERS) {
      return Promise.reject(
        new CsiError(
          'CSI_ERR_PATH_TIMEOUT',
          `${what}: ${this.stuckCount} earlier file-system calls on staging or target paths are still hanging (a hung mount below the kubelet directory?); refusing more until they return`,
        ),
      );
    }
    const w = this.idle.pop() ?? this.spawn();
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        w.off('message', onMessage);
        w.off('exit', onExit);
      };
      const onMessage = (r: PathReply): void => {
        if (r.id !== id) return;
        done();
        this.release(w);
        if (r.ok) resolve(r.value as T);
        else reject(new ops.PathOpError(r.failure));
      };
      const onExit = (code: number): void => {
        done();
        reject(new CsiError('CSI_ERR_INTERNAL', `${what}: the path worker exited (code ${code})`));
      };
      const timer = setTimeout(() => {
        done();
        this.abandon(w, id);
        this.log.warn({ op, what, timeoutMs: this.timeoutMs }, 'Abandoned a hanging file-system call');
        reject(
          new CsiError(
            'CSI_ERR_PATH_TIMEOUT',
            `${what}: the file-system call did not return within ${this.timeoutMs} ms (--path-timeout-seconds); is a mount on the path hung?`,
          ),
        );
      }, this.timeoutMs);
      w.on('message', onMessage);
      w.once('exit', onExit);
      w.postMessage({ id, op, args });
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.idle.splice(0).map((w) => w.terminate()));
  }

  stuck(): number {
    return this.stuckCount;
  }
}

export interface ConfinedPathsOptions {
  readonly policy: PathPolicy;
  readonly log: Logger;
  /** 'inline' runs the calls on the caller's thread (unit tests). Default 'worker'. */
  readonly runner?: 'worker' | 'inline';
}

/** What lies at a path, following into what is mounted there (the root of the top mount). */
export interface MountedEntry {
  readonly stat: ops.EntryStat;
  /** mountinfo entries at exactly this path (the last is on top). */
  readonly mounts: readonly MountEntry[];
}

export class ConfinedPaths {
  private readonly runner: Runner;
  private readonly kubeletDirs: string[];
  private readonly stateDirs: string[];

  constructor(private readonly opts: ConfinedPathsOptions) {
    const p = opts.policy;
    this.kubeletDirs = [...new Set([p.kubeletDir, ...(p.kubeletDirAliases ?? [])].map(strip))];
    this.stateDirs = [...new Set([p.stateDir, ...(p.stateDirAliases ?? [])].map(strip))];
    this.runner =
      opts.runner === 'inline' ? new InlineRunner() : new WorkerRunner(pathWorkerScript(), p.timeoutMs, opts.log);
  }

  get kubeletDir(): string {
    return this.kubeletDirs[0]!;
  }

  /** Lexical confinement; CSI_ERR_PATH_NOT_ALLOWED (INVALID_ARGUMENT) with the reason. */
  confine(field: string, raw: string): ConfinedPath {
    return confinePath(field, raw, this.kubeletDirs, this.stateDirs);
  }

  private async op<T>(c: ConfinedPath, op: PathOpName, args: readonly unknown[]): Promise<T> {
    try {
      return await this.runner.call<T>(op, args, `${c.field} ${JSON.stringify(c.path)}`);
    } catch (err) {
      if (err instanceof ops.PathOpError) throw failureError(c, err.failure);
      throw err;
    }
  }

  private closeFds(fds: readonly number[]): void {
    for (const fd of fds) {
      try {
        closeSync(fd);
      } catch {
        // closed already
      }
    }
  }

  /** Runs `fn` with the parent of `c` held open; the descriptor is closed afterwards. */
  private async withParent<T>(c: ConfinedPath, fn: (l: ops.Located) => Promise<T>): Promise<T> {
    const l = await this.op<ops.Located>(c, 'locate', [c.root, c.components]);
    try {
      return await fn(l);
    } finally {
      this.closeFds([l.parentFd]);
    }
  }

  /** What is at `c` (lstat, no symlink followed on the way); null when it does not exist. */
  async inspect(c: ConfinedPath): Promise<ops.EntryStat | null> {
    return this.withParent(c, async (l) => l.entry);
  }

  /**
   * Like inspect, but a missing path (or a missing parent) is null instead of an error: for unpublish and
   * unstage, where "already gone" is success.
   */
  async inspectIfPresent(c: ConfinedPath): Promise<ops.EntryStat | null> {
    try {
      return await this.inspect(c);
    } catch (err) {
      if (err instanceof CsiError && err.code === 'CSI_ERR_PATH_UNUSABLE' && err.details.reason === 'missing') {
        return null;
      }
      throw err;
    }
  }

  /** The root of what is mounted at `c` (or the entry itself), with the mountinfo entries there. */
  async mounted(c: ConfinedPath, kind: ops.EntryKind): Promise<MountedEntry> {
    return this.withParent(c, async (l) => {
      const e = await this.op<{ fd: number; stat: ops.EntryStat }>(c, 'openEntry', [l.parentFd, l.name, kind, c.path]);
      this.closeFds([e.fd]);
      return { stat: e.stat, mounts: await mountsAt(c.path) };
    });
  }

  /** Entries of directory `c` (what is in the way). */
  async list(c: ConfinedPath, max = 5): Promise<ops.DirListing> {
    return this.withParent(c, (l) => this.op<ops.DirListing>(c, 'listDir', [l.parentFd, l.name, max]));
  }

  /**
   * Makes sure a `kind` entry is at `c`: creates it when missing (returned as `created`, for the record) and
   * accepts an existing empty one. An existing non-empty one, or one of another type, is in the way
   * (CSI_ERR_TARGET_IN_THE_WAY, INVALID_ARGUMENT) unless `accept(entry)` says it is ours already.
   */
  async ensure(
    c: ConfinedPath,
    kind: 'dir' | 'file',
    accept: (entry: ops.EntryStat) => Promise<boolean> = async () => false,
  ): Promise<{ entry: ops.EntryStat; created: CreatedEntry | null }> {
    return this.withParent(c, async (l) => {
      const e = l.entry;
      if (e === null) {
        const made = await this.op<ops.EntryStat>(c, kind === 'dir' ? 'makeDir' : 'makeFile', [
          l.parentFd,
          l.name,
          c.path,
        ]);
        return { entry: made, created: { kind, dev: made.dev, ino: made.ino, born: made.born } };
      }
      if (e.kind === 'symlink') throw failureError(c, { reason: 'symlink', at: c.path });
      if (await accept(e)) return { entry: e, created: null };
      if (e.kind !== kind) {
        throw new CsiError(
          'CSI_ERR_TARGET_IN_THE_WAY',
          `${c.field} ${JSON.stringify(c.path)} is a ${kindName(e.kind)}; a ${kindName(kind)} is needed there (it would be hidden by the mount)`,
          { details: { field: c.field, path: c.path, kind: e.kind } },
        );
      }
      if (kind === 'file' && e.size > 0) {
        throw new CsiError(
          'CSI_ERR_TARGET_IN_THE_WAY',
          `${c.field} ${JSON.stringify(c.path)} is a file of ${e.size} bytes, which the mount would hide; the node plugin only mounts on a new or empty file`,
          { details: { field: c.field, path: c.path, sizeBytes: e.size } },
        );
      }
      if (kind === 'dir') {
        const listing = await this.op<ops.DirListing>(c, 'listDir', [l.parentFd, l.name, 5]);
        if (listing.count > 0) {
          throw new CsiError(
            'CSI_ERR_TARGET_IN_THE_WAY',
            `${c.field} ${JSON.stringify(c.path)} is a directory with ${describeListing(listing)}, which the mount would hide; the node plugin only mounts on a new or empty directory`,
            { details: { field: c.field, path: c.path, entries: listing.count } },
          );
        }
      }
      return { entry: e, created: null };
    });
  }

  /**
   * mount(8) onto the entry at `c` (a `kind`, opened without following symlinks) with `args` before the
   * source; the source is a device path or another confined path (bind mounts). Then checks that the kernel
   * shows the new mount at exactly `c.path`; if not (a parent renamed meanwhile), it is undone.
   */
  async mount(
    c: ConfinedPath,
    kind: 'dir' | 'file',
    source: { readonly device: string } | { readonly path: ConfinedPath },
    args: readonly string[],
    opts: { readonly remountReadOnly?: boolean } = {},
  ): Promise<void> {
    await this.withParent(c, async (l) => {
      const t = await this.op<{ fd: number; stat: ops.EntryStat }>(c, 'openEntry', [l.parentFd, l.name, kind, c.path]);
      const fds = [t.fd];
      try {
        let src: string;
        if ('device' in source) src = source.device;
        else {
          const s = source.path;
          const sl = await this.op<ops.Located>(s, 'locate', [s.root, s.components]);
          fds.push(sl.parentFd);
          const se = await this.op<{ fd: number; stat: ops.EntryStat }>(s, 'openEntry', [
            sl.parentFd,
            sl.name,
            'dir',
            s.path,
          ]);
          fds.push(se.fd);
          src = '/proc/self/fd/4';
        }
        const extraFds = 'device' in source ? [t.fd] : [t.fd, fds[2]!];
        await run('mount', ['--no-canonicalize', ...args, src, '/proc/self/fd/3'], {
          extraFds,
          timeoutMs: MOUNT_TIMEOUT_MS,
        });
        if ((await mountsAt(c.path)).length === 0) {
          await run('umount', ['--no-canonicalize', '/proc/self/fd/3'], {
            extraFds: [t.fd],
            timeoutMs: MOUNT_TIMEOUT_MS,
          }).catch(() => undefined);
          throw new CsiError(
            'CSI_ERR_PATH_UNUSABLE',
            `${c.field} ${JSON.stringify(c.path)} changed while it was being mounted (a parent directory was moved); nothing is mounted there`,
          );
        }
        if (opts.remountReadOnly) {
          // A bind is read-only only after a remount of the new mount (the entry, now a mount point, by name).
          try {
            await run('mount', ['--no-canonicalize', '-o', 'remount,bind,ro', `/proc/self/fd/3/${l.name}`], {
              extraFds: [l.parentFd],
              timeoutMs: MOUNT_TIMEOUT_MS,
            });
          } catch (err) {
            await run('umount', ['--no-canonicalize', `/proc/self/fd/3/${l.name}`], {
              extraFds: [l.parentFd],
              timeoutMs: MOUNT_TIMEOUT_MS,
            }).catch(() => undefined);
            throw err;
          }
        }
      } finally {
        this.closeFds(fds);
      }
    });
  }

  /**
   * Unmounts the top mount at `c` (umount(8) on the entry relative to its parent's descriptor; a mount
   * point cannot be renamed or replaced while mounted). `lazy` detaches a busy mount.
   */
  async unmountTop(c: ConfinedPath, opts: { lazy?: boolean } = {}): Promise<void> {
    await this.withParent(c, async (l) => {
      await run('umount', ['--no-canonicalize', ...(opts.lazy ? ['-l'] : []), `/proc/self/fd/3/${l.name}`], {
        extraFds: [l.parentFd],
        timeoutMs: MOUNT_TIMEOUT_MS,
      });
    });
  }

  /** Removes the entry at `c` if it is still the one recorded as created (path-ops removeCreated). */
  async removeCreated(c: ConfinedPath, created: CreatedEntry): Promise<ops.RemoveOutcome> {
    try {
      return await this.withParent(c, (l) =>
        this.op<ops.RemoveOutcome>(c, 'removeCreated', [l.parentFd, l.name, created, c.path]),
      );
    } catch (err) {
      if (err instanceof CsiError && err.code === 'CSI_ERR_PATH_UNUSABLE' && err.details.reason === 'missing') {
        return { outcome: 'gone' };
      }
      throw err;
    }
  }

  /** statfs of what is mounted at directory `c`. */
  async usage(c: ConfinedPath): Promise<ops.FsUsage> {
    return this.withParent(c, async (l) => {
      const e = await this.op<{ fd: number; stat: ops.EntryStat }>(c, 'openEntry', [l.parentFd, l.name, 'dir', c.path]);
      try {
        return await this.op<ops.FsUsage>(c, 'usage', [e.fd]);
      } finally {
        this.closeFds([e.fd]);
      }
    });
  }

  /** The kernel's verdict on mount options for `fsType` (null when all are accepted); see path-ops. */
  async checkFsOptions(fsType: string, options: readonly string[]): Promise<{ option: string; reason: string } | null> {
    if (options.length === 0) return null;
    return this.runner.call(`checkFsOptions`, [fsType, options], `mount flags for ${fsType}`);
  }

  /** The kernel's verdict on `options` together on `device` (path-ops checkFsOptionsOnDevice). */
  async checkFsOptionsOnDevice(
    fsType: string,
    device: string,
    options: readonly string[],
  ): Promise<{ errno: number; reason: string } | null> {
    return this.runner.call(
      `checkFsOptionsOnDevice`,
      [fsType, device, options],
      `mount flags for ${fsType} on ${device}`,
    );
  }

  async close(): Promise<void> {
    await this.runner.close();
  }

  /** File-system calls abandoned after their timeout that are still in the kernel. */
  stuckCalls(): number {
    return this.runner.stuck();
  }
}
