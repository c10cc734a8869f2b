// SPDX-License-Identifier: Apache-2.0
// Helpers for node-plugin integration tests: capabilities, a volume's stage/publish round trip as kubelet
// does it, and checksummed data written through the published path.
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { call, type PluginProcess } from './plugin.js';

const execFileP = promisify(execFile);

export type AccessType = 'mount' | 'block';

export function capability(type: AccessType, mode = 'SINGLE_NODE_WRITER', fsType = ''): object {
  return type === 'block'
    ? { block: {}, access_mode: { mode } }
    : { mount: { fs_type: fsType, mount_flags: [] }, access_mode: { mode } };
}

export interface CsiVolumeResponse {
  volume: { volume_id: string; capacity_bytes: string; content_source: unknown };
}

export interface CsiSnapshotResponse {
  snapshot: { snapshot_id: string; source_volume_id: string; size_bytes: string; ready_to_use: boolean };
}

export async function createVolume(
  p: PluginProcess,
  name: string,
  type: AccessType,
  sizeBytes: number,
  extra: object = {},
  fsType = '',
): Promise<string> {
  const r = await call<CsiVolumeResponse>(p.clients.controller, 'CreateVolume', {
    name,
    capacity_range: { required_bytes: String(sizeBytes) },
    volume_capabilities: [capability(type, 'SINGLE_NODE_WRITER', fsType)],
    ...extra,
  });
  return r.volume.volume_id;
}

export async function createSnapshot(
  p: PluginProcess,
  name: string,
  volumeId: string,
  parameters: Record<string, string> = {},
): Promise<CsiSnapshotResponse['snapshot']> {
  const r = await call<CsiSnapshotResponse>(p.clients.controller, 'CreateSnapshot', {
    name,
    source_volume_id: volumeId,
    parameters,
  });
  return r.snapshot;
}

export interface Published {
  readonly volumeId: string;
  readonly type: AccessType;
  readonly stagingPath: string;
  /** Directory (mount) or device file (block) the workload uses. */
  readonly targetPath: string;
}

/** NodeStage + NodePublish with paths under the plugin's work dir, as kubelet would. */
export async function stageAndPublish(
  p: PluginProcess,
  volumeId: string,
  type: AccessType,
  fsType = '',
): Promise<Published> {
  const base = join(p.dir, 'kubelet', volumeId);
  const stagingPath = join(base, 'staging');
  await mkdir(stagingPath, { recursive: true });
  const targetPath = join(base, 'target');
  await call(p.clients.node, 'NodeStageVolume', {
    volume_id: volumeId,
    staging_target_path: stagingPath,
    volume_capability: capability(type, 'SINGLE_NODE_WRITER', fsType),
  });
  await call(p.clients.node, 'NodePublishVolume', {
    volume_id: volumeId,
    staging_target_path: stagingPath,
    target_path: targetPath,
    volume_capability: capability(type, 'SINGLE_NODE_WRITER', fsType),
  });
  return { volumeId, type, stagingPath, targetPath };
}

export async function unpublishAndUnstage(p: PluginProcess, v: Published): Promise<void> {
  await call(p.clients.node, 'NodeUnpublishVolume', { volume_id: v.volumeId, target_path: v.targetPath });
  await call(p.clients.node, 'NodeUnstageVolume', { volume_id: v.volumeId, staging_target_path: v.stagingPath });
}

export function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Writes `data` at `offset` of a file or device and fsyncs it (durable through loop, FUSE and engine). */
export async function writeDurable(path: string, offset: number, data: Uint8Array): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.write(data, 0, data.length, offset);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export async function readAt(path: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await fh.read(buf, 0, length, offset);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

/** A set of files with random content, written and fsync'd into a mounted volume; returns name -> sha256. */
export async function writeFiles(dir: string, sizes: readonly number[]): Promise<Record<string, string>> {
  const sums: Record<string, string> = {};
  for (const [i, size] of sizes.entries()) {
    const name = `file-${i}.bin`;
    const data = randomBytes(size);
    const fh = await open(join(dir, name), 'w');
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    sums[name] = sha256(data);
  }
  return sums;
}

export async function checksumFiles(dir: string, names: readonly string[]): Promise<Record<string, string>> {
  const sums: Record<string, string> = {};
  for (const n of names) sums[n] = sha256(await readFile(join(dir, n)));
  return sums;
}

/** dd of `src` onto `dev` at `seekMiB` with O_DIRECT and a final fsync; resolves to dd's error, if any. */
export async function ddDirect(src: string, dev: string, seekMiB: number, countMiB: number): Promise<string | null> {
  try {
    await execFileP('dd', [
      `if=${src}`,
      `of=${dev}`,
      'bs=1M',
      `count=${countMiB}`,
      `seek=${seekMiB}`,
      'oflag=direct',
      'conv=fsync,notrunc',
      'status=none',
    ]);
    return null;
  } catch (err) {
    return String((err as { stderr?: string }).stderr ?? err);
  }
}
