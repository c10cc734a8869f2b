// SPDX-License-Identifier: Apache-2.0
// Driver-level entry points of the engine's online in-place restore (OP-13) and refresh (OP-10), for the
// node agent (csi/src/agent, VolumeRestore/VolumeRefresh of issue 8). Each takes the volume's operation lock
// for the call (other calls on the volume get ABORTED meanwhile); the restore's copy then runs in the
// background under the backend's job scheduler, survives restarts, and reports progress here and in
// loopsnap_background_job_progress_ratio{kind="restore",id=<volumeId>}.
//
//   startRestore  volume V (a volume of its own) from a snapshot of V or from one of V's thin clones. Reads
//                 return the source's content as soon as the call returns; writes go on (restore-before-write).
//                 With keepRestorePoint, V's content before the restore is first kept as a normal CSI
//                 snapshot (frozen when mounted), the undo point. A mounted file system must not see its
//                 blocks change under its caches: a volume staged with a file system is refused (unstage, start,
//                 stage again at once); a raw block volume may stay staged: the kernel's buffer cache of its
//                 loop device is written back before the switch and dropped after it (BLKFLSBUF), so buffered
//                 readers of the device see the source too.
//   refresh       thin clone V (made from a snapshot or a volume) onto another snapshot of its base volume, or
//                 onto a fresh cut of that volume (`fromSource`): V keeps its id and handle, its content is
//                 replaced at once, its own changes are dropped. Only while V is not staged.
// Neither converts across volumes: a snapshot of another engine volume (a lineage ancestor of a hydrated or
// copied volume) is refused with CSI_ERR_INVALID_FIELD; the agent keeps its copy mode for that case.
// `{ locked: true }`: the caller (the node agent) already holds the volume's and the source's operation locks
// for the call; the checks then run under its locks instead of taking them.
import { CsiError } from '../errors.js';
import type { RestoreOrder } from '../engine/volume.js';
import { run } from '../mount/exec.js';
import type { SnapshotRecord, VolumeRecord } from '../state/records.js';
import type { DriverContext } from './context.js';
import { snapshotKey, volumeKey } from './locks.js';
import type { SnapshotService } from './snapshot-service.js';

export interface StartRestoreInput {
  readonly volumeId: string;
  /** A snapshot of the volume itself, or a thin clone of it. */
  readonly source: { readonly snapshotId: string } | { readonly volumeId: string };
  /** Copy order of claims 14/15; default new-then-old. */
  readonly order?: RestoreOrder;
  /** Keep the volume's pre-restore content as a CSI snapshot with this name (idempotent by name). */
  readonly keepRestorePoint?: { readonly name: string };
}

export interface RestoreProgress {
  readonly volumeId: string;
  /** True while the background copy runs; the volume already reads the restored content. */
  readonly running: boolean;
  readonly doneBytes: number;
  readonly totalBytes: number;
  /** The CSI snapshot holding the pre-restore content, when one was kept. */
  readonly restorePointSnapshotId?: string;
}

export interface LockOptions {
  /** The caller holds the volume's (and the source's) operation locks for the whole call. */
  readonly locked?: boolean;
}

export interface RefreshInput {
  readonly volumeId: string;
  readonly target: { readonly snapshotId: string } | { readonly fromSource: true };
}

export class RestoreService {
  constructor(
    private readonly d: DriverContext,
    private readonly snapshots: SnapshotService,
  ) {}

  /** Starts an online in-place restore; see the file comment. Resolves once reads see the source. */
  async startRestore(input: StartRestoreInput, opts: LockOptions = {}): Promise<RestoreProgress> {
    const vol = this.volume(input.volumeId);
    this.checkRestoreTarget(vol);
    const source = this.resolveSource(vol, input.source);
    let restorePoint: SnapshotRecord | undefined;
    if (input.keepRestorePoint !== undefined) {
      if (opts.locked === true) {
        throw new CsiError('CSI_ERR_INVALID_FIELD', 'keepRestorePoint needs the volume lock: cut it before taking it');
      }
      restorePoint = await this.snapshots.create({
        name: input.keepRestorePoint.name,
        sourceVolumeId: vol.volumeId,
        parameters: {},
      });
    }
    const keys = [volumeKey(vol.volumeId)];
    if ('snapshotId' in input.source) keys.push(snapshotKey(input.source.snapshotId));
    else keys.push(volumeKey(input.source.volumeId));
    await this.underLocks('StartRestore', keys, opts, async () => {
      const cur = this.volume(input.volumeId);
      this.checkRestoreTarget(cur);
      // A raw block volume may be in use: write the kernel's dirty pages of its device back before the switch
      // (they are older than the restore) and drop its cached pages after it (they hold the old content).
      const device = cur.stage?.accessType === 'block' ? await this.d.backend.attachedDevice(vol.volumeId) : undefined;
      if (device !== undefined) await flushDeviceBuffers(device.device);
      await this.d.backend.startRestore(vol.volumeId, source, input.order);
      if (device !== undefined) {
        await flushDeviceBuffers(device.device).catch((err: unknown) =>
          this.d.log.error(
            { err, volumeId: vol.volumeId, device: device.device },
            'Failed to drop the buffer cache of a staged block volume after the restore switch; buffered readers may see old data until it is reopened',
          ),
        );
      }
    });
    this.d.log.info(
      { volumeId: vol.volumeId, source: input.source, restorePoint: restorePoint?.snapshotId },
      'Started online in-place restore',
    );
    return {
      ...this.progress(vol.volumeId),
      ...(restorePoint === undefined ? {} : { restorePointSnapshotId: restorePoint.snapshotId }),
    };
  }

  /** Progress of the volume's in-place restore (running false once the copy ended, or when none ran). */
  progress(volumeId: string): RestoreProgress {
    this.volume(volumeId);
    const st = this.d.backend.restoreState(volumeId);
    return { volumeId, running: st !== undefined, doneBytes: st?.doneBytes ?? 0, totalBytes: st?.totalBytes ?? 0 };
  }

  /** OP-10 for a thin clone; see the file comment. Returns the updated volume record. */
  async refresh(input: RefreshInput, opts: LockOptions = {}): Promise<VolumeRecord> {
    const keys = [volumeKey(input.volumeId)];
    if ('snapshotId' in input.target) keys.push(snapshotKey(input.target.snapshotId));
    return this.underLocks('RefreshVolume', keys, opts, async () => {
      const vol = this.volume(input.volumeId);
      const origin = vol.origin;
      if (origin.kind !== 'rw-clone' || origin.image === true || this.d.backend.backing(vol.volumeId) !== 'rw') {
        throw new CsiError(
          'CSI_ERR_THIN_CLONE',
          `volume ${vol.volumeId} is not a thin clone of a volume (origin ${origin.kind}${this.d.backend.backing(vol.volumeId) === 'hydrating' ? ', hydrating' : ''}); only those can be refreshed`,
        );
      }
      if (vol.stage) {
        throw new CsiError(
          'CSI_ERR_IN_USE',
          `volume ${vol.volumeId} is staged at ${vol.stage.stagingPath}; unstage it before a refresh replaces its content`,
        );
      }
      let target: { engineSnapshotId: number } | 'new';
      let mountpoint: string | undefined;
      if ('snapshotId' in input.target) {
        const snap = this.snapshot(input.target.snapshotId);
        if (snap.method === 'clone' || snap.sourceVolumeId !== origin.baseVolumeId) {
          throw new CsiError(
            'CSI_ERR_INVALID_FIELD',
            `snapshot ${snap.snapshotId} is not a ${snap.method === 'clone' ? 'save-volume or meta-bitmap snapshot' : 'snapshot'} of volume ${origin.baseVolumeId}, which volume ${vol.volumeId} is a thin clone of`,
          );
        }
        target = { engineSnapshotId: snap.engineSnapshotId };
      } else {
        const base = this.d.state.volume(origin.baseVolumeId);
        if (!base || base.phase !== 'ready') {
          throw new CsiError(
            'CSI_ERR_SOURCE_NOT_FOUND',
            `volume ${origin.baseVolumeId}, which volume ${vol.volumeId} was made from, was deleted; refresh onto one of its snapshots instead`,
          );
        }
        target = 'new';
        mountpoint = base.stage?.accessType === 'mount' ? base.stage.stagingPath : undefined;
      }
      const r = await this.d.backend.refreshVolume(
        vol.volumeId,
        target,
        mountpoint === undefined ? {} : { mountpoint },
      );
      const next: VolumeRecord = {
        ...vol,
        origin: { kind: 'rw-clone', baseVolumeId: r.baseVolumeId, engineSnapshotId: r.engineSnapshotId },
      };
      await this.d.state.putVolume(next);
      this.d.log.info({ volumeId: vol.volumeId, target: input.target }, 'Refreshed volume');
      return next;
    });
  }

  private underLocks<T>(operation: string, keys: string[], opts: LockOptions, fn: () => Promise<T>): Promise<T> {
    if (opts.locked !== true) return this.d.locks.run(operation, keys, fn);
    const free = keys.find((k) => !this.d.locks.isHeld(k));
    if (free !== undefined) {
      throw new CsiError('CSI_ERR_BUSY', `${operation} called as locked, but nothing holds ${free}`);
    }
    return fn();
  }

  private volume(volumeId: string): VolumeRecord {
    const rec = this.d.state.volume(volumeId);
    if (!rec || rec.phase !== 'ready') {
      throw new CsiError('CSI_ERR_VOLUME_NOT_FOUND', `volume ${volumeId} does not exist`, { details: { volumeId } });
    }
    return rec;
  }

  private snapshot(snapshotId: string): SnapshotRecord {
    const snap = this.d.state.snapshot(snapshotId);
    if (!snap || snap.phase !== 'ready') {
      throw new CsiError('CSI_ERR_SOURCE_NOT_FOUND', `snapshot ${snapshotId} does not exist`);
    }
    return snap;
  }

  private checkRestoreTarget(vol: VolumeRecord): void {
    const backing = this.d.backend.backing(vol.volumeId);
    if (backing !== 'volume') {
      throw new CsiError(
        'CSI_ERR_THIN_CLONE',
        `volume ${vol.volumeId} is a thin clone${backing === 'hydrating' ? ' being hydrated' : ''}; refresh it onto the snapshot instead of restoring it in place`,
      );
    }
    if (vol.stage?.accessType === 'mount') {
      throw new CsiError(
        'CSI_ERR_IN_USE',
        `volume ${vol.volumeId} is staged with a mounted file system at ${vol.stage.stagingPath}; unstage it, start the restore, then stage it again (it reads the restored content at once)`,
      );
    }
    if (this.d.backend.restoreState(vol.volumeId) !== undefined) {
      throw new CsiError('CSI_ERR_BUSY', `an in-place restore of volume ${vol.volumeId} is still copying`);
    }
  }

  private resolveSource(
    vol: VolumeRecord,
    source: StartRestoreInput['source'],
  ): { engineSnapshotId: number } | { rwCloneVolumeId: string } {
    if ('snapshotId' in source) {
      const snap = this.snapshot(source.snapshotId);
      if (snap.method === 'clone' || snap.sourceVolumeId !== vol.volumeId) {
        throw new CsiError(
          'CSI_ERR_INVALID_FIELD',
          `snapshot ${snap.snapshotId} is ${snap.method === 'clone' ? 'a clone-method image' : `of volume ${snap.sourceVolumeId}`}; an online in-place restore needs a save-volume or meta-bitmap snapshot of volume ${vol.volumeId} itself`,
        );
      }
      const engine = this.d.backend.getSnapshot(vol.volumeId, snap.engineSnapshotId);
      if (!snap.readyToUse || engine?.state !== 'valid') {
        throw new CsiError('CSI_ERR_NOT_READY', `snapshot ${snap.snapshotId} is not ready to use`);
      }
      return { engineSnapshotId: snap.engineSnapshotId };
    }
    const rw = this.volume(source.volumeId);
    if (rw.origin.kind !== 'rw-clone' || rw.origin.baseVolumeId !== vol.volumeId || rw.origin.image === true) {
      throw new CsiError(
        'CSI_ERR_INVALID_FIELD',
        `volume ${source.volumeId} is not a thin clone of volume ${vol.volumeId}; restore from one of its snapshots`,
      );
    }
    return { rwCloneVolumeId: source.volumeId };
  }
}

/** BLKFLSBUF on a block device: writes its dirty pages back and drops its clean cached pages. */
async function flushDeviceBuffers(device: string): Promise<void> {
  await run('blockdev', ['--flushbufs', device], { timeoutMs: 60_000 });
}
