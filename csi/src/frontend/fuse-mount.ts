// SPDX-License-Identifier: Apache-2.0
// Mounting our FUSE file system as root without libfuse or fusermount: open /dev/fuse, pass that descriptor to
// `mount -i -t fuse.<subtype> -o fd=3,...` as the child's fd 3, so the kernel binds the new connection to the
// descriptor this process holds. Node opens files with O_CLOEXEC, so no other child inherits /dev/fuse: when
// this process dies the connection is aborted, and the views fail with ENOTCONN/EIO rather than hang.
import { closeSync, openSync } from 'node:fs';
import { stat, writeFile } from 'node:fs/promises';
import { MountError } from '../mount/errors.js';
import { run } from '../mount/exec.js';
import { mountsAt } from '../mount/mountinfo.js';

export const FUSE_SUBTYPE = 'loopsnap';
export const FUSE_FSTYPE = `fuse.${FUSE_SUBTYPE}`;

export interface FuseMountOptions {
  readonly mountpoint: string;
  /** Mount source shown in /proc/mounts. */
  readonly source: string;
  readonly maxReadBytes: number;
}

export function openFuseDevice(): number {
  try {
    return openSync('/dev/fuse', 'r+');
  } catch (err) {
    throw new MountError('DP_ERR_FUSE_MOUNT', `open /dev/fuse: ${(err as Error).message}`, { cause: err });
  }
}

export function closeFuseDevice(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // already closed
  }
}

/** Mounts the connection behind `fuseFd` on `mountpoint`. The kernel queues INIT; workers must answer it. */
export async function mountFuse(fuseFd: number, opts: FuseMountOptions): Promise<void> {
  const o = ['fd=3', 'rootmode=40000', 'user_id=0', 'group_id=0', `max_read=${opts.maxReadBytes}`, 'allow_other'].join(
    ',',
  );
  try {
    await run('mount', ['-i', '-t', FUSE_FSTYPE, '-o', o, opts.source, opts.mountpoint], {
      extraFds: [fuseFd],
      timeoutMs: 30_000,
    });
  } catch (err) {
    throw new MountError('DP_ERR_FUSE_MOUNT', `mount FUSE on ${opts.mountpoint}: ${(err as Error).message}`, {
      cause: err,
    });
  }
}

/**
 * The FUSE connection id of the mount at `mountpoint` (the minor of its st_dev; /sys/fs/fuse/connections/<id>),
 * or undefined when nothing of ours is mounted there. Reads mountinfo, so it works on a dead connection too.
 */
export async function fuseConnectionId(mountpoint: string): Promise<number | undefined> {
  const m = (await mountsAt(mountpoint)).filter((e) => e.fsType === FUSE_FSTYPE).at(-1);
  return m ? m.minor : undefined;
}

/** Aborts a FUSE connection: every pending and future request fails with ENOTCONN, readers get ENODEV. */
export async function abortFuseConnection(connectionId: number): Promise<boolean> {
  try {
    await writeFile(`/sys/fs/fuse/connections/${connectionId}/abort`, '1');
    return true;
  } catch {
    return false;
  }
}

/**
 * Unmounts our FUSE mount at `mountpoint` (every stacked one). With `lazy`, a busy mount is detached with
 * `umount -l` and its connection aborted, so blocked readers return. Missing mounts are not an error.
 */
export async function unmountFuse(mountpoint: string, opts: { lazy: boolean }): Promise<void> {
  for (let attempt = 0; attempt < 10; attempt++) {
    const id = await fuseConnectionId(mountpoint);
    if (id === undefined) return;
    try {
      await run('umount', [mountpoint], { timeoutMs: 30_000 });
    } catch (err) {
      if (!opts.lazy) {
        throw new MountError('DP_ERR_MOUNT', `unmount FUSE at ${mountpoint}: ${(err as Error).message}`, {
          cause: err,
        });
      }
      await abortFuseConnection(id);
      await run('umount', ['-l', mountpoint], { timeoutMs: 30_000 });
    }
  }
  throw new MountError('DP_ERR_MOUNT', `unmount FUSE at ${mountpoint}: still mounted after 10 attempts`);
}

/** True when `path` exists and is reachable (a dead FUSE mount answers ENOTCONN). */
export async function isReachable(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}
