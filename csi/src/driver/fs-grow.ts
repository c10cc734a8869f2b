// SPDX-License-Identifier: Apache-2.0
// Growing a file system to its (grown) device.
//   ext4 mounted   resize2fs <device>: the kernel's online resize (EXT4_IOC_RESIZE_FS), which needs
//                  CAP_SYS_RESOURCE in the initial user namespace; without it the file system grows at the
//                  next NodeStage, offline, before it is mounted (growExt4Offline).
//   ext4 unmounted e2fsck -f -p, then resize2fs (NodeStage).
//   xfs            xfs_growfs <mountpoint>: xfs only grows mounted (CAP_SYS_ADMIN).
// Every function is a no-op on a file system that already fills its device.
import { readFile } from 'node:fs/promises';
import { CsiError } from '../errors.js';
import { run } from '../mount/exec.js';

/** Bit of CAP_SYS_RESOURCE in the capability sets of /proc/<pid>/status (linux/capability.h). */
const CAP_SYS_RESOURCE_BIT = 24n;

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

/** Whether this process may resize a mounted ext4 file system (CAP_SYS_RESOURCE in its effective set). */
export async function canGrowExt4Online(): Promise<boolean> {
  const status = await readFile('/proc/self/status', 'utf8');
  const hex = /^CapEff:\s*([0-9a-f]+)$/m.exec(status)?.[1];
  return hex !== undefined && ((BigInt(`0x${hex}`) >> CAP_SYS_RESOURCE_BIT) & 1n) === 1n;
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

/**
 * Grows the file system on `device`, mounted at `mountpoint`, to fill the device; returns whether it grew.
 * A mounted ext4 this process may not resize is CSI_ERR_IN_USE (FAILED_PRECONDITION: kubelet stops retrying
 * online and the volume's next NodeStage grows it offline).
 */
export async function growMounted(fsType: string, device: string, mountpoint: string): Promise<boolean> {
  if (fsType === 'xfs') {
    const out = (await run('xfs_growfs', [mountpoint], { timeoutMs: 600_000 })).stdout;
    return /data blocks changed/.test(out);
  }
  const [fs, dev] = await Promise.all([ext4SizeBytes(device), deviceSizeBytes(device)]);
  if (fs >= dev) return false;
  const refuse = (): CsiError =>
    new CsiError(
      'CSI_ERR_IN_USE',
      `ext4 on ${device} is mounted at ${mountpoint} (${fs} of ${dev} bytes); growing it online needs CAP_SYS_RESOURCE, which the node plugin lacks: it grows when the volume is staged again (restart the pod)`,
      { details: { device, mountpoint, fsBytes: fs, deviceBytes: dev } },
    );
  if (!(await canGrowExt4Online())) throw refuse();
  try {
    await run('resize2fs', [device], { timeoutMs: 600_000 });
  } catch (err) {
    // CAP_SYS_RESOURCE in a user namespace is not enough: the kernel checks the initial one (EPERM).
    if (/Operation not permitted|Permission denied/.test((err as Error).message)) throw refuse();
    throw err;
  }
  return true;
}
