// SPDX-License-Identifier: Apache-2.0
// Node operations on the data path (csi/src/mount helpers over the backend's loop devices):
//   stage     live view + loop device; mount: mkfs when empty + mount on the staging path; block: nothing
//   publish   mount: bind the staging mount on the target dir; block: bind the loop device on a target file
//   unpublish unmount the target and remove it; unstage: unmount staging, detach loop, drop the view
//   expand    online: refresh the loop capacity, grow the mounted file system (ext4 resize2fs, xfs_growfs)
// Every step is idempotent; the stage/publish state is persisted in the volume record after each change.
import { readdir, rm, rmdir, stat, statfs } from 'node:fs/promises';
import { CsiError } from '../errors.js';
import type { VolumeCapability } from '../grpc/csi-types.js';
import { run } from '../mount/exec.js';
import { type FsType, probeFsType } from '../mount/filesystem.js';
import { isMountPoint, mountsAt } from '../mount/mountinfo.js';
import { unmount, unmountAndRemove } from '../mount/mounts.js';
import { publishBlock, publishFilesystem, stageFilesystem, unpublish } from '../mount/stage.js';
import type { PublishRecord, StageRecord, VolumeRecord } from '../state/records.js';
import type { VolumeCondition } from './backend.js';
import { deviceSizeBytes, growExt4Offline, growMounted } from './fs-grow.js';
import { accessModeOf, accessTypeOf, capabilityProblem, isReadOnlyMode, resolveFsType } from './capabilities.js';
import type { DriverContext } from './context.js';
import { volumeKey } from './locks.js';

export interface StageInput {
  readonly volumeId: string;
  readonly stagingPath: string;
  readonly capability: VolumeCapability;
}

export interface PublishInput {
  readonly volumeId: string;
  readonly targetPath: string;
  readonly stagingPath: string;
  readonly capability: VolumeCapability;
  readonly readOnly: boolean;
}

export interface ExpandInput {
  readonly volumeId: string;
  /** Where the volume is used: a publish target (kubelet's choice) or the staging path. */
  readonly volumePath: string;
  readonly stagingPath?: string | undefined;
  /** capacity_range.required_bytes; absent or 0: the volume's current size. */
  readonly requiredBytes?: number | undefined;
  readonly capability?: VolumeCapability | undefined;
}

export interface VolumeStats {
  readonly bytes: { total: number; used: number; available: number };
  readonly inodes: { total: number; used: number; available: number } | null;
  readonly condition: VolumeCondition;
}

export class NodeService {
  constructor(private readonly d: DriverContext) {}

  async stage(input: StageInput): Promise<void> {
    const rec = this.volume(input.volumeId);
    const accessType = this.checkCapability(rec, input.capability);
    const mode = accessModeOf(input.capability);
    await this.d.locks.run('NodeStageVolume', [volumeKey(rec.volumeId)], async () => {
      const cur = this.volume(input.volumeId);
      const readOnly = isReadOnlyMode(mode);
      const fsType =
        accessType === 'mount' ? resolveFsType(input.capability, cur.fsType, this.d.options.defaultFsType) : '';
      const mountFlags = input.capability.mount?.mount_flags ?? [];
      if (cur.stage) {
        const s = cur.stage;
        if (s.stagingPath !== input.stagingPath) {
          throw new CsiError('CSI_ERR_IN_USE', `volume ${cur.volumeId} is already staged at ${s.stagingPath}`);
        }
        if (s.accessType !== accessType || s.fsType !== fsType || s.readOnly !== readOnly) {
          throw new CsiError(
            'CSI_ERR_PUBLISH_CONFLICT',
            `volume ${cur.volumeId} is staged at ${s.stagingPath} as ${s.accessType}${s.fsType ? `/${s.fsType}` : ''}${s.readOnly ? ' (read-only)' : ''}`,
          );
        }
        if (await this.stageIntact(cur.volumeId, s)) return;
        this.d.log.warn(
          { volumeId: cur.volumeId, stagingPath: s.stagingPath },
          'Re-staging a volume whose stage broke',
        );
      }
      const loop = await this.d.backend.attachVolume(cur.volumeId);
      try {
        if (accessType === 'mount') {
          if (!readOnly && fsType === 'ext4' && (await probeFsType(loop.device)) === 'ext4') {
            if (await growExt4Offline(loop.device)) {
              this.d.log.info({ volumeId: cur.volumeId, device: loop.device }, 'Grew file system to the volume size');
            }
          }
          const { formatted } = await stageFilesystem({
            device: loop.device,
            stagingPath: input.stagingPath,
            fsType: fsType as FsType,
            mountOptions: mountOptionsFor(fsType, mountFlags),
            readOnly,
          });
          if (formatted) this.d.log.info({ volumeId: cur.volumeId, device: loop.device, fsType }, 'Formatted volume');
          else if (!readOnly && fsType === 'xfs') await growMounted('xfs', loop.device, input.stagingPath);
        }
      } catch (err) {
        await this.d.backend.detachVolume(cur.volumeId).catch((e: unknown) => {
          this.d.log.error({ err: e, volumeId: cur.volumeId }, 'Failed to detach after a failed stage');
        });
        throw err;
      }
      const stage: StageRecord = {
        stagingPath: input.stagingPath,
        accessType,
        fsType,
        mountFlags,
        device: loop.device,
        readOnly,
      };
      await this.d.state.putVolume({ ...cur, stage });
    });
  }

  async unstage(volumeId: string, stagingPath: string): Promise<void> {
    const rec = this.volume(volumeId);
    await this.d.locks.run('NodeUnstageVolume', [volumeKey(volumeId)], async () => {
      const cur = this.volume(rec.volumeId);
      const s = cur.stage;
      if (!s) {
        // Not staged (or a restart cleared it): make sure nothing of ours is left on the path.
        await this.d.backend.detachVolume(cur.volumeId);
        return;
      }
      if (s.stagingPath !== stagingPath) {
        throw new CsiError(
          'CSI_ERR_PATH_NOT_FOUND',
          `volume ${volumeId} is staged at ${s.stagingPath}, not ${stagingPath}`,
        );
      }
      const published = Object.keys(cur.publish);
      if (published.length > 0) {
        throw new CsiError('CSI_ERR_IN_USE', `volume ${volumeId} is still published at ${published.join(', ')}`);
      }
      if (s.accessType === 'mount') await unmount(stagingPath);
      await this.d.backend.detachVolume(cur.volumeId);
      await this.d.state.putVolume({ ...cur, stage: null });
    });
  }

  async publish(input: PublishInput): Promise<void> {
    const rec = this.volume(input.volumeId);
    const accessType = this.checkCapability(rec, input.capability);
    const mode = accessModeOf(input.capability);
    const readOnly = input.readOnly || isReadOnlyMode(mode);
    await this.d.locks.run('NodePublishVolume', [volumeKey(rec.volumeId)], async () => {
      const cur = this.volume(input.volumeId);
      const s = cur.stage;
      if (!s || s.stagingPath !== input.stagingPath) {
        throw new CsiError(
          'CSI_ERR_NOT_STAGED',
          `volume ${cur.volumeId} is not staged at ${input.stagingPath}${s ? ` (it is staged at ${s.stagingPath})` : ''}`,
        );
      }
      if (s.accessType !== accessType) {
        throw new CsiError(
          'CSI_ERR_CAPABILITY_MISMATCH',
          `volume ${cur.volumeId} is staged for ${s.accessType} access`,
        );
      }
      const existing = cur.publish[input.targetPath];
      if (existing) {
        if (existing.readOnly !== readOnly || existing.accessType !== accessType || existing.accessMode !== mode) {
          throw new CsiError(
            'CSI_ERR_PUBLISH_CONFLICT',
            `volume ${cur.volumeId} is published at ${input.targetPath} with other options (readOnly=${existing.readOnly}, ${existing.accessMode})`,
          );
        }
        if (await isMountPoint(input.targetPath)) return;
      }
      const others = Object.values(cur.publish).filter((p) => p.targetPath !== input.targetPath);
      const single = others.find((p) => p.accessMode === 'SINGLE_NODE_SINGLE_WRITER');
      if ((mode === 'SINGLE_NODE_SINGLE_WRITER' && others.length > 0) || single) {
        throw new CsiError(
          'CSI_ERR_SINGLE_WRITER',
          `volume ${cur.volumeId} is published at ${(single ?? others[0])!.targetPath} and SINGLE_NODE_SINGLE_WRITER allows one target`,
        );
      }
      if (accessType === 'mount') {
        await publishFilesystem({ stagingPath: s.stagingPath, targetPath: input.targetPath, readOnly });
      } else {
        await publishBlock({ device: s.device, targetPath: input.targetPath, readOnly });
      }
      const p: PublishRecord = { targetPath: input.targetPath, readOnly, accessType, accessMode: mode };
      await this.d.state.putVolume({ ...cur, publish: { ...cur.publish, [input.targetPath]: p } });
    });
  }

  async unpublish(volumeId: string, targetPath: string): Promise<void> {
    const rec = this.volume(volumeId);
    await this.d.locks.run('NodeUnpublishVolume', [volumeKey(volumeId)], async () => {
      const cur = this.volume(rec.volumeId);
      if (cur.publish[targetPath]) {
        await unpublish(targetPath);
        const rest = { ...cur.publish };
        delete rest[targetPath];
        await this.d.state.putVolume({ ...cur, publish: rest });
        return;
      }
      // Not published there (any more): remove what we may have left, and nothing else: a mount of our
      // device, or the empty directory / empty file a publish creates (CSI: the SP removes the target).
      if (await this.isOurMount(cur, targetPath)) await unmountAndRemove(targetPath);
      else if (!(await isMountPoint(targetPath))) await removeEmptyTarget(targetPath);
    });
  }

  async stats(volumeId: string, volumePath: string): Promise<VolumeStats> {
    const rec = this.volume(volumeId);
    const kind = this.pathKind(rec, volumePath);
    const condition = await this.d.backend.condition(volumeId);
    if (kind === 'block') {
      const size = rec.capacityBytes;
      return { bytes: { total: size, used: 0, available: 0 }, inodes: null, condition };
    }
    let st;
    try {
      st = await statfs(volumePath);
    } catch (err) {
      return {
        bytes: { total: 0, used: 0, available: 0 },
        inodes: null,
        condition: { abnormal: true, message: `statfs ${volumePath}: ${(err as Error).message}` },
      };
    }
    return {
      bytes: { total: st.blocks * st.bsize, used: (st.blocks - st.bfree) * st.bsize, available: st.bavail * st.bsize },
      inodes: { total: st.files, used: st.files - st.ffree, available: st.ffree },
      condition,
    };
  }

  /**
   * NodeExpandVolume: makes the loop device and the file system at `volumePath` (a publish target, or the
   * staging path) use the volume's current size, while pods use them. ControllerExpandVolume grew the engine
   * storage and, for a staged volume, the loop device already; the capacity refresh here repeats that last
   * step for a device attached while the growth was under way. A raw block volume just reports its device
   * size. `requiredBytes` (capacity_range.required_bytes) above the volume's size is OUT_OF_RANGE: the
   * controller side has not grown it that far.
   */
  async expand(input: ExpandInput): Promise<{ capacityBytes: number }> {
    const rec = this.volume(input.volumeId);
    const kind = this.pathKind(rec, input.volumePath);
    if (input.capability) {
      const t = this.checkCapability(rec, input.capability);
      if (t !== kind) {
        throw new CsiError(
          'CSI_ERR_CAPABILITY_MISMATCH',
          `volume ${rec.volumeId} is used for ${kind} access at ${input.volumePath}, not ${t}`,
        );
      }
    }
    return this.d.locks.run('NodeExpandVolume', [volumeKey(rec.volumeId)], async () => {
      const cur = this.volume(rec.volumeId);
      const s = cur.stage;
      if (!s) throw new CsiError('CSI_ERR_NOT_STAGED', `volume ${cur.volumeId} is not staged`);
      if (input.stagingPath && input.stagingPath !== s.stagingPath) {
        throw new CsiError(
          'CSI_ERR_PATH_NOT_FOUND',
          `volume ${cur.volumeId} is staged at ${s.stagingPath}, not ${input.stagingPath}`,
        );
      }
      if ((input.requiredBytes ?? 0) > cur.capacityBytes) {
        throw new CsiError(
          'CSI_ERR_CAPACITY',
          `NodeExpandVolume asks for ${input.requiredBytes} bytes, but volume ${cur.volumeId} has ${cur.capacityBytes}: ControllerExpandVolume grows it first`,
        );
      }
      let deviceBytes = await deviceSizeBytes(s.device);
      if (deviceBytes < cur.capacityBytes) {
        await run('losetup', ['--set-capacity', s.device]);
        deviceBytes = await deviceSizeBytes(s.device);
      }
      if (deviceBytes < cur.capacityBytes) {
        throw new CsiError(
          'CSI_ERR_INTERNAL',
          `loop device ${s.device} of volume ${cur.volumeId} has ${deviceBytes} bytes after a capacity refresh, the volume ${cur.capacityBytes}`,
        );
      }
      const grew = kind === 'mount' && !s.readOnly && (await growMounted(s.fsType, s.device, s.stagingPath));
      this.d.log.info(
        { volumeId: cur.volumeId, device: s.device, sizeBytes: deviceBytes, fileSystemGrew: grew },
        'Expanded volume on the node',
      );
      return { capacityBytes: deviceBytes };
    });
  }

  /**
   * Shutdown: unpublishes and unstages every volume this process staged (lazily: a pod may still hold a
   * file open), so no loop device outlives the data path. The records are cleared as after a crash; the CO
   * stages and publishes again once a plugin runs. Failures are logged, never thrown.
   */
  async teardownAll(): Promise<{ volumes: string[] }> {
    const done: string[] = [];
    for (const rec of this.d.state.volumes()) {
      if (!rec.stage && Object.keys(rec.publish).length === 0) continue;
      for (const p of Object.values(rec.publish)) {
        await unmount(p.targetPath, { lazy: true }).catch((err: unknown) =>
          this.d.log.warn({ err, volumeId: rec.volumeId, targetPath: p.targetPath }, 'Failed to unmount at shutdown'),
        );
      }
      if (rec.stage?.accessType === 'mount') {
        await unmount(rec.stage.stagingPath, { lazy: true }).catch((err: unknown) =>
          this.d.log.warn({ err, volumeId: rec.volumeId }, 'Failed to unmount the staging path at shutdown'),
        );
      }
      await this.d.backend
        .detachVolume(rec.volumeId)
        .catch((err: unknown) => this.d.log.warn({ err, volumeId: rec.volumeId }, 'Failed to detach at shutdown'));
      await this.d.state
        .putVolume({ ...rec, stage: null, publish: {} })
        .catch((err: unknown) => this.d.log.error({ err, volumeId: rec.volumeId }, 'Failed to record the teardown'));
      done.push(rec.volumeId);
    }
    if (done.length > 0) this.d.log.warn({ volumes: done }, 'Unstaged volumes at shutdown');
    return { volumes: done };
  }

  // ----- internals --------------------------------------------------------------------------------------

  private volume(volumeId: string): VolumeRecord {
    const rec = this.d.state.volume(volumeId);
    if (!rec || rec.phase !== 'ready') {
      throw new CsiError(
        'CSI_ERR_VOLUME_NOT_FOUND',
        `volume ${volumeId} does not exist on node ${this.d.options.nodeId}`,
      );
    }
    return rec;
  }

  private checkCapability(rec: VolumeRecord, cap: VolumeCapability): 'mount' | 'block' {
    const problem = capabilityProblem(cap);
    if (problem) throw new CsiError('CSI_ERR_UNSUPPORTED_CAPABILITY', problem);
    const t = accessTypeOf(cap)!;
    if (!rec.accessTypes.includes(t)) {
      throw new CsiError(
        'CSI_ERR_CAPABILITY_MISMATCH',
        `volume ${rec.volumeId} was created for ${rec.accessTypes.join('/')} access, not ${t}`,
      );
    }
    return t;
  }

  /** Whether `path` is where `rec` is published or staged (and how it is used there); NOT_FOUND otherwise. */
  private pathKind(rec: VolumeRecord, path: string): 'mount' | 'block' {
    const p = rec.publish[path];
    if (p) return p.accessType;
    if (rec.stage && rec.stage.stagingPath === path) return rec.stage.accessType;
    throw new CsiError('CSI_ERR_PATH_NOT_FOUND', `volume ${rec.volumeId} is not published or staged at ${path}`);
  }

  private async stageIntact(volumeId: string, s: StageRecord): Promise<boolean> {
    const loop = await this.d.backend.attachedDevice(volumeId);
    if (!loop || loop.device !== s.device) return false;
    if (s.accessType === 'block') return true;
    const top = (await mountsAt(s.stagingPath)).at(-1);
    return top !== undefined && top.major === loop.major && top.minor === loop.minor;
  }

  private async isOurMount(rec: VolumeRecord, target: string): Promise<boolean> {
    const top = (await mountsAt(target)).at(-1);
    if (!top) return false;
    const loop = await this.d.backend.attachedDevice(rec.volumeId);
    return loop !== undefined && top.major === loop.major && top.minor === loop.minor;
  }
}

/**
 * Mount options for staging. xfs refuses to mount a second file system with the same UUID, and a volume
 * restored or cloned from another one has its source's UUID; so xfs is always mounted with `nouuid`.
 */
export function mountOptionsFor(fsType: string, flags: readonly string[]): string[] {
  const out = [...flags];
  if (fsType === 'xfs' && !out.includes('nouuid')) out.push('nouuid');
  return out;
}

/** Removes `path` when it is an empty directory or an empty regular file; anything else stays. */
async function removeEmptyTarget(path: string): Promise<void> {
  const s = await stat(path).catch(() => undefined);
  if (!s) return;
  if (s.isDirectory() && (await readdir(path)).length === 0) await rmdir(path);
  else if (s.isFile() && s.size === 0) await rm(path, { force: true });
}
