// SPDX-License-Identifier: Apache-2.0
// Loop devices on view files: attach with direct I/O (datapath.md: loop with --direct-io=off collapses random
// reads and double-caches), read back what the kernel actually configured, detach, and list by backing file.
// Discard needs no flag: loop enables it when the backing file system has fallocate, which FUSE does.
import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { MountError } from './errors.js';
import { run } from './exec.js';

export interface LoopDevice {
  /** /dev/loopN */
  readonly device: string;
  readonly backingFile: string;
  readonly major: number;
  readonly minor: number;
  readonly readOnly: boolean;
  /** What the kernel reports in /sys/block/loopN/loop/dio. */
  readonly directIo: boolean;
  /** /sys/block/loopN/queue/discard_max_bytes > 0. */
  readonly discard: boolean;
}

export interface AttachLoopOptions {
  readonly file: string;
  readonly readOnly?: boolean;
  /** Ask for direct I/O (default true). If the kernel refuses, attach buffered and report directIo=false. */
  readonly directIo?: boolean;
}

function sysName(device: string): string {
  const name = device.replace(/^\/dev\//, '');
  if (!/^loop\d+$/.test(name)) throw new MountError('DP_ERR_BAD_NAME', `not a loop device: ${device}`);
  return name;
}

async function sysRead(path: string): Promise<string | undefined> {
  try {
    return (await readFile(path, 'utf8')).trim();
  } catch {
    return undefined;
  }
}

/** Reads the kernel's view of a loop device; undefined when it is not attached. */
export async function describeLoop(device: string): Promise<LoopDevice | undefined> {
  const name = sysName(device);
  const backingFile = await sysRead(`/sys/block/${name}/loop/backing_file`);
  if (backingFile === undefined) return undefined;
  const [major, minor] = ((await sysRead(`/sys/block/${name}/dev`)) ?? '0:0').split(':').map(Number);
  return {
    device: `/dev/${name}`,
    backingFile: backingFile.replace(/ \(deleted\)$/, ''),
    major: major ?? 0,
    minor: minor ?? 0,
    readOnly: (await sysRead(`/sys/block/${name}/ro`)) === '1',
    directIo: (await sysRead(`/sys/block/${name}/loop/dio`)) === '1',
    discard: Number((await sysRead(`/sys/block/${name}/queue/discard_max_bytes`)) ?? '0') > 0,
  };
}

export async function attachLoop(opts: AttachLoopOptions): Promise<LoopDevice> {
  const wantDio = opts.directIo ?? true;
  const base = ['--find', '--show', ...(opts.readOnly ? ['--read-only'] : [])];
  let out: string;
  try {
    out = (await run('losetup', [...base, `--direct-io=${wantDio ? 'on' : 'off'}`, opts.file])).stdout;
  } catch (err) {
    // losetup attaches before it sets direct I/O, and a timed-out losetup may have attached too: a device it
    // left on the file is the attach (a second one would keep the file open after the first is detached).
    const left = await loopsForFile(opts.file);
    if (left[0] !== undefined) return left[0];
    if (!wantDio)
      throw new MountError('DP_ERR_LOOP', `attach loop on ${opts.file}: ${(err as Error).message}`, { cause: err });
    // Older kernels refuse direct I/O on some backing files; buffered still works (slower, see datapath.md).
    out = (await run('losetup', [...base, opts.file])).stdout;
  }
  const device = out.trim();
  const d = await describeLoop(device);
  if (!d) throw new MountError('DP_ERR_LOOP', `losetup reported ${device}, but it is not attached`);
  return d;
}

/** Detaches a loop device. Not an error when it is already detached. */
export async function detachLoop(device: string): Promise<void> {
  if (!(await describeLoop(device))) return;
  try {
    await run('losetup', ['--detach', device]);
  } catch (err) {
    if (!(await describeLoop(device))) return;
    throw new MountError('DP_ERR_LOOP', `detach ${device}: ${(err as Error).message}`, { cause: err });
  }
}

/** Every attached loop device. */
export async function listLoops(): Promise<LoopDevice[]> {
  const { stdout } = await run('losetup', ['--list', '--noheadings', '--output', 'NAME']);
  const out: LoopDevice[] = [];
  for (const line of stdout.split('\n')) {
    const name = line.trim();
    if (!name) continue;
    const d = await describeLoop(name);
    if (d) out.push(d);
  }
  return out;
}

/** Loop devices whose backing file lies under `dir` (our own: views of our FUSE mount). */
export async function loopsBackedUnder(dir: string): Promise<LoopDevice[]> {
  const prefix = dir.endsWith('/') ? dir : `${dir}/`;
  return (await listLoops()).filter((l) => l.backingFile.startsWith(prefix));
}

/** The loop device attached to exactly `file`, if any (`mountDevice`: see loopsForFile). */
export async function loopForFile(file: string, mountDevice?: string): Promise<LoopDevice | undefined> {
  return (await loopsForFile(file, mountDevice))[0];
}

/**
 * Every loop device on `file` (normally at most one). The kernel names a loop's backing file by its path in
 * the mount it was opened through; once that mount is gone from every namespace the reader can see (the
 * mount namespace of a node plugin container that attached it and has since been replaced), the name is
 * the path inside the file system only, `/<name>`. With `mountDevice` ("major:minor" of the file system
 * `file` is on), such a loop counts too when its backing file is on that device.
 */
export async function loopsForFile(file: string, mountDevice?: string): Promise<LoopDevice[]> {
  const loops = await listLoops();
  const exact = loops.filter((l) => l.backingFile === file);
  if (mountDevice === undefined) return exact;
  const detached = loops.filter((l) => l.backingFile === `/${basename(file)}`);
  if (detached.length === 0) return exact;
  // Not --raw: raw mode writes the column's padding as \x20 escapes.
  const { stdout } = await run('losetup', ['--list', '--noheadings', '--output', 'NAME,BACK-MAJ:MIN']);
  const on = new Set(
    stdout
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .filter(([, dev]) => dev === mountDevice)
      .map(([name]) => name),
  );
  return [...exact, ...detached.filter((l) => on.has(l.device))];
}
