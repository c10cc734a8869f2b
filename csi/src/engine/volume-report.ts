// SPDX-License-Identifier: Apache-2.0
// Result shaping and argument checks of the SnapshotVolume API: stats, snapshot info, byte extents.

import type { BlockExtent } from './differential.js';
import { engineError } from './errors.js';
import type { RestoreState } from './restore-state.js';
import type { RwEntry } from './rw-snapshot.js';
import { SNAP_FLAG_AUTO_DELETE, SNAP_FLAG_HIDDEN, SNAP_FLAG_RESTORING, type SnapshotEntry } from './snapshot-queue.js';
import type { Extent, ExtentOptions, RestoreStatus, RwInfo, SnapshotInfo, VolumeStats } from './volume-options.js';
import type { VolumeCore } from './volume-core.js';

export function volumeStats(core: VolumeCore): VolumeStats {
  const bs = core.blockSize;
  const pages = new Set<Uint32Array>();
  let snapshotBytes = 0;
  for (const e of core.queue.entries) {
    snapshotBytes += e.map.residentBytes() + 128 + e.meta.pages.length * 8;
    for (const p of e.meta.ownPages()) pages.add(p);
  }
  for (const rw of core.rws.values()) {
    snapshotBytes += rw.map.residentBytes() + 128 + rw.meta.pages.length * 8;
    for (const p of rw.meta.ownPages()) pages.add(p);
  }
  for (const p of pages) snapshotBytes += p.byteLength;
  return {
    blockSize: bs,
    blockCount: core.blockCount,
    sizeBytes: core.blockCount * bs,
    granuleBlocks: core.granuleBlocks,
    snapshotCount: core.queue.length,
    invalidSnapshotCount: core.queue.entries.filter((e) => e.state === 'invalid').length,
    savePoolUsedBytes: core.pool.usedSlots * bs,
    savePoolSizeBytes: core.pool.sizeSlots * bs,
    saveQuotaBytes: core.pool.quotaSlots === null ? null : core.pool.quotaSlots * bs,
    cowCopiesTotal: core.counters.cowCopies,
    snapshotsInvalidatedTotal: core.counters.invalidations,
    snapshotsSacrificedTotal: core.counters.sacrificed,
    writesRefusedTotal: core.counters.writesRefused,
    outOfSpace: core.counters.outOfSpace,
    savePoolRwBytes: core.pool.rwSlots * bs,
    journalBytes: core.metaStore.journalBytes(),
    checkpointsTotal: core.counters.checkpoints,
    rwSnapshotCount: core.rws.size,
    restoredBlocksTotal: core.counters.restoredBlocks,
    volumeMetadataBytes: core.meta.residentBytes() + core.settled.byteLength + core.pool.residentBytes(),
    snapshotMetadataBytes: snapshotBytes,
  };
}

export function snapshotInfo(core: VolumeCore, e: SnapshotEntry): SnapshotInfo {
  return {
    id: e.id,
    method: e.method,
    state: e.state,
    tag: e.tag,
    createdAt: e.createdAt,
    sizeBytes: e.blockCount * core.blockSize,
    savedBlocks: e.map.size,
    pins: e.pins,
    hidden: (e.flags & SNAP_FLAG_HIDDEN) !== 0,
    autoDelete: (e.flags & SNAP_FLAG_AUTO_DELETE) !== 0,
    restoring: (e.flags & SNAP_FLAG_RESTORING) !== 0,
    rwChildren: core.rwChildren(e.id).map((rw) => rw.id),
  };
}

export function rwInfo(core: VolumeCore, rw: RwEntry): RwInfo {
  return {
    id: rw.id,
    baseId: rw.base,
    tag: rw.tag,
    createdAt: rw.createdAt,
    sizeBytes: rw.blockCount * core.blockSize,
    savedBlocks: rw.map.size,
    pins: rw.pins,
    valid: core.queue.find(rw.base)?.state === 'valid',
  };
}

export function restoreStatus(core: VolumeCore, rs: RestoreState): RestoreStatus {
  const bs = core.blockSize;
  const done = rs.totalBlocks - rs.pendingCount;
  return {
    source: { kind: rs.sourceKind, id: rs.sourceId },
    order: rs.order,
    restorePointId: rs.rpId,
    keepRestorePoint: rs.keep,
    tag: rs.tag,
    startedAt: rs.createdAt,
    totalBlocks: rs.totalBlocks,
    doneBlocks: done,
    totalBytes: rs.totalBlocks * bs,
    doneBytes: done * bs,
    pass: rs.firstCount > 0 ? 'first' : 'second',
  };
}

export function checkRange(offset: number, length: number, limit: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
    throw engineError('ENGINE_BAD_ARGUMENT', 'offset and length must be non-negative integers', { offset, length });
  }
  if (offset + length > limit) {
    throw engineError('ENGINE_OUT_OF_RANGE', `range ${offset}+${length} exceeds ${limit} bytes`, {
      offset,
      length,
      limit,
    });
  }
}

export function blockQuery(options: ExtentOptions, blockSize: number): { startBlock: number; maxExtents: number } {
  const start = options.startingOffset ?? 0;
  if (!Number.isSafeInteger(start) || start < 0) {
    throw engineError('ENGINE_BAD_ARGUMENT', 'startingOffset must be a non-negative integer');
  }
  const max = options.maxResults ?? Number.POSITIVE_INFINITY;
  if (max <= 0) throw engineError('ENGINE_BAD_ARGUMENT', 'maxResults must be positive');
  return { startBlock: Math.floor(start / blockSize), maxExtents: max };
}

export function toBytes(extents: readonly BlockExtent[], blockSize: number): Extent[] {
  return extents.map((e) => ({ offset: e.block * blockSize, length: e.count * blockSize }));
}
