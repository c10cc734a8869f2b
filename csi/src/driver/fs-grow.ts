// SPDX-License-Identifier: Apache-2.0
// Growing a file system to its (grown) volume. ext4 is grown offline at NodeStage, before it is mounted:
// online ext4 resizing needs CAP_SYS_RESOURCE, which a plugin container may lack, and the plugin expands
// volumes offline anyway (ADR 0004). xfs can only grow mounted (xfs_growfs, CAP_SYS_ADMIN).
import { run } from '../mount/exec.js';

/** Size in bytes of the ext4 file system on `device` (from its superblock). */
export async function ext4SizeBytes(device: string): Promise<number> {
  const out = (await run('dumpe2fs', ['-h', device], { timeoutMs: 60_000 })).stdout;
  const count = /^Block count:\s+(\d+)/m.exec(out)?.[1];
  const size = /^Block size:\s+(\d+)/m.exec(out)?.[1];
  if (count === undefined || size === undefined) throw new Error(`dumpe2fs ${device}: no block count or size`);
  return Number(count) * Number(size);
}

export async function deviceSizeBytes(device: string): Promise<number> {
  return Number((await run('blockdev', ['--getsize64', device])).stdout.trim());
}

/** Grows an unmounted ext4 file system to fill `device`; returns whether it grew. */
export async function growExt4Offline(device: string): Promise<boolean> {
  const [fs, dev] = await Promise.all([ext4SizeBytes(device), deviceSizeBytes(device)]);
  if (fs >= dev) return false;
  // resize2fs wants a checked file system; -p repairs only what is safe without asking (exit 0 or 1).
  await run('e2fsck', ['-f', '-p', device], { okCodes: [0, 1], timeoutMs: 600_000 });
  await run('resize2fs', [device], { timeoutMs: 600_000 });
  return true;
}

/** Grows a mounted file system to fill its device (ext4 needs CAP_SYS_RESOURCE; no-op when full size). */
export async function growOnline(fsType: string, device: string, mountpoint: string): Promise<void> {
  if (fsType === 'xfs') await run('xfs_growfs', [mountpoint], { timeoutMs: 600_000 });
  else await run('resize2fs', [device], { timeoutMs: 600_000 });
}
