// SPDX-License-Identifier: Apache-2.0
// Node operations on the data path (csi/src/mount helpers over the backend's loop devices):
//   stage     live view + loop device; mount: mkfs when empty + mount on the staging path; block: nothing
//   publish   mount: bind the staging mount on the target dir; block: bind the loop device on a target file
//   unpublish unmount the target and remove it; unstage: unmount staging, detach loop, drop the view
//   expand    online: refresh the loop capacity, grow the mounted file system (ext4 resize2fs, xfs_growfs)
// Every step is idempotent; the stage/publish state is persisted in the volume record after each change.
//
// Paths (csi/src/mount/confined-path.ts): staging and target paths lie below the kubelet directory, no
// symlink is followed on them, and none lies in, above or at a path where a volume of this plugin is staged
// or published (another volume's, or the same volume's in the other role). The plugin creates a missing
// staging directory, target directory or target file and records it (VolumeRecord.createdPaths); unstage and
// unpublish remove only what is recorded there, and only while it is still that object. An existing
// non-empty directory or file is never mounted over (the mount would hide it). Unpublish and unstage of a
// path that is already gone are OK; an unpublish of a path the plugin does not know deletes nothing.
import { CsiError } from '../errors.js';
import type { VolumeCapability } from '../grpc/csi-types.js';
import { type ConfinedPath, type ConfinedPaths, describeListing, isWithin } from '../mount/confined-path.js';
import { run } from '../mount/exec.js';
import { type FsType, formatIfNeeded, probeFsType } from '../mount/filesystem.js';
import type { LoopDevice } from '../mount/loop-device.js';
import { mountsAt } from '../mount/mountinfo.js';
import { unmount } from '../mount/mounts.js';
import type { CreatedPathRecord, PublishRecord, StageRecord, VolumeRecord } from '../state/records.js';
import type { VolumeCondition } from './backend.js';
import { deviceSizeBytes, growExt4Offline, growMounted } from './fs-grow.js';
import { accessModeOf, accessTypeOf, capabilityProblem, isReadOnlyMode, resolveFsType } from './capabilities.js';
import type { DriverContext } from './context.js';
import { volumeKey } from './locks.js';
import { checkMountFlags } from './mount-flags.js';

const EINVAL = 22;

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
  /** capacity_range.required_bytes (exact int64); absent or 0: the volume's current size. */
  readonly requiredBytes?: bigint | undefined;
  readonly capability?: VolumeCapability | undefined;
}

export interface VolumeStats {
  readonly bytes: { total: number; used: number; available: number };
  readonly inodes: { total: number; used: number; available: number } | null;
  readonly condition: VolumeCondition;
}

export class NodeService {
  constructor(
    private readonly d: DriverContext,
    private readonly paths: ConfinedPaths,
  ) {}

  async stage(input: StageInput): Promise<void> {
    const rec = this.volume(input.volumeId);
    const accessType = this.checkCapability(rec, input.capability);
    const mode = accessModeOf(input.capability);
    const readOnly = isReadOnlyMode(mode);
    const c = this.confineForMount('staging_target_path', input.stagingPath, rec.volumeId, 'stage');
    const mountFlags = accessType === 'mount' ? checkMountFlags(input.capability.mount?.mount_flags, readOnly) : [];
    await this.d.locks.run('NodeStageVolume', [volumeKey(rec.volumeId)], async () => {
      const cur = this.volume(input.volumeId);
      const fsType =
        accessType === 'mount' ? resolveFsType(input.capability, cur.fsType, this.d.options.defaultFsType) : '';
      if (cur.stage) {
        const s = cur.stage;
        if (s.stagingPath !== c.path) {
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
      const options = accessType === 'mount' ? mountOptionsFor(fsType, mountFlags) : [];
      // Everything on the path is checked before a loop device exists: a refused path leaves nothing behind.
      let created: CreatedPathRecord | null = null;
      if (accessType === 'mount') {
        const refused = await this.paths.checkFsOptions(fsType, options);
        if (refused) {
          throw new CsiError(
            'CSI_ERR_BAD_MOUNT_FLAGS',
            `mount flag ${JSON.stringify(refused.option)} is refused by ${fsType}: ${refused.reason}`,
            { details: { flag: refused.option, fsType } },
          );
        }
        ({ created } = await this.paths.ensure(c, 'dir', () => this.ourMountAt(cur, c, 'mount')));
      } else {
        await this.paths.inspect(c);
      }
      let loop: LoopDevice | undefined;
      try {
        loop = await this.d.backend.attachVolume(cur.volumeId);
        if (accessType === 'mount') await this.stageMount(cur, c, loop, fsType as FsType, options, readOnly);
      } catch (err) {
        if (loop) {
          await this.d.backend.detachVolume(cur.volumeId).catch((e: unknown) => {
            this.d.log.error({ err: e, volumeId: cur.volumeId }, 'Failed to detach after a failed stage');
          });
        }
        if (created) await this.removeQuietly(cur.volumeId, c, created);
        throw err;
      }
      const stage: StageRecord = {
        stagingPath: c.path,
        accessType,
        fsType,
        mountFlags,
        device: loop.device,
        readOnly,
      };
      await this.d.state.putVolume({ ...cur, stage, createdPaths: withCreated(cur, c.path, created) });
    });
  }

  async unstage(volumeId: string, stagingPath: string): Promise<void> {
    const rec = this.volume(volumeId);
    const c = this.paths.confine('staging_target_path', stagingPath);
    await this.d.locks.run('NodeUnstageVolume', [volumeKey(volumeId)], async () => {
      const cur = this.volume(rec.volumeId);
      const s = cur.stage;
      if (!s) {
        // Not staged (or a restart cleared it): make sure nothing of ours is left on the path.
        await this.d.backend.detachVolume(cur.volumeId);
        await this.forgetCreated(cur, c);
        return;
      }
      if (s.stagingPath !== c.path) {
        throw new CsiError('CSI_ERR_PATH_NOT_FOUND', `volume ${volumeId} is staged at ${s.stagingPath}, not ${c.path}`);
      }
      const published = Object.keys(cur.publish);
      if (published.length > 0) {
        throw new CsiError('CSI_ERR_IN_USE', `volume ${volumeId} is still published at ${published.join(', ')}`);
      }
      if (s.accessType === 'mount' && (await this.paths.inspectIfPresent(c)) !== null) {
        await this.unmountOurs(cur, c, 'mount', true);
      }
      await this.d.backend.detachVolume(cur.volumeId);
      const next = { ...cur, stage: null };
      await this.d.state.putVolume(next);
      await this.forgetCreated(next, c);
    });
  }

  async publish(input: PublishInput): Promise<void> {
    const rec = this.volume(input.volumeId);
    const accessType = this.checkCapability(rec, input.capability);
    const mode = accessModeOf(input.capability);
    const readOnly = input.readOnly || isReadOnlyMode(mode);
    const c = this.confineForMount('target_path', input.targetPath, rec.volumeId, 'publish');
    const sc = this.paths.confine('staging_target_path', input.stagingPath);
    if (accessType === 'mount') checkMountFlags(input.capability.mount?.mount_flags, readOnly);
    await this.d.locks.run('NodePublishVolume', [volumeKey(rec.volumeId)], async () => {
      const cur = this.volume(input.volumeId);
      const s = cur.stage;
      if (!s || s.stagingPath !== sc.path) {
        throw new CsiError(
          'CSI_ERR_NOT_STAGED',
          `volume ${cur.volumeId} is not staged at ${sc.path}${s ? ` (it is staged at ${s.stagingPath})` : ''}`,
        );
      }
      if (s.accessType !== accessType) {
        throw new CsiError(
          'CSI_ERR_CAPABILITY_MISMATCH',
          `volume ${cur.volumeId} is staged for ${s.accessType} access`,
        );
      }
      const existing = cur.publish[c.path];
      if (existing) {
        if (existing.readOnly !== readOnly || existing.accessType !== accessType || existing.accessMode !== mode) {
          throw new CsiError(
            'CSI_ERR_PUBLISH_CONFLICT',
            `volume ${cur.volumeId} is published at ${c.path} with other options (readOnly=${existing.readOnly}, ${existing.accessMode})`,
          );
        }
        if (await this.ourMountAt(cur, c, accessType)) return;
      }
      const others = Object.values(cur.publish).filter((p) => p.targetPath !== c.path);
      const single = others.find((p) => p.accessMode === 'SINGLE_NODE_SINGLE_WRITER');
      if ((mode === 'SINGLE_NODE_SINGLE_WRITER' && others.length > 0) || single) {
        throw new CsiError(
          'CSI_ERR_SINGLE_WRITER',
          `volume ${cur.volumeId} is published at ${(single ?? others[0])!.targetPath} and SINGLE_NODE_SINGLE_WRITER allows one target`,
        );
      }
      const kind = accessType === 'mount' ? 'dir' : 'file';
      const { created } = await this.paths.ensure(c, kind, () => this.ourMountAt(cur, c, accessType));
      try {
        if (!(await this.ourMountAt(cur, c, accessType))) {
          const ro = { remountReadOnly: readOnly };
          if (accessType === 'mount') {
            if (!(await this.ourMountAt(cur, sc, 'mount'))) {
              throw new CsiError('CSI_ERR_NOT_STAGED', `${sc.path} is not staged (the volume is not mounted there)`);
            }
            await this.paths.mount(c, 'dir', { path: sc }, ['--bind'], ro);
          } else {
            await this.paths.mount(c, 'file', { device: s.device }, ['--bind'], ro);
          }
        }
      } catch (err) {
        if (created) await this.removeQuietly(cur.volumeId, c, created);
        throw err;
      }
      const p: PublishRecord = { targetPath: c.path, readOnly, accessType, accessMode: mode };
      await this.d.state.putVolume({
        ...cur,
        publish: { ...cur.publish, [c.path]: p },
        createdPaths: withCreated(cur, c.path, created),
      });
    });
  }

  /**
   * NodeUnpublishVolume: unmounts what of this volume is mounted at the target and removes the target if this
   * plugin created it. OK when the target is gone; an unknown target is left as it is (nothing deleted). When
   * the target the plugin created holds files written while nothing was mounted there, the volume is
   * unpublished but the target stays and the call fails with FAILED_PRECONDITION naming them.
   */
  async unpublish(volumeId: string, targetPath: string): Promise<void> {
    const rec = this.volume(volumeId);
    const c = this.paths.confine('target_path', targetPath);
    await this.d.locks.run('NodeUnpublishVolume', [volumeKey(volumeId)], async () => {
      const cur = this.volume(rec.volumeId);
      const pub = cur.publish[c.path];
      const entry = await this.paths.inspectIfPresent(c);
      if (entry !== null) {
        const kind = pub?.accessType ?? (entry.kind === 'block' ? 'block' : 'mount');
        await this.unmountOurs(cur, c, kind, pub !== undefined);
      }
      const rest = { ...cur.publish };
      delete rest[c.path];
      const next = { ...cur, publish: rest };
      if (pub) await this.d.state.putVolume(next);
      await this.forgetCreated(next, c);
    });
  }

  async stats(volumeId: string, volumePath: string): Promise<VolumeStats> {
    const rec = this.volume(volumeId);
    // The path must be one where the volume is staged or published (confined then); others are NOT_FOUND.
    const kind = this.pathKind(rec, volumePath);
    const condition = await this.d.backend.condition(volumeId);
    if (kind === 'block') {
      // A raw device has no file system to ask: used is what the engine holds for it (written, not discarded).
      const size = rec.capacityBytes;
      const used =
        condition.abnormal && this.d.backend.backing(volumeId) === undefined
          ? 0
          : this.d.backend.liveUsedBytes(volumeId);
      return { bytes: { total: size, used, available: Math.max(0, size - used) }, inodes: null, condition };
    }
    let st;
    try {
      st = await this.paths.usage(this.paths.confine('volume_path', volumePath));
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
    // Paths are compared with the records (staged or published there, confined then); nothing else is touched.
    const volumePath = input.volumePath;
    const stagingPath = input.stagingPath ?? '';
    const kind = this.pathKind(rec, volumePath);
    if (input.capability) {
      const t = this.checkCapability(rec, input.capability);
      if (t !== kind) {
        throw new CsiError(
          'CSI_ERR_CAPABILITY_MISMATCH',
          `volume ${rec.volumeId} is used for ${kind} access at ${volumePath}, not ${t}`,
        );
      }
    }
    return this.d.locks.run('NodeExpandVolume', [volumeKey(rec.volumeId)], async () => {
      const cur = this.volume(rec.volumeId);
      const s = cur.stage;
      if (!s) throw new CsiError('CSI_ERR_NOT_STAGED', `volume ${cur.volumeId} is not staged`);
      if (stagingPath && stagingPath !== s.stagingPath) {
        throw new CsiError(
          'CSI_ERR_PATH_NOT_FOUND',
          `volume ${cur.volumeId} is staged at ${s.stagingPath}, not ${stagingPath}`,
        );
      }
      if ((input.requiredBytes ?? 0n) > BigInt(cur.capacityBytes)) {
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
        await this.unmountRecorded('target_path', p.targetPath).catch((err: unknown) =>
          this.d.log.warn({ err, volumeId: rec.volumeId, targetPath: p.targetPath }, 'Failed to unmount at shutdown'),
        );
      }
      if (rec.stage?.accessType === 'mount') {
        await this.unmountRecorded('staging_target_path', rec.stage.stagingPath).catch((err: unknown) =>
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
    await this.paths.close();
    return { volumes: done };
  }

  /** Calls on staging/target paths abandoned after their timeout that are still in the kernel. */
  stuckPathCalls(): number {
    return this.paths.stuckCalls();
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

  /**
   * Lexical confinement of a path to stage or publish on, plus: not in, above or at a path where this plugin
   * stages or publishes a volume, other than the same volume's own path in the same role (a repeated call).
   */
  private confineForMount(field: string, raw: string, volumeId: string, role: 'stage' | 'publish'): ConfinedPath {
    const c = this.paths.confine(field, raw);
    for (const v of this.d.state.volumes()) {
      const used: Array<[string, 'stage' | 'publish']> = [
        ...(v.stage ? [[v.stage.stagingPath, 'stage'] as [string, 'stage']] : []),
        ...Object.keys(v.publish).map((t) => [t, 'publish'] as [string, 'publish']),
      ];
      for (const [p, r] of used) {
        if (p === c.path && v.volumeId === volumeId && r === role) continue;
        if (isWithin(c.path, p) || isWithin(p, c.path)) {
          const how = p === c.path ? 'is' : isWithin(c.path, p) ? 'lies inside' : 'contains';
          throw new CsiError(
            'CSI_ERR_PATH_NOT_ALLOWED',
            `${field} ${JSON.stringify(c.path)} ${how} ${r === 'stage' ? 'the staging path' : 'a target path'} ${p} of volume ${v.volumeId}`,
            { details: { field, path: c.path, volumeId: v.volumeId } },
          );
        }
      }
    }
    return c;
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

  /** Formats the device when empty (never when read-only) and mounts it on the staging directory `c`. */
  private async stageMount(
    cur: VolumeRecord,
    c: ConfinedPath,
    loop: LoopDevice,
    fsType: FsType,
    options: readonly string[],
    readOnly: boolean,
  ): Promise<void> {
    if (!readOnly && fsType === 'ext4' && (await probeFsType(loop.device)) === 'ext4') {
      if (await growExt4Offline(loop.device)) {
        this.d.log.info({ volumeId: cur.volumeId, device: loop.device }, 'Grew file system to the volume size');
      }
    }
    let formatted = false;
    if (!readOnly) formatted = (await formatIfNeeded(loop.device, fsType)).formatted;
    else {
      // A read-only stage never formats: say so instead of mount(8)'s "wrong fs type, bad superblock".
      const existing = await probeFsType(loop.device);
      if (existing === undefined) {
        throw new CsiError(
          'CSI_ERR_CAPABILITY_MISMATCH',
          `volume ${cur.volumeId} holds no file system yet, and a read-only stage does not format it: stage it writable first`,
        );
      }
      if (existing !== fsType) {
        throw new CsiError(
          'CSI_ERR_CAPABILITY_MISMATCH',
          `volume ${cur.volumeId} holds ${existing}, not ${fsType}; a read-only stage mounts what is there`,
        );
      }
    }
    if (formatted) this.d.log.info({ volumeId: cur.volumeId, device: loop.device, fsType }, 'Formatted volume');
    const top = (await mountsAt(c.path)).at(-1);
    if (top && !(top.major === loop.major && top.minor === loop.minor)) {
      throw new CsiError(
        'CSI_ERR_TARGET_IN_THE_WAY',
        `staging_target_path ${JSON.stringify(c.path)} is already a mount point of ${top.source}`,
      );
    }
    if (!top) {
      const o = [...(readOnly ? ['ro'] : []), ...options];
      // A frozen cut is consistent in place; a read-only xfs mount must not (and cannot) replay the log.
      if (fsType === 'xfs' && readOnly && !o.includes('norecovery')) o.push('norecovery');
      try {
        await this.paths.mount(c, 'dir', { device: loop.device }, [
          '-t',
          fsType,
          ...(o.length ? ['-o', o.join(',')] : []),
        ]);
      } catch (err) {
        throw (await this.refusedFlags(fsType, loop.device, o, readOnly, options)) ?? err;
      }
    }
    if (!formatted && !readOnly && fsType === 'xfs') await growMounted('xfs', loop.device, c.path);
  }

  /**
   * After a failed mount with mount flags: whether the flags together are what the file system refused (the
   * same superblock builds without them), as INVALID_ARGUMENT with the kernel's words; undefined otherwise.
   */
  private async refusedFlags(
    fsType: string,
    device: string,
    all: readonly string[],
    readOnly: boolean,
    flags: readonly string[],
  ): Promise<CsiError | undefined> {
    if (flags.length === 0) return undefined;
    const withFlags = await this.paths.checkFsOptionsOnDevice(fsType, device, all).catch(() => null);
    if (withFlags === null || withFlags.errno !== EINVAL) return undefined;
    const base = all.filter((o) => !flags.includes(o) || (readOnly && o === 'ro'));
    const without = await this.paths.checkFsOptionsOnDevice(fsType, device, base).catch(() => withFlags);
    if (without !== null) return undefined;
    return new CsiError(
      'CSI_ERR_BAD_MOUNT_FLAGS',
      `mount flags ${JSON.stringify(flags)} are refused together by ${fsType}: ${withFlags.reason}`,
      { details: { flags: flags.join(','), fsType } },
    );
  }

  /**
   * Whether the top mount at `c` is this volume's: its loop device mounted (a file system, or a bind of the
   * staging mount) or, for raw block, a bind of its device node.
   */
  private async ourMountAt(rec: VolumeRecord, c: ConfinedPath, kind: 'mount' | 'block'): Promise<boolean> {
    const top = (await mountsAt(c.path)).at(-1);
    if (!top) return false;
    const loop = await this.d.backend.attachedDevice(rec.volumeId);
    if (!loop) return false;
    if (kind === 'mount') return top.major === loop.major && top.minor === loop.minor;
    const m = await this.paths.mounted(c, 'block').catch(() => undefined);
    return m !== undefined && m.stat.rdev === String(makedev(loop.major, loop.minor));
  }

  /**
   * Unmounts the mounts of this volume stacked at `c`. A mount that is not the volume's stays; when the record
   * says the volume is there (`recorded`) and its loop device is gone, the record is trusted.
   */
  private async unmountOurs(
    rec: VolumeRecord,
    c: ConfinedPath,
    kind: 'mount' | 'block',
    recorded: boolean,
  ): Promise<void> {
    for (let i = 0; i < 16; i++) {
      const mounts = await mountsAt(c.path);
      if (mounts.length === 0) return;
      const loop = await this.d.backend.attachedDevice(rec.volumeId);
      const ours = (await this.ourMountAt(rec, c, kind)) || (recorded && loop === undefined);
      if (!ours) {
        if (!recorded) return; // not the volume's: an unknown target is left as it is
        throw new CsiError(
          'CSI_ERR_IN_USE',
          `${c.field} ${JSON.stringify(c.path)}: ${mounts.at(-1)!.source} is mounted over volume ${rec.volumeId}; unmount it first`,
        );
      }
      await this.paths.unmountTop(c);
    }
    throw new CsiError('CSI_ERR_INTERNAL', `${c.path} is still mounted after 16 unmounts`);
  }

  /**
   * Removes the entry at `c` when the volume's record says the plugin created it, and drops it from the
   * record. Content written into it is kept: CSI_ERR_TARGET_NOT_EMPTY (FAILED_PRECONDITION) names it.
   */
  private async forgetCreated(rec: VolumeRecord, c: ConfinedPath): Promise<void> {
    const created = rec.createdPaths?.[c.path];
    if (!created) return;
    const r = await this.paths.removeCreated(c, created);
    if (r.outcome === 'not-empty') {
      const what = r.listing ? `a directory with ${describeListing(r.listing)}` : `a file of ${r.size} bytes`;
      throw new CsiError(
        'CSI_ERR_TARGET_NOT_EMPTY',
        `volume ${rec.volumeId} is unmounted from ${c.field} ${JSON.stringify(c.path)}, which the node plugin created and would remove, but it is now ${what}, written while the volume was not mounted there; they are kept: move them away and call again`,
        { details: { field: c.field, path: c.path } },
      );
    }
    const rest = { ...(rec.createdPaths ?? {}) };
    delete rest[c.path];
    await this.d.state.putVolume({ ...(this.d.state.volume(rec.volumeId) ?? rec), createdPaths: rest });
  }

  private async removeQuietly(volumeId: string, c: ConfinedPath, created: CreatedPathRecord): Promise<void> {
    await this.paths.removeCreated(c, created).catch((err: unknown) => {
      this.d.log.warn({ err, volumeId, path: c.path }, 'Failed to remove a path created for a failed call');
    });
  }

  /** Lazy unmount of a recorded path (shutdown); a path recorded before confinement existed goes by name. */
  private async unmountRecorded(field: string, path: string): Promise<void> {
    let c: ConfinedPath;
    try {
      c = this.paths.confine(field, path);
    } catch {
      await unmount(path, { lazy: true });
      return;
    }
    for (let i = 0; i < 16 && (await mountsAt(c.path)).length > 0; i++) await this.paths.unmountTop(c, { lazy: true });
  }
}

function withCreated(
  rec: VolumeRecord,
  path: string,
  created: CreatedPathRecord | null,
): Readonly<Record<string, CreatedPathRecord>> | undefined {
  if (!created) return rec.createdPaths;
  return { ...(rec.createdPaths ?? {}), [path]: created };
}

/** glibc's makedev: the dev_t of major:minor, as stat reports st_rdev. */
export function makedev(major: number, minor: number): bigint {
  const ma = BigInt(major);
  const mi = BigInt(minor);
  return (mi & 0xffn) | ((ma & 0xfffn) << 8n) | ((mi & ~0xffn) << 12n) | ((ma & ~0xfffn) << 32n);
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
