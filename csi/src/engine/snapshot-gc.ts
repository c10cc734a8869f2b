// SPDX-License-Identifier: Apache-2.0
// Dependants of RO snapshots (EC-8) and deferred deletion.
//
// A snapshot is pinned while anything depends on it: RW snapshots based on it (OP-7 step 3), the running
// restore (its source, the source RW snapshot's base, and the restore point), and in-memory pins (copy jobs,
// differential streams). Deleting a pinned snapshot either fails (ENGINE_SNAPSHOT_BUSY, naming the
// dependants) or, when asked to, is deferred: the snapshot becomes hidden and SNAP_FLAG_AUTO_DELETE, and is
// deleted by OP-11 in the same commit that removes its last persistent dependant (RW delete or refresh,
// restore end), or by a background merge when its last in-memory pin is released. Snapshots made only to
// serve as a base (clone of the live volume, refresh onto a new snapshot) start out that way.

import type { JournalRecord } from './layout.js';
import { SNAP_FLAG_AUTO_DELETE, type SnapshotEntry } from './snapshot-queue.js';
import type { VolumeCore } from './volume-core.js';

export interface Dependants {
  /** RW snapshots based on the snapshot. */
  rws: number[];
  /** The running restore uses it (source, source's base, or restore point). */
  restore: boolean;
  /** In-memory pins (readers, copy jobs). */
  pins: number;
}

export function dependantsOf(core: VolumeCore, e: SnapshotEntry): Dependants {
  const rws = core.rwChildren(e.id).map((rw) => rw.id);
  const rs = core.restore;
  let restore = false;
  if (rs !== null) {
    if (rs.rpId === e.id) restore = true;
    else if (rs.sourceKind === 'snapshot') restore = rs.sourceId === e.id;
    else restore = core.rws.get(rs.sourceId)?.base === e.id;
  }
  return { rws, restore, pins: e.pins };
}

export function isPinned(d: Dependants): boolean {
  return d.rws.length > 0 || d.restore || d.pins > 0;
}

export function describeDependants(d: Dependants): string {
  const parts: string[] = [];
  if (d.rws.length > 0) parts.push(`RW snapshot(s) ${d.rws.join(', ')} are based on it`);
  if (d.restore) parts.push('the running in-place restore uses it');
  if (d.pins > 0) parts.push(`${d.pins} reader(s) or copy job(s) hold it`);
  return parts.join('; ');
}

/**
 * OP-11 for every auto-delete snapshot nothing depends on; appends their snap-delete records (or pushes
 * them to `sink`) and puts their slots in quarantine. The caller holds the gate exclusively and commits
 * (barrier or flush, then commitFrees).
 */
export function collectAutoDeletes(core: VolumeCore, sink?: JournalRecord[]): number[] {
  const deleted: number[] = [];
  for (const e of [...core.queue.entries]) {
    if ((e.flags & SNAP_FLAG_AUTO_DELETE) === 0 || isPinned(dependantsOf(core, e))) continue;
    core.queue.remove(e.id, (slot) => core.pool.freeLater(slot));
    const record: JournalRecord = { type: 'snap-delete', snapId: e.id };
    if (sink === undefined) core.committer.append(record);
    else sink.push(record);
    deleted.push(e.id);
  }
  return deleted;
}
