// SPDX-License-Identifier: Apache-2.0
// NodeStage / NodePublish style helpers on a loop device:
//   filesystem volume: stage = format if empty + mount the device on the staging dir;
//                      publish = bind the staging dir on the target dir (ro if asked)
//   block volume:      stage = nothing to mount (the device path is recorded by the caller);
//                      publish = bind the device node on a target file
//   unpublish / unstage = unmount and remove the target / unmount the staging dir
// All idempotent: repeating a call with the same arguments succeeds without doing it twice.
import { stat } from 'node:fs/promises';
import { MountError } from './errors.js';
import { type FsType, formatIfNeeded } from './filesystem.js';
import { mountsAt } from './mountinfo.js';
import { bindMount, mountDevice, unmount, unmountAndRemove } from './mounts.js';

export interface StageFilesystemRequest {
  readonly device: string;
  readonly stagingPath: string;
  readonly fsType: FsType;
  readonly mountOptions?: readonly string[];
  /** Mount read-only and never format (snapshot views). */
  readonly readOnly?: boolean;
}

export async function stageFilesystem(req: StageFilesystemRequest): Promise<{ formatted: boolean }> {
  let formatted = false;
  if (!req.readOnly) formatted = (await formatIfNeeded(req.device, req.fsType)).formatted;
  await mountDevice(req.device, req.stagingPath, {
    fsType: req.fsType,
    readOnly: req.readOnly === true,
    options: req.mountOptions ?? [],
  });
  return { formatted };
}

export async function unstageFilesystem(stagingPath: string): Promise<void> {
  await unmount(stagingPath);
}

export async function publishFilesystem(req: {
  readonly stagingPath: string;
  readonly targetPath: string;
  readonly readOnly?: boolean;
}): Promise<void> {
  if ((await mountsAt(req.stagingPath)).length === 0) {
    throw new MountError('DP_ERR_NOT_STAGED', `${req.stagingPath} is not staged (not a mount point)`);
  }
  await bindMount(req.stagingPath, req.targetPath, { readOnly: req.readOnly === true });
}

export async function publishBlock(req: {
  readonly device: string;
  readonly targetPath: string;
  readonly readOnly?: boolean;
}): Promise<void> {
  const s = await stat(req.device).catch(() => undefined);
  if (!s?.isBlockDevice()) throw new MountError('DP_ERR_NOT_STAGED', `${req.device} is not a block device`);
  await bindMount(req.device, req.targetPath, { readOnly: req.readOnly === true });
}

/** Unmounts a published target (directory or file) and removes it. */
export async function unpublish(targetPath: string): Promise<void> {
  await unmountAndRemove(targetPath);
}
