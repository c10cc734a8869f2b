// SPDX-License-Identifier: Apache-2.0
// Mount, bind-mount and unmount, idempotent the way NodeStage/NodePublish need: mounting what is already
// mounted there succeeds, unmounting what is not mounted succeeds.
import { mkdir, open, rm, rmdir, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { MountError } from './errors.js';
import { run } from './exec.js';
import { type MountEntry, mountsAt, readMountInfo } from './mountinfo.js';

export interface MountOptions {
  readonly fsType: string;
  readonly readOnly?: boolean;
  readonly options?: readonly string[];
}

/** major:minor of a device node (glibc's dev_t encoding). */
export async function deviceNumbers(device: string): Promise<{ major: number; minor: number }> {
  const d = (await stat(device, { bigint: true })).rdev;
  const major = ((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn);
  const minor = (d & 0xffn) | ((d >> 12n) & ~0xffn);
  return { major: Number(major), minor: Number(minor) };
}

function sameDevice(m: MountEntry, dev: { major: number; minor: number }): boolean {
  return m.major === dev.major && m.minor === dev.minor;
}

/** Mounts a block device on `target` (created if missing). Succeeds if that device is already mounted there. */
export async function mountDevice(device: string, target: string, opts: MountOptions): Promise<void> {
  await mkdir(target, { recursive: true });
  const dev = await deviceNumbers(device);
  const existing = (await mountsAt(target)).at(-1);
  if (existing) {
    if (sameDevice(existing, dev)) return;
    throw new MountError('DP_ERR_MOUNT', `${target} is already a mount point of ${existing.source}`);
  }
  const o = [...(opts.readOnly ? ['ro'] : []), ...(opts.options ?? [])];
  if (opts.fsType === 'xfs') {
    // Snapshots and clones of a volume carry its file-system UUID; XFS refuses a second mount of one UUID
    // on a node ("duplicate UUID") unless told nouuid.
    if (!o.includes('nouuid')) o.push('nouuid');
    // A frozen cut is consistent in place; a read-only mount must not (and cannot) replay the log.
    if (opts.readOnly && !o.includes('norecovery')) o.push('norecovery');
  }
  const args = ['-t', opts.fsType, ...(o.length ? ['-o', o.join(',')] : []), device, target];
  try {
    await run('mount', args);
  } catch (err) {
    throw new MountError('DP_ERR_MOUNT', `mount ${device} on ${target}: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Bind-mounts `source` on `target`. A directory source needs a directory target, a file or device node
 * source a file target; the target is created. With readOnly the bind is remounted read-only.
 */
export async function bindMount(source: string, target: string, opts: { readOnly?: boolean } = {}): Promise<void> {
  const s = await stat(source);
  if (s.isDirectory()) {
    await mkdir(target, { recursive: true });
  } else {
    await mkdir(dirname(target), { recursive: true });
    await (await open(target, 'a')).close();
  }
  if ((await mountsAt(target)).length > 0) return;
  try {
    await run('mount', ['--bind', source, target]);
    if (opts.readOnly) await run('mount', ['-o', 'remount,bind,ro', target]);
  } catch (err) {
    await unmount(target).catch(() => undefined);
    throw new MountError('DP_ERR_MOUNT', `bind ${source} on ${target}: ${(err as Error).message}`, { cause: err });
  }
}

/** Unmounts every mount stacked on `target`. Not mounted is not an error. `lazy` detaches busy mounts. */
export async function unmount(target: string, opts: { lazy?: boolean } = {}): Promise<void> {
  for (let i = 0; i < 16 && (await mountsAt(target)).length > 0; i++) {
    try {
      await run('umount', [target]);
    } catch (err) {
      if (!opts.lazy) {
        throw new MountError('DP_ERR_MOUNT', `unmount ${target}: ${(err as Error).message}`, { cause: err });
      }
      await run('umount', ['-l', target]);
    }
  }
  if ((await mountsAt(target)).length > 0) throw new MountError('DP_ERR_MOUNT', `${target} is still mounted`);
}

/** Unmounts `target` and removes it (the directory or file kubelet expects gone after Unpublish). */
export async function unmountAndRemove(target: string): Promise<void> {
  await unmount(target);
  const s = await stat(target).catch(() => undefined);
  if (!s) return;
  // rmdir, not rm -r: a directory that still has content after the unmount is not ours to delete.
  if (s.isDirectory()) await rmdir(target);
  else await rm(target, { force: true });
}

/** Mount entries of the block device `major:minor` (every place it is mounted or bound). */
export async function mountsOfDevice(major: number, minor: number): Promise<MountEntry[]> {
  return (await readMountInfo()).filter((m) => m.major === major && m.minor === minor);
}
