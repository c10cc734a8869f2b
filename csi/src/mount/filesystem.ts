// SPDX-License-Identifier: Apache-2.0
// File systems on block devices: probe, format (ext4, xfs), check.
import { MountError } from './errors.js';
import { run } from './exec.js';

export const SUPPORTED_FS_TYPES = ['ext4', 'xfs'] as const;
export type FsType = (typeof SUPPORTED_FS_TYPES)[number];

export function parseFsType(value: string | undefined, fallback: FsType = 'ext4'): FsType {
  const v = value === undefined || value === '' ? fallback : value;
  if ((SUPPORTED_FS_TYPES as readonly string[]).includes(v)) return v as FsType;
  throw new MountError('DP_ERR_FS_TYPE', `unsupported fsType ${JSON.stringify(v)} (supported: ext4, xfs)`);
}

/** The file-system type on `device` (blkid low-level probe), or undefined when it holds none. */
export async function probeFsType(device: string): Promise<string | undefined> {
  const r = await run('blkid', ['-p', '-o', 'value', '-s', 'TYPE', device], { okCodes: [0, 2] });
  const t = r.stdout.trim();
  return r.code === 2 || t === '' ? undefined : t;
}

export async function mkfs(device: string, fsType: FsType, opts: { label?: string } = {}): Promise<void> {
  const label = opts.label ? ['-L', opts.label.slice(0, fsType === 'xfs' ? 12 : 16)] : [];
  if (fsType === 'ext4') await run('mkfs.ext4', ['-q', '-F', ...label, device], { timeoutMs: 600_000 });
  else await run('mkfs.xfs', ['-q', '-f', ...label, device], { timeoutMs: 600_000 });
}

/**
 * Formats `device` with `fsType` unless it already holds that file system (NodeStage idempotency). A device
 * holding another file system is never reformatted: that would destroy data.
 */
export async function formatIfNeeded(device: string, fsType: FsType): Promise<{ formatted: boolean }> {
  const existing = await probeFsType(device);
  if (existing === fsType) return { formatted: false };
  if (existing !== undefined) {
    throw new MountError('DP_ERR_FS_MISMATCH', `${device} holds ${existing}, not ${fsType}; refusing to format`, {
      details: { device, existing, fsType },
    });
  }
  await mkfs(device, fsType);
  return { formatted: true };
}

export interface FsckResult {
  readonly clean: boolean;
  readonly output: string;
}

/** Read-only consistency check (e2fsck -fn / xfs_repair -n); never modifies the device. */
export async function checkFs(device: string, fsType: FsType): Promise<FsckResult> {
  const r =
    fsType === 'ext4'
      ? await run('e2fsck', ['-f', '-n', device], { okCodes: [0, 1, 2, 4, 8], timeoutMs: 600_000 })
      : await run('xfs_repair', ['-n', device], { okCodes: [0, 1], timeoutMs: 600_000 });
  return { clean: r.code === 0, output: `${r.stdout}${r.stderr}` };
}
