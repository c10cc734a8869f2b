// SPDX-License-Identifier: Apache-2.0
// RW snapshot lifecycle (OP-7, OP-10, OP-12) and the cut helper shared with createSnapshot. Callers hold the
// gate exclusively. Every operation is one commit:
//   create       rw-create (ordered), durable on resolve
//   clone live   one flush: pending meta records, then snap-create + snap-flags (hidden, auto-delete) +
//                rw-create in the same frame
//   refresh      flush (deferred rw-map records of the old data first), then one frame: [snap-create,
//                snap-flags] when cutting a new base, rw-refresh (frees the old data, rebases), snap-delete of
//                auto-delete snapshots nothing depends on any more. The RW snapshot keeps its id and tag
//                (its identity, OP-10 step 5). A crash leaves either the old or the new state: the frame is
//                the persisted intent, replay rolls it forward (EC-15).
//   delete       flush, then rw-delete + snap-delete of an auto-delete base it was the last dependant of
// Slots freed by refresh and delete stay in quarantine until their frame is durable (save-pool.ts).

import { BlockMap } from './block-map.js';
import { engineError } from './errors.js';
import type { JournalRecord, SnapshotMethod } from './layout.js';
import { RwMeta, type RwEntry } from './rw-snapshot.js';
import { collectAutoDeletes } from './snapshot-gc.js';
import { SNAP_FLAG_AUTO_DELETE, SNAP_FLAG_HIDDEN, SNAP_FLAG_RESTORING, type SnapshotEntry } from './snapshot-queue.js';
import type { VolumeCore } from './volume-core.js';
import { giveBackFreeSlots } from './space-policy.js';

export interface OpsContext {
  readonly core: VolumeCore;
  readonly clock: () => number;
  readonly maxSnapshots: number;
}

export function newRwEntry(
  core: VolumeCore,
  id: number,
  base: SnapshotEntry,
  blockCount: number,
  createdAt: number,
  tag: string,
): RwEntry {
  return {
    id,
    base: base.id,
    blockCount,
    createdAt,
    tag,
    map: new BlockMap(core.alloc),
    meta: RwMeta.fromFrozen(base.meta, core.granulesFor(blockCount), core.alloc),
    pins: 0,
    busy: new Map(),
  };
}

/** OP-10 steps 2-5 in memory: frees the new data, rebases onto `base`, MBMR := MBM_base. */
export function refreshRwEntry(
  core: VolumeCore,
  rw: RwEntry,
  base: SnapshotEntry,
  onFree: (slot: number) => void,
): void {
  rw.map.clear(onFree);
  rw.base = base.id;
  rw.blockCount = Math.max(rw.blockCount, base.blockCount);
  rw.map = new BlockMap(core.alloc);
  rw.meta = RwMeta.fromFrozen(base.meta, core.granulesFor(rw.blockCount), core.alloc);
}

/** Refuses a cut while a restore runs (EC: new snapshots would read unrestored clone blocks) or at the limit. */
export function checkCut(ctx: OpsContext): void {
  const core = ctx.core;
  if (core.restore !== null) {
    throw engineError('ENGINE_RESTORE_IN_PROGRESS', 'an in-place restore is running; cut after it completes');
  }
  if (core.queue.length >= ctx.maxSnapshots) {
    throw engineError('ENGINE_SNAPSHOT_LIMIT', `volume holds ${core.queue.length} snapshots`, {
      limit: ctx.maxSnapshots,
    });
  }
}

/** OP-1 steps 2-5 in memory; returns the entry and the records that commit it (after the meta records). */
export function cutEntry(
  ctx: OpsContext,
  method: SnapshotMethod,
  tag: string,
  flags: number,
): { entry: SnapshotEntry; records: JournalRecord[] } {
  const core = ctx.core;
  const entry: SnapshotEntry = {
    id: core.nextSnapId++,
    method,
    state: 'valid',
    tag,
    blockCount: core.blockCount,
    createdAt: ctx.clock(),
    meta: core.freezer.freeze(core.meta),
    map: new BlockMap(core.alloc),
    pins: 0,
    flags,
  };
  core.queue.append(entry);
  core.resetSettled();
  const records: JournalRecord[] = [{ type: 'snap-create', snapId: entry.id, method, createdAt: entry.createdAt, tag }];
  if (flags !== 0) records.push({ type: 'snap-flags', snapId: entry.id, flags });
  return { entry, records };
}

/** A snapshot that may become the base of an RW snapshot. */
export function baseEntry(core: VolumeCore, id: number): SnapshotEntry {
  const e = core.queue.find(id);
  if (e === undefined || (e.flags & SNAP_FLAG_AUTO_DELETE) !== 0) {
    throw engineError('ENGINE_UNKNOWN_SNAPSHOT', `snapshot ${id} does not exist`, { id });
  }
  if ((e.flags & SNAP_FLAG_RESTORING) !== 0) {
    throw engineError('ENGINE_SNAPSHOT_NOT_READY', `snapshot ${id} is the restore point of a running restore`, { id });
  }
  if (e.state === 'invalid') {
    throw engineError('ENGINE_SNAPSHOT_INVALID', `snapshot ${id} lost data when the save pool was full`, { id });
  }
  return e;
}

function rwSize(core: VolumeCore, base: SnapshotEntry, sizeBytes: number | undefined): number {
  if (sizeBytes === undefined) return base.blockCount;
  const bs = core.blockSize;
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes % bs !== 0 || sizeBytes / bs < base.blockCount) {
    throw engineError(
      'ENGINE_BAD_ARGUMENT',
      `RW snapshot size ${sizeBytes} must be a multiple of ${bs} and at least the base's ${base.blockCount * bs} bytes`,
      { sizeBytes },
    );
  }
  return sizeBytes / bs;
}

/** OP-7 on an existing snapshot. */
export async function createRw(
  ctx: OpsContext,
  baseId: number,
  tag: string,
  sizeBytes: number | undefined,
): Promise<RwEntry> {
  const core = ctx.core;
  const base = baseEntry(core, baseId);
  const blocks = rwSize(core, base, sizeBytes);
  const rw = newRwEntry(core, core.nextRwId++, base, blocks, ctx.clock(), tag);
  core.rws.set(rw.id, rw);
  core.committer.append({
    type: 'rw-create',
    rwId: rw.id,
    baseId: base.id,
    blockCount: blocks,
    createdAt: rw.createdAt,
    tag,
  });
  await core.committer.barrier();
  return rw;
}

/** OP-1 + OP-7 in one commit: a hidden auto-delete snapshot of the live volume and an RW snapshot on it. */
export async function cloneLive(
  ctx: OpsContext,
  method: SnapshotMethod,
  tag: string,
  sizeBytes: number | undefined,
): Promise<{ snapshot: SnapshotEntry; rw: RwEntry }> {
  checkCut(ctx);
  const core = ctx.core;
  const { entry, records } = cutEntry(ctx, method, tag, SNAP_FLAG_HIDDEN | SNAP_FLAG_AUTO_DELETE);
  const blocks = rwSize(core, entry, sizeBytes);
  const rw = newRwEntry(core, core.nextRwId++, entry, blocks, entry.createdAt, tag);
  core.rws.set(rw.id, rw);
  records.push({ type: 'rw-create', rwId: rw.id, baseId: entry.id, blockCount: blocks, createdAt: rw.createdAt, tag });
  await core.committer.flush({ then: records, now: true });
  return { snapshot: entry, rw };
}

export function rwEntry(core: VolumeCore, id: number): RwEntry {
  const rw = core.rws.get(id);
  if (rw === undefined) throw engineError('ENGINE_UNKNOWN_RW', `RW snapshot ${id} does not exist`, { id });
  return rw;
}

function checkUnpinned(core: VolumeCore, rw: RwEntry, what: string): void {
  const rs = core.restore;
  if (rs !== null && rs.sourceKind === 'rw' && rs.sourceId === rw.id) {
    throw engineError(
      'ENGINE_RW_BUSY',
      `cannot ${what} RW snapshot ${rw.id}: it is the source of the running restore`,
      {
        id: rw.id,
      },
    );
  }
  if (rw.pins > 0) {
    throw engineError(
      'ENGINE_RW_BUSY',
      `cannot ${what} RW snapshot ${rw.id}: ${rw.pins} copy job(s) or reader(s) hold it`,
      {
        id: rw.id,
        pins: rw.pins,
      },
    );
  }
}

/** OP-12. */
export async function deleteRw(ctx: OpsContext, id: number): Promise<number[]> {
  const core = ctx.core;
  const rw = rwEntry(core, id);
  checkUnpinned(core, rw, 'delete');
  await core.committer.flush();
  rw.map.clear((slot) => core.pool.freeLater(slot));
  core.rws.delete(id);
  core.committer.append({ type: 'rw-delete', rwId: id });
  const deleted = collectAutoDeletes(core);
  await core.committer.barrier();
  core.pool.commitFrees();
  await giveBackFreeSlots(core);
  return deleted;
}

/** OP-10 onto `target` (an existing snapshot id) or onto a new snapshot of the live volume. */
export async function refreshRw(
  ctx: OpsContext,
  id: number,
  target: { snapshotId: number } | { method: SnapshotMethod; tag: string },
): Promise<RwEntry> {
  const core = ctx.core;
  const rw = rwEntry(core, id);
  checkUnpinned(core, rw, 'refresh');
  if ('snapshotId' in target) baseEntry(core, target.snapshotId);
  else checkCut(ctx);
  await core.committer.flush();
  const records: JournalRecord[] = [];
  let base: SnapshotEntry;
  if ('snapshotId' in target) base = baseEntry(core, target.snapshotId);
  else {
    const cut = cutEntry(ctx, target.method, target.tag, SNAP_FLAG_HIDDEN | SNAP_FLAG_AUTO_DELETE);
    base = cut.entry;
    records.push(...cut.records);
  }
  refreshRwEntry(core, rw, base, (slot) => core.pool.freeLater(slot));
  records.push({ type: 'rw-refresh', rwId: id, baseId: base.id });
  if (records[0]!.type === 'snap-create') {
    // The cut's frame: after the clone fsync, with the refresh and any auto-deletes in the same frame.
    collectAutoDeletes(core, records);
    await core.committer.flush({ then: records, now: true });
  } else {
    for (const r of records) core.committer.append(r);
    collectAutoDeletes(core);
    await core.committer.barrier();
  }
  core.pool.commitFrees();
  return rw;
}

/** Grows an RW snapshot; the new blocks read as zeros. */
export async function resizeRw(ctx: OpsContext, id: number, sizeBytes: number): Promise<void> {
  const core = ctx.core;
  const rw = rwEntry(core, id);
  checkUnpinned(core, rw, 'resize');
  const bs = core.blockSize;
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % bs !== 0) {
    throw engineError('ENGINE_BAD_ARGUMENT', `size ${sizeBytes} is not a positive multiple of ${bs} bytes`);
  }
  const blocks = sizeBytes / bs;
  if (blocks < rw.blockCount) {
    throw engineError('ENGINE_SHRINK_UNSUPPORTED', `cannot shrink RW snapshot ${id} to ${sizeBytes} bytes`);
  }
  if (blocks === rw.blockCount) return;
  rw.blockCount = blocks;
  rw.meta.grow(core.granulesFor(blocks));
  core.committer.append({ type: 'rw-resize', rwId: id, blockCount: blocks });
  await core.committer.barrier();
}
