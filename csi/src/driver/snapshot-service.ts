// SPDX-License-Identifier: Apache-2.0
// Snapshot operations: create (the cut, frozen when the volume's file system is mounted), delete, list, get.
// A `save-volume` or `meta-bitmap` snapshot is an entry in its source volume's engine queue, tagged with the
// CSI snapshot id; the record (phase creating -> ready) makes the pair crash-safe: recovery.ts completes a
// `creating` record whose tagged engine snapshot exists and drops it otherwise. A `clone` snapshot is a hidden
// cut plus an image volume of its own filled in the background (readyToUse false until the copy ends); the
// image outlives the source volume, and volumes created from it are thin clones of it.
// Delete is deferred in the engine while thin clones (or a running restore) still read the snapshot: the
// record goes at once, the engine entry goes with its last dependant (EC-8, ADR 0008).
import { CsiError } from '../errors.js';
import { isSnapshotId, isVolumeId, newSnapshotId } from '../state/ids.js';
import { RECORD_VERSION, type SnapshotRecord } from '../state/records.js';
import type { DriverContext } from './context.js';
import { snapshotKey, snapshotNameKey, volumeKey } from './locks.js';
import { type Page, paginate } from './pagination.js';
import { parseSnapshotParameters, persistedParameters } from './parameters.js';
import { settleCreatingSnapshot } from './recovery.js';

export interface CreateSnapshotInput {
  readonly name: string;
  readonly sourceVolumeId: string;
  readonly parameters: Record<string, string>;
}

export interface ListSnapshotsInput {
  readonly snapshotId: string;
  readonly sourceVolumeId: string;
  readonly maxEntries: number;
  readonly startingToken: string;
}

export class SnapshotService {
  constructor(private readonly d: DriverContext) {}

  async create(input: CreateSnapshotInput): Promise<SnapshotRecord> {
    const { method } = parseSnapshotParameters(input.parameters);
    if (method === 'clone' && !this.d.backend.features.cloneImages) {
      throw new CsiError('CSI_ERR_UNIMPLEMENTED', 'snapshot method "clone" is not available on this node');
    }
    return this.d.locks.run('CreateSnapshot', [snapshotNameKey(input.name)], async () => {
      let existing = this.d.state.snapshotByName(input.name);
      if (existing?.phase === 'creating' && existing.sourceVolumeId === input.sourceVolumeId) {
        // An earlier cut whose record update failed: complete it from the engine, or drop it and cut anew.
        existing = (await settleCreatingSnapshot(this.d, existing)) ? this.get(existing.snapshotId) : undefined;
      }
      if (existing) {
        if (existing.sourceVolumeId !== input.sourceVolumeId || existing.method !== method) {
          throw new CsiError(
            'CSI_ERR_NAME_CONFLICT',
            `snapshot ${JSON.stringify(input.name)} already exists as ${existing.snapshotId} of volume ${existing.sourceVolumeId} (method ${existing.method})`,
          );
        }
        if (existing.phase !== 'ready') {
          throw new CsiError('CSI_ERR_BUSY', `snapshot ${existing.snapshotId} is ${existing.phase}; retry`);
        }
        return existing;
      }
      const vol = this.d.state.volume(input.sourceVolumeId);
      if (!vol || vol.phase !== 'ready') {
        throw new CsiError('CSI_ERR_VOLUME_NOT_FOUND', `source volume ${input.sourceVolumeId} does not exist`);
      }
      return this.d.locks.run('CreateSnapshot', [volumeKey(vol.volumeId)], () => this.cut(input, method));
    });
  }

  /** Deletes a snapshot; success when it does not exist. */
  async delete(snapshotId: string): Promise<void> {
    const rec = this.d.state.snapshot(snapshotId);
    if (!rec) return;
    await this.d.locks.run('DeleteSnapshot', [snapshotKey(snapshotId), volumeKey(rec.sourceVolumeId)], async () => {
      const cur = this.d.state.snapshot(snapshotId);
      if (!cur) return;
      const users = this.d.state
        .volumes()
        .filter(
          (v) =>
            v.origin.kind === 'rw-clone' &&
            (v.origin.image === true
              ? v.origin.baseVolumeId === cur.snapshotId
              : v.origin.baseVolumeId === cur.sourceVolumeId && v.origin.engineSnapshotId === cur.engineSnapshotId),
        )
        .map((v) => v.volumeId);
      await this.d.state.putSnapshot({ ...cur, phase: 'deleting' });
      await deleteEngineSnapshot(this.d, cur);
      await this.d.state.removeSnapshot(snapshotId);
      this.d.log.info(
        {
          snapshotId,
          sourceVolumeId: cur.sourceVolumeId,
          name: cur.name,
          ...(users.length > 0 ? { thinClones: users } : {}),
        },
        users.length > 0
          ? 'Deleted snapshot; its data stays until the volumes made from it are deleted or hydrated'
          : 'Deleted snapshot',
      );
    });
  }

  /** The ready record of `snapshotId` (readyToUse as the engine sees it now); NOT_FOUND otherwise. */
  get(snapshotId: string): SnapshotRecord {
    const rec = isSnapshotId(snapshotId) ? this.d.state.snapshot(snapshotId) : undefined;
    if (!rec || rec.phase !== 'ready') {
      throw new CsiError('CSI_ERR_SNAPSHOT_NOT_FOUND', `snapshot ${snapshotId} does not exist`, {
        details: { snapshotId },
      });
    }
    return this.effective(rec);
  }

  /**
   * A snapshot that lost before-images when its volume's save pool was full (EC-5) can no longer be read:
   * it is reported with readyToUse = false (and restores from it fail with FAILED_PRECONDITION).
   */
  private effective(rec: SnapshotRecord): SnapshotRecord {
    if (rec.method === 'clone') {
      const ready = this.d.backend.imageState(rec.snapshotId).state === 'ready';
      return ready === rec.readyToUse ? rec : { ...rec, readyToUse: ready };
    }
    if (!rec.readyToUse) return rec;
    const engine = this.d.backend.getSnapshot(rec.sourceVolumeId, rec.engineSnapshotId);
    return engine === undefined || engine.state === 'invalid' ? { ...rec, readyToUse: false } : rec;
  }

  list(input: ListSnapshotsInput): Page<SnapshotRecord> {
    let items = this.d.state.snapshots().filter((s) => s.phase === 'ready');
    if (input.snapshotId !== '') items = items.filter((s) => s.snapshotId === input.snapshotId);
    if (input.sourceVolumeId !== '') items = items.filter((s) => s.sourceVolumeId === input.sourceVolumeId);
    const page = paginate(items, (s) => s.snapshotId, {
      maxEntries: input.maxEntries,
      startingToken: input.startingToken,
      validToken: isSnapshotId,
    });
    return { ...page, entries: page.entries.map((s) => this.effective(s)) };
  }

  private async cut(
    input: CreateSnapshotInput,
    method: 'save-volume' | 'meta-bitmap' | 'clone',
  ): Promise<SnapshotRecord> {
    const vol = this.d.state.volume(input.sourceVolumeId);
    if (!vol || !isVolumeId(vol.volumeId)) {
      throw new CsiError('CSI_ERR_VOLUME_NOT_FOUND', `source volume ${input.sourceVolumeId} does not exist`);
    }
    const restoring = this.d.backend.restoreState(vol.volumeId);
    if (restoring !== undefined) {
      // The engine cuts no snapshot while an in-place restore copies; ABORTED makes callers retry.
      throw new CsiError(
        'CSI_ERR_BUSY',
        `an in-place restore of volume ${vol.volumeId} is copying in the background (${restoring.doneBytes} of ${restoring.totalBytes} bytes); the snapshot can be cut once it completes, retry`,
      );
    }
    const rec: SnapshotRecord = {
      version: RECORD_VERSION,
      snapshotId: newSnapshotId(),
      name: input.name,
      sourceVolumeId: vol.volumeId,
      method,
      engineSnapshotId: -1,
      sizeBytes: vol.capacityBytes,
      createdAt: Date.now(),
      readyToUse: false,
      parameters: persistedParameters(input.parameters),
      phase: 'creating',
    };
    await this.d.state.putSnapshot(rec);
    const mountpoint = vol.stage?.accessType === 'mount' ? vol.stage.stagingPath : undefined;
    let ready: SnapshotRecord;
    try {
      const mp = mountpoint === undefined ? {} : { mountpoint };
      if (method === 'clone') {
        const cut = await this.d.backend.createImage(rec.snapshotId, vol.volumeId, mp);
        const done = this.d.backend.imageState(rec.snapshotId).state === 'ready';
        ready = { ...rec, ...cut, readyToUse: done, phase: 'ready' };
      } else {
        const snap = await this.d.backend.createSnapshot(vol.volumeId, { method, tag: rec.snapshotId, ...mp });
        ready = {
          ...rec,
          engineSnapshotId: snap.engineSnapshotId,
          sizeBytes: snap.sizeBytes,
          createdAt: snap.createdAt,
          readyToUse: true,
          phase: 'ready',
        };
      }
    } catch (err) {
      if (method === 'clone') await this.d.backend.deleteImage(rec.snapshotId).catch(() => undefined);
      await this.d.state.removeSnapshot(rec.snapshotId).catch((e: unknown) => {
        this.d.log.error({ err: e, snapshotId: rec.snapshotId }, 'Failed to remove the record of a failed snapshot');
      });
      throw err;
    }
    await this.d.state.putSnapshot(ready);
    this.d.log.info(
      { snapshotId: ready.snapshotId, sourceVolumeId: vol.volumeId, method, frozen: mountpoint !== undefined },
      'Created snapshot',
    );
    return ready;
  }
}

/** Deletes what backs a snapshot record in the engine (deferred while thin clones read it). */
export async function deleteEngineSnapshot(d: DriverContext, rec: SnapshotRecord): Promise<void> {
  if (rec.method === 'clone') {
    await d.backend.deleteImage(rec.snapshotId);
    return;
  }
  if (rec.engineSnapshotId >= 0) await d.backend.deleteSnapshot(rec.sourceVolumeId, rec.engineSnapshotId);
}
