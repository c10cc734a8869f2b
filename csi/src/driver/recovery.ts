// SPDX-License-Identifier: Apache-2.0
// Start-up reconciliation of driver records with the engine, after a crash or kill -9 (records.ts phases):
//   volume   creating -> roll back (delete the engine volume if it was made, drop the record)
//            deleting -> finish the delete
//            ready    -> stage/publish state is cleared: the data path of the previous process is gone
//                        (Datapath.start removed its loop devices and every mount of them; binds of block
//                        device nodes are unmounted here), so the CO must stage and publish again
//   snapshot creating -> roll forward when the source volume holds an engine snapshot tagged with the id
//                        (the cut completed), else drop the record
//            deleting -> finish the delete
// Engine snapshots tagged `clone-source:<volumeId>` are hidden snapshots of an interrupted clone: deleted.
// Engine volumes without a record are reported, never deleted (they may be someone's data).
import { unmount } from '../mount/mounts.js';
import type { SnapshotRecord } from '../state/records.js';
import { HIDDEN_CLONE_TAG_PREFIX } from './backend.js';
import type { DriverContext } from './context.js';

export interface RecoveryReport {
  readonly volumesRolledBack: string[];
  readonly volumesDeleted: string[];
  readonly volumesUnstaged: string[];
  readonly volumesMissingInEngine: string[];
  readonly snapshotsCompleted: string[];
  readonly snapshotsDropped: string[];
  readonly snapshotsDeleted: string[];
  readonly hiddenSnapshotsDeleted: number;
  readonly orphanEngineVolumes: string[];
}

export async function recoverState(d: DriverContext, storedVolumeIds: readonly string[]): Promise<RecoveryReport> {
  const r = {
    volumesRolledBack: [] as string[],
    volumesDeleted: [] as string[],
    volumesUnstaged: [] as string[],
    volumesMissingInEngine: [] as string[],
    snapshotsCompleted: [] as string[],
    snapshotsDropped: [] as string[],
    snapshotsDeleted: [] as string[],
    hiddenSnapshotsDeleted: 0,
    orphanEngineVolumes: [] as string[],
  };
  for (const s of d.state.snapshots()) {
    if (s.phase === 'creating') {
      if (await settleCreatingSnapshot(d, s)) r.snapshotsCompleted.push(s.snapshotId);
      else r.snapshotsDropped.push(s.snapshotId);
    } else if (s.phase === 'deleting') {
      if (s.engineSnapshotId >= 0) await d.backend.deleteSnapshot(s.sourceVolumeId, s.engineSnapshotId);
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
    if (v.stage || Object.keys(v.publish).length > 0) {
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
      if (!hidden.tag.startsWith(HIDDEN_CLONE_TAG_PREFIX)) continue;
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
      r.hiddenSnapshotsDeleted >
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
