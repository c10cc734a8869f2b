// SPDX-License-Identifier: Apache-2.0
// File-system calls on staging and target paths that the CO hands in, without following a symbolic link
// anywhere below the kubelet directory. Synchronous: they run on a path worker thread (path-worker.ts), never
// on the main thread, so a call that the kernel makes wait (a hung FUSE or NFS mount on the path) stalls one
// abandoned worker and not the plugin (confined-path.ts bounds each call with a timeout).
//
// How a path is walked (the equivalent of openat2 RESOLVE_NO_SYMLINKS, race-free):
//   fd0 = open(<kubelet dir>, O_PATH)                      the root is the operator's, trusted
//   fdN = open("/proc/self/fd/<fdN-1>/<component>", O_PATH | O_NOFOLLOW), then fstat(fdN):
//         a symbolic link, or anything but a directory before the last component, is refused
// The /proc/self/fd magic link resolves to exactly the directory held open, so a component swapped for a
// symlink after it was checked is never followed. Each directory's file system is checked too: a path
// into procfs, sysfs, cgroupfs and the like is refused even when it is mounted below the kubelet directory.
// Entries are then created, inspected or removed relative to the parent's descriptor (mkdir, unlink and
// rmdir never follow the last component), and mounts target `/proc/self/fd/<fd>` of the entry itself.
import {
  closeSync,
  constants,
  fstatSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readSync,
  rmdirSync,
  type BigIntStats,
  statfsSync,
  unlinkSync,
} from 'node:fs';
import koffi from 'koffi';

/** <fcntl.h> on Linux x86_64. */
export const O_PATH = 0o10000000;

/** statfs f_type of file systems no staging or target path may lie in (<linux/magic.h>). */
export const SPECIAL_FS_TYPES: Readonly<Record<number, string>> = {
  0x9fa0: 'proc',
  0x62656572: 'sysfs',
  0x27e0eb: 'cgroup',
  0x63677270: 'cgroup2',
  0x64626720: 'debugfs',
  0x74726163: 'tracefs',
  0x73636673: 'securityfs',
  0xcafe4a11: 'bpf',
  0x62656570: 'configfs',
  0xde5e81e4: 'efivarfs',
  0x65735543: 'fusectl',
  0x1cd1: 'devpts',
  0x6165676c: 'pstore',
  0xf97cff8c: 'selinuxfs',
  0x6e736673: 'nsfs',
  0x19800202: 'mqueue',
};

export type EntryKind = 'dir' | 'file' | 'symlink' | 'block' | 'other';

/** What lies at a path (lstat: a symlink is reported as one). dev, ino, rdev are decimal strings. */
export interface EntryStat {
  readonly kind: EntryKind;
  readonly dev: string;
  readonly ino: string;
  readonly rdev: string;
  readonly size: number;
  /** Birth time in ns ('0' where the file system does not keep it): inode numbers are reused. */
  readonly born: string;
}

/** Why a path operation failed; `at` is the path (prefix) concerned. */
export type PathFailure =
  | { readonly reason: 'symlink'; readonly at: string }
  | { readonly reason: 'not-dir'; readonly at: string; readonly kind: EntryKind }
  | { readonly reason: 'missing'; readonly at: string }
  | { readonly reason: 'special-fs'; readonly at: string; readonly fsType: string }
  | { readonly reason: 'errno'; readonly at: string; readonly errno: string; readonly message: string };

export class PathOpError extends Error {
  constructor(readonly failure: PathFailure) {
    super(`${failure.reason} at ${failure.at}`);
  }
}

/** The parent directory of a path, held open (O_PATH), and what is at its last component. */
export interface Located {
  readonly parentFd: number;
  readonly name: string;
  readonly entry: EntryStat | null;
}

export interface DirListing {
  readonly count: number;
  /** At most `max` names, sorted. */
  readonly names: readonly string[];
}

export interface FsUsage {
  readonly bsize: number;
  readonly blocks: number;
  readonly bfree: number;
  readonly bavail: number;
  readonly files: number;
  readonly ffree: number;
}

const fdPath = (fd: number, name?: string): string =>
  name === undefined ? `/proc/self/fd/${fd}` : `/proc/self/fd/${fd}/${name}`;

function kindOf(s: BigIntStats): EntryKind {
  if (s.isSymbolicLink()) return 'symlink';
  if (s.isDirectory()) return 'dir';
  if (s.isFile()) return 'file';
  if (s.isBlockDevice()) return 'block';
  return 'other';
}

function entryOf(s: BigIntStats): EntryStat {
  return {
    kind: kindOf(s),
    dev: String(s.dev),
    ino: String(s.ino),
    rdev: String(s.rdev),
    size: Number(s.size),
    born: String(s.birthtimeNs),
  };
}

function errnoFailure(at: string, err: unknown): PathOpError {
  const e = err as NodeJS.ErrnoException;
  if (e.code === 'ENOENT') return new PathOpError({ reason: 'missing', at });
  if (e.code === 'ELOOP') return new PathOpError({ reason: 'symlink', at });
  return new PathOpError({ reason: 'errno', at, errno: e.code ?? 'EIO', message: e.message });
}

function checkFsType(fd: number, at: string): void {
  const t = statfsSync(fdPath(fd)).type;
  const special = SPECIAL_FS_TYPES[t];
  if (special !== undefined) throw new PathOpError({ reason: 'special-fs', at, fsType: special });
}

/**
 * Walks `components` below `root` without following symlinks and returns the parent of the last one, held
 * open, with what is at the last one (null when it does not exist). Every component before the last must be
 * a directory that exists. The caller closes `parentFd`.
 */
export function locate(root: string, components: readonly string[]): Located {
  if (components.length === 0) throw new PathOpError({ reason: 'not-dir', at: root, kind: 'dir' });
  let fd: number;
  try {
    fd = openSync(root, O_PATH | constants.O_DIRECTORY);
  } catch (err) {
    throw errnoFailure(root, err);
  }
  let at = root;
  try {
    checkFsType(fd, at);
    for (const c of components.slice(0, -1)) {
      at = `${at}/${c}`;
      let next: number;
      try {
        next = openSync(fdPath(fd, c), O_PATH | constants.O_NOFOLLOW);
      } catch (err) {
        throw errnoFailure(at, err);
      }
      closeSync(fd);
      fd = next;
      const s = fstatSync(fd, { bigint: true });
      if (s.isSymbolicLink()) throw new PathOpError({ reason: 'symlink', at });
      if (!s.isDirectory()) throw new PathOpError({ reason: 'not-dir', at, kind: kindOf(s) });
      checkFsType(fd, at);
    }
    const name = components[components.length - 1]!;
    let entry: EntryStat | null = null;
    try {
      entry = entryOf(lstatSync(fdPath(fd, name), { bigint: true }));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw errnoFailure(`${at}/${name}`, err);
    }
    return { parentFd: fd, name, entry };
  } catch (err) {
    closeSync(fd);
    throw err;
  }
}

/**
 * Opens the entry `name` of `parentFd` (O_PATH, no symlink followed) and checks it is of `kind`: the
 * descriptor a mount targets (`/proc/self/fd/<fd>`), or, for a mount point, the root of what is mounted
 * there. Returns the descriptor and what it refers to.
 */
export function openEntry(
  parentFd: number,
  name: string,
  kind: EntryKind,
  at: string,
): { fd: number; stat: EntryStat } {
  let fd: number;
  try {
    fd = openSync(fdPath(parentFd, name), O_PATH | constants.O_NOFOLLOW);
  } catch (err) {
    throw errnoFailure(at, err);
  }
  const stat = entryOf(fstatSync(fd, { bigint: true }));
  if (stat.kind !== kind) {
    closeSync(fd);
    if (stat.kind === 'symlink') throw new PathOpError({ reason: 'symlink', at });
    throw new PathOpError({ reason: 'not-dir', at, kind: stat.kind });
  }
  if (kind === 'dir') {
    try {
      checkFsType(fd, at);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }
  return { fd, stat };
}

/** Creates directory `name` in `parentFd` (EEXIST when anything is there, a symlink included). */
export function makeDir(parentFd: number, name: string, at: string): EntryStat {
  try {
    mkdirSync(fdPath(parentFd, name), 0o750);
    return entryOf(lstatSync(fdPath(parentFd, name), { bigint: true }));
  } catch (err) {
    throw errnoFailure(at, err);
  }
}

/** Creates an empty regular file `name` in `parentFd` (O_EXCL | O_NOFOLLOW: never through anything there). */
export function makeFile(parentFd: number, name: string, at: string): EntryStat {
  try {
    const fd = openSync(
      fdPath(parentFd, name),
      constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY | constants.O_NOFOLLOW,
      0o640,
    );
    try {
      return entryOf(fstatSync(fd, { bigint: true }));
    } finally {
      closeSync(fd);
    }
  } catch (err) {
    throw errnoFailure(at, err);
  }
}

export type RemoveOutcome =
  | { readonly outcome: 'removed' | 'gone' | 'not-ours' }
  | { readonly outcome: 'not-empty'; readonly listing: DirListing | null; readonly size: number };

/**
 * Removes entry `name` of `parentFd` when it is still the one this plugin created (same kind, device and
 * inode) and empty; anything else stays: another object there is `not-ours`, content is `not-empty` (with
 * what is in the way).
 */
export function removeCreated(
  parentFd: number,
  name: string,
  created: { readonly kind: EntryKind; readonly dev: string; readonly ino: string; readonly born?: string },
  at: string,
): RemoveOutcome {
  let s: EntryStat;
  try {
    s = entryOf(lstatSync(fdPath(parentFd, name), { bigint: true }));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { outcome: 'gone' };
    throw errnoFailure(at, err);
  }
  const reborn = created.born !== undefined && created.born !== '0' && s.born !== created.born;
  if (s.kind !== created.kind || s.dev !== created.dev || s.ino !== created.ino || reborn)
    return { outcome: 'not-ours' };
  try {
    if (s.kind === 'dir') rmdirSync(fdPath(parentFd, name));
    else if (s.size > 0) return { outcome: 'not-empty', listing: null, size: s.size };
    else unlinkSync(fdPath(parentFd, name));
    return { outcome: 'removed' };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return { outcome: 'gone' };
    if (code === 'ENOTEMPTY' || code === 'EEXIST') {
      return { outcome: 'not-empty', listing: listDir(parentFd, name, 5), size: s.size };
    }
    throw errnoFailure(at, err);
  }
}

/** The entries of directory `name` of `parentFd` (count, and the first `max` names). */
export function listDir(parentFd: number, name: string, max: number): DirListing {
  const { fd } = openEntry(parentFd, name, 'dir', name);
  try {
    const names = readdirSync(fdPath(fd)).sort();
    return { count: names.length, names: names.slice(0, max) };
  } finally {
    closeSync(fd);
  }
}

/** statfs of what `fd` refers to. */
export function usage(fd: number): FsUsage {
  const s = statfsSync(fdPath(fd));
  return { bsize: s.bsize, blocks: s.blocks, bfree: s.bfree, bavail: s.bavail, files: s.files, ffree: s.ffree };
}

export function closeFds(fds: readonly number[]): void {
  for (const fd of fds) {
    try {
      closeSync(fd);
    } catch {
      // already closed
    }
  }
}

// ----- mount options, checked by the file system itself -------------------------------------------------------

/**
 * Options that are not the file system's own parameters: VFS mount attributes and superblock flags that
 * mount(8) turns into flags, and mount(8)'s own. The kernel's fs_context never sees them.
 */
export const GENERIC_MOUNT_OPTIONS: ReadonlySet<string> = new Set([
  'defaults',
  'ro',
  'rw',
  'atime',
  'noatime',
  'relatime',
  'norelatime',
  'strictatime',
  'nostrictatime',
  'diratime',
  'nodiratime',
  'lazytime',
  'nolazytime',
  'dev',
  'nodev',
  'suid',
  'nosuid',
  'exec',
  'noexec',
  'sync',
  'async',
  'dirsync',
  'iversion',
  'noiversion',
  'mand',
  'nomand',
  'silent',
  'loud',
  'nosymfollow',
  'symfollow',
]);

const FSOPEN_CLOEXEC = 1;
const FSCONFIG_SET_FLAG = 0;
const FSCONFIG_SET_STRING = 1;

interface FsContextLib {
  fsopen: (fsName: string, flags: number) => number;
  fsconfig: (fd: number, cmd: number, key: string, value: string | null, aux: number) => number;
  fsconfigCmd: (fd: number, cmd: number, key: null, value: null, aux: number) => number;
}

let fsLib: FsContextLib | undefined;

function fsContextLib(): FsContextLib {
  if (fsLib) return fsLib;
  const c = koffi.load('libc.so.6');
  fsLib = {
    fsopen: c.func('int fsopen(const char *, unsigned int)') as FsContextLib['fsopen'],
    fsconfig: c.func('int fsconfig(int, unsigned int, const char *, const char *, int)') as FsContextLib['fsconfig'],
    fsconfigCmd: c.func('int fsconfig(int, unsigned int, void *, void *, int)') as FsContextLib['fsconfigCmd'],
  };
  return fsLib;
}

/**
 * Asks the kernel whether `fsType` accepts each of `options` (fsopen + fsconfig: the file system's own
 * parameter parser, nothing is mounted). Returns the first refused option with the kernel's reason, or null.
 * Generic options (GENERIC_MOUNT_OPTIONS) are skipped; combinations are only checked by the mount itself.
 */
export function checkFsOptions(fsType: string, options: readonly string[]): { option: string; reason: string } | null {
  const lib = fsContextLib();
  const fd = lib.fsopen(fsType, FSOPEN_CLOEXEC);
  if (fd < 0) return { option: '', reason: `the kernel has no ${fsType} file system (errno ${koffi.errno()})` };
  try {
    for (const o of options) {
      if (GENERIC_MOUNT_OPTIONS.has(o)) continue;
      const eq = o.indexOf('=');
      const r =
        eq < 0
          ? lib.fsconfig(fd, FSCONFIG_SET_FLAG, o, null, 0)
          : lib.fsconfig(fd, FSCONFIG_SET_STRING, o.slice(0, eq), o.slice(eq + 1), 0);
      if (r < 0) {
        const errno = koffi.errno();
        return { option: o, reason: fsContextMessage(fd) || `errno ${errno}` };
      }
    }
    return null;
  } finally {
    closeSync(fd);
  }
}

const FSCONFIG_CMD_CREATE = 6;

/**
 * Builds (and drops again) a superblock of `fsType` on `device` with `options`, as a mount would, without
 * attaching it anywhere: the check of the options together, which only the file system's fill_super does.
 * Returns the kernel's reason when it refuses, or null. Run only after a mount with these options failed,
 * on a device nothing else mounts.
 */
export function checkFsOptionsOnDevice(
  fsType: string,
  device: string,
  options: readonly string[],
): { errno: number; reason: string } | null {
  const lib = fsContextLib();
  const fd = lib.fsopen(fsType, FSOPEN_CLOEXEC);
  if (fd < 0) return { errno: koffi.errno(), reason: `the kernel has no ${fsType} file system` };
  try {
    const steps: Array<[number, string, string | null]> = [[FSCONFIG_SET_STRING, 'source', device]];
    // Per-mount flags (noatime, nodev, ...) belong to fsmount, not to the superblock: skipped like above.
    for (const o of options) {
      if (GENERIC_MOUNT_OPTIONS.has(o) && o !== 'ro') continue;
      const eq = o.indexOf('=');
      steps.push(eq < 0 ? [FSCONFIG_SET_FLAG, o, null] : [FSCONFIG_SET_STRING, o.slice(0, eq), o.slice(eq + 1)]);
    }
    for (const [cmd, key, value] of steps) {
      if (lib.fsconfig(fd, cmd, key, value, 0) < 0) {
        const errno = koffi.errno();
        return { errno, reason: fsContextMessage(fd) || `${key}: errno ${errno}` };
      }
    }
    if (lib.fsconfigCmd(fd, FSCONFIG_CMD_CREATE, null, null, 0) < 0) {
      const errno = koffi.errno();
      return { errno, reason: fsContextMessage(fd) || `errno ${errno}` };
    }
    return null;
  } finally {
    closeSync(fd);
  }
}

/** The messages the kernel queued on an fs_context ("e ext4: Unknown parameter 'foo'"), joined. */
function fsContextMessage(fd: number): string {
  const out: string[] = [];
  const buf = Buffer.alloc(1024);
  for (let i = 0; i < 8; i++) {
    let n: number;
    try {
      n = readSync(fd, buf);
    } catch {
      break;
    }
    if (n <= 0) break;
    out.push(
      buf
        .subarray(0, n)
        .toString('utf8')
        .replace(/^[ewi] /, '')
        .trim(),
    );
  }
  return out.join('; ');
}
