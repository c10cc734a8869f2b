// SPDX-License-Identifier: Apache-2.0
// Start-up reconciliation of driver records with the engine, after a crash or kill -9 (records.ts phases):
//   volume   creating -> roll back (delete the engine volume if it was made, drop the record)
//            deleting -> finish the delete
//            ready    -> when the data path was adopted (the keeper kept the FUSE connection, csi/src/keeper/)
//                        and the volume's loop device is still attached, its stage/publish records stand:
//                        the pods never noticed, and NodeStage/NodePublish repeated by the CO are idempotent.
//                        Otherwise stage/publish state is cleared: the data path of the previous process is
//                        gone (Datapath.start removed its loop devices and every mount of them; binds of
//                        block device nodes are unmounted here), so the CO must stage and publish again
//   snapshot creating -> roll forward when the source volume holds an engine snapshot tagged with the id
//                        (the cut completed), else drop the record
//            deleting -> finish the delete
// Engine snapshots tagged `clone-source:<volumeId>` are hidden snapshots of an interrupted interim full-copy
// clone, and `clone-cut:<snapshotId>` ones without a record the cuts of an interrupted clone-method snapshot:
// deleted. Background jobs are caught up: a hydration that ended before its record was updated makes the
// origin `copy`, a thin clone created with `hydrate: "true"` whose hydration never started starts it, a
// clone-method snapshot whose image is complete becomes readyToUse.
// Engine volumes without a record are reported, never deleted (they may be someone's data).
import { thawFs } from '../mount/freeze.js';
import { unmount } from '../mount/mounts.js';
import type { SnapshotRecord } from '../state/records.js';
import { HIDDEN_CLONE_TAG_PREFIX } from './backend.js';
import type { DriverContext } from './context.js';
import { CLONE_CUT_TAG_PREFIX } from './engine-volumes.js';
import { recordHydrates } from './parameters.js';

export interface RecoveryReport {
  readonly volumesRolledBack: string[];
  readonly volumesDeleted: string[];
  readonly volumesUnstaged: string[];
  /** Staged or published volumes whose data path survived the restart (adopted connection). */
  readonly volumesKeptStaged: string[];
  readonly volumesMissingInEngine: string[];
  readonly snapshotsCompleted: string[];
  readonly snapshotsDropped: string[];
  readonly snapshotsDeleted: string[];
  readonly hiddenSnapshotsDeleted: number;
  readonly orphanEngineVolumes: string[];
  readonly hydrationsFinished: string[];
  readonly hydrationsStarted: string[];
  readonly imagesReady: string[];
}

export async function recoverState(d: DriverContext, storedVolumeIds: readonly string[]): Promise<RecoveryReport> {
  const r = {
    volumesRolledBack: [] as string[],
    volumesDeleted: [] as string[],
    volumesUnstaged: [] as string[],
    volumesKeptStaged: [] as string[],
    volumesMissingInEngine: [] as string[],
    snapshotsCompleted: [] as string[],
    snapshotsDropped: [] as string[],
    snapshotsDeleted: [] as string[],
    hiddenSnapshotsDeleted: 0,
    orphanEngineVolumes: [] as string[],
    hydrationsFinished: [] as string[],
    hydrationsStarted: [] as string[],
    imagesReady: [] as string[],
  };
  for (const s of d.state.snapshots()) {
    if (s.phase === 'ready' && s.method === 'clone' && !s.readyToUse) {
      if (d.backend.imageState(s.snapshotId).state === 'ready') {
        await d.state.putSnapshot({ ...s, readyToUse: true });
        r.imagesReady.push(s.snapshotId);
      }
    } else if (s.phase === 'creating') {
      if (await settleCreatingSnapshot(d, s)) r.snapshotsCompleted.push(s.snapshotId);
      else r.snapshotsDropped.push(s.snapshotId);
    } else if (s.phase === 'deleting') {
      if (s.method === 'clone') await d.backend.deleteImage(s.snapshotId);
      else if (s.engineSnapshotId >= 0) await d.backend.deleteSnapshot(s.sourceVolumeId, s.engineSnapshotId);
      await d.state.removeSnapshot(s.snapshotId);
      r.snapshotsDeleted.push(s.snapshotId);
    }
  }
  for (const v of d.state.volumes()) {
    if (v.phase === 'creating' || v.phase === 'deleting') {
      await d.backend.deleteVolume(v.volumeId);
      await d.state.removeVolume(v.volumeId);
      (v.phase === 'creating' ? r.volumesRolledBack : r.volumesDeleted).push(v.volumeId);
      continue;
    }
    if (!d.backend.hasVolume(v.volumeId)) r.volumesMissingInEngine.push(v.volumeId);
    else if (v.origin.kind === 'rw-clone' && d.backend.backing(v.volumeId) === 'volume') {
      await d.state.putVolume({ ...(d.state.volume(v.volumeId) ?? v), origin: { kind: 'copy' } });
      r.hydrationsFinished.push(v.volumeId);
    } else if (v.origin.kind === 'rw-clone' && d.backend.backing(v.volumeId) === 'rw' && recordHydrates(v.parameters)) {
      await d.backend.startHydration(v.volumeId);
      r.hydrationsStarted.push(v.volumeId);
    }
    if (v.stage || Object.keys(v.publish).length > 0) {
      if (d.backend.adopted && (await d.backend.attachedDevice(v.volumeId)) !== undefined) {
        // A cut the predecessor died in left the file system frozen: its writers would wait forever.
        if (v.stage?.accessType === 'mount') {
          await thawFs(v.stage.stagingPath).catch((err: unknown) =>
            d.log.error({ err, volumeId: v.volumeId }, 'Failed to thaw a staged file system'),
          );
        }
        r.volumesKeptStaged.push(v.volumeId);
        continue;
      }
      // Binds of a block device node carry the major:minor of /dev, not of the loop device, so the data
      // path's cleanup cannot find them: unmount them here (lazily: a pod may still hold them open).
      for (const pub of Object.values(v.publish)) {
        if (pub.accessType !== 'block') continue;
        await unmount(pub.targetPath, { lazy: true }).catch((err: unknown) =>
          d.log.warn(
            { err, volumeId: v.volumeId, targetPath: pub.targetPath },
            'Failed to unmount a stale block publish',
          ),
        );
      }
      await d.state.putVolume({ ...v, stage: null, publish: {} });
      r.volumesUnstaged.push(v.volumeId);
    }
  }
  for (const v of d.state.volumes()) {
    for (const hidden of d.backend.listSnapshots(v.volumeId)) {
      const cutOf = hidden.tag.startsWith(CLONE_CUT_TAG_PREFIX) ? hidden.tag.slice(CLONE_CUT_TAG_PREFIX.length) : '';
      const orphanCut = cutOf !== '' && d.state.snapshot(cutOf) === undefined;
      if (!hidden.tag.startsWith(HIDDEN_CLONE_TAG_PREFIX) && !orphanCut) continue;
      if (orphanCut) await d.backend.deleteImage(cutOf);
      await d.backend.deleteSnapshot(v.volumeId, hidden.engineSnapshotId);
      r.hiddenSnapshotsDeleted++;
    }
  }
  const known = new Set(d.state.volumes().map((v) => v.volumeId));
  r.orphanEngineVolumes.push(...storedVolumeIds.filter((id) => !known.has(id)));
  const changed =
    r.volumesRolledBack.length +
      r.volumesDeleted.length +
      r.volumesUnstaged.length +
      r.snapshotsCompleted.length +
      r.snapshotsDropped.length +
      r.snapshotsDeleted.length +
      r.hiddenSnapshotsDeleted +
      r.hydrationsFinished.length +
      r.hydrationsStarted.length +
      r.imagesReady.length >
    0;
  if (changed) d.log.warn(r, 'Recovered driver state after an unclean stop');
  if (r.volumesMissingInEngine.length > 0) {
    d.log.error({ volumes: r.volumesMissingInEngine }, 'Volume records without engine volumes');
  }
  if (r.orphanEngineVolumes.length > 0) {
    d.log.warn({ volumes: r.orphanEngineVolumes }, 'Engine volumes without a driver record were left untouched');
  }
  return r;
}

/**
 * Completes a snapshot record left in phase `creating`: ready when the engine holds the tagged snapshot
 * (the cut happened), removed otherwise. Returns whether it completed.
 */
export async function settleCreatingSnapshot(d: DriverContext, s: SnapshotRecord): Promise<boolean> {
  if (s.method === 'clone') {
    const image = d.backend.imageState(s.snapshotId);
    const cut = d.backend.findSnapshotByTag(s.sourceVolumeId, CLONE_CUT_TAG_PREFIX + s.snapshotId);
    // The cut is released once the image is complete; before that both must exist for the copy to go on.
    if (image.state === 'absent' || (cut === undefined && image.state !== 'ready')) {
      await d.backend.deleteImage(s.snapshotId);
      if (cut !== undefined) await d.backend.deleteSnapshot(s.sourceVolumeId, cut.engineSnapshotId);
      await d.state.removeSnapshot(s.snapshotId);
      return false;
    }
    await d.state.putSnapshot({
      ...s,
      engineSnapshotId: cut?.engineSnapshotId ?? s.engineSnapshotId,
      sizeBytes: cut?.sizeBytes ?? image.totalBytes,
      createdAt: cut?.createdAt ?? s.createdAt,
      readyToUse: image.state === 'ready',
      phase: 'ready',
    });
    return true;
  }
  const snap = d.backend.findSnapshotByTag(s.sourceVolumeId, s.snapshotId);
  if (!snap) {
    await d.state.removeSnapshot(s.snapshotId);
    return false;
  }
  await d.state.putSnapshot({
    ...s,
    engineSnapshotId: snap.engineSnapshotId,
    sizeBytes: snap.sizeBytes,
    createdAt: snap.createdAt,
    readyToUse: true,
    phase: 'ready',
  });
  return true;
}
