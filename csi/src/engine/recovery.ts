// SPDX-License-Identifier: Apache-2.0
// Building a VolumeCore from metadata (open after a clean close or a crash) and checkpoints from a core.
//
// Open = newest valid checkpoint + replay of its generation's journal frames (layout.ts), then a rebuild of
// the save-pool allocator from the maps (a slot referenced twice is corruption; a slot referenced by no map
// is free, which reclaims before-images whose record never became durable: EC-1 "leaked save block").
// Replay re-executes each record with the same functions the live path uses, so the state after replay
// equals the state that was acknowledged.

import type { BlockDevice, MetaStore } from './block-device.js';
import type { WordAllocator } from './bits.js';
import { BlockMap } from './block-map.js';
import { checkpointGeneration, decodeCheckpoint } from './checkpoint-codec.js';
import { EngineError, engineError } from './errors.js';
import { decodeJournal } from './journal-codec.js';
import { type CheckpointState, blockChecksum, type JournalRecord } from './layout.js';
import { FrozenMeta, FULL_META_PAGE, META_PAGE_WORDS } from './meta-bitmap.js';
import { allOnes, allZero } from './bits.js';
import { beginRestore, loadRestore, markDone, markFirstDone, toBitPages } from './restore-state.js';
import { newRwEntry, refreshRwEntry } from './rw-ops.js';
import { RwMeta } from './rw-snapshot.js';
import type { SnapshotEntry } from './snapshot-queue.js';
import { VolumeCore } from './volume-core.js';

const TWO32 = 2 ** 32;

export function checkpointOf(core: VolumeCore, gen: number): CheckpointState {
  const productionPages: (Uint32Array | undefined)[] = [];
  for (let pi = 0; pi < core.meta.pageCount; pi++) {
    const words = core.meta.pageWords(pi);
    productionPages.push(allZero(words) ? undefined : allOnes(words) ? FULL_META_PAGE : words.slice());
  }
  return {
    gen,
    blockSize: core.blockSize,
    blockCount: core.blockCount,
    granuleShift: core.granuleShift,
    nextSnapId: core.nextSnapId,
    poolSlots: core.pool.sizeSlots,
    quotaSlots: core.pool.quotaSlots,
    createdAt: core.createdAt,
    productionPages,
    snapshots: core.queue.entries.map((e) => ({
      id: e.id,
      method: e.method,
      state: e.state,
      flags: e.flags,
      tag: e.tag,
      blockCount: e.blockCount,
      createdAt: e.createdAt,
      metaGranules: e.meta.granules,
      metaPages: e.meta.pages,
      entryCount: e.map.size,
      forEachEntry: (fn) => e.map.forEach(fn),
    })),
    nextRwId: core.nextRwId,
    rws: [...core.rws.values()].map((rw) => ({
      id: rw.id,
      base: rw.base,
      blockCount: rw.blockCount,
      createdAt: rw.createdAt,
      tag: rw.tag,
      metaGranules: rw.meta.granules,
      metaPages: rw.meta.pages,
      entryCount: rw.map.size,
      forEachEntry: (fn) => rw.map.forEach(fn),
    })),
    attributes: [...core.attributes.entries()],
    restore:
      core.restore === null
        ? null
        : {
            sourceKind: core.restore.sourceKind,
            sourceId: core.restore.sourceId,
            order: core.restore.order,
            rpId: core.restore.rpId,
            createdAt: core.restore.createdAt,
            keep: core.restore.keep,
            tag: core.restore.tag,
            totalBlocks: core.restore.totalBlocks,
            pending: toBitPages(core.restore.pending),
            first: toBitPages(core.restore.first),
          },
  };
}

export interface LoadResult {
  core: VolumeCore;
  gen: number;
  framesReplayed: number;
}

export async function loadCore(
  devices: { clone: BlockDevice; save: BlockDevice; meta: MetaStore },
  alloc: WordAllocator,
): Promise<LoadResult> {
  const loaded = await devices.meta.load();
  const cp = newestCheckpoint(loaded.checkpoints);
  if (cp.blockSize !== devices.clone.blockSize || cp.blockSize !== devices.save.blockSize) {
    throw engineError('ENGINE_CORRUPT_METADATA', 'device block size differs from the checkpoint', {
      checkpoint: cp.blockSize,
      clone: devices.clone.blockSize,
      save: devices.save.blockSize,
    });
  }
  const core = new VolumeCore(
    { blockSize: cp.blockSize, blockCount: cp.blockCount, granuleShift: cp.granuleShift, createdAt: cp.createdAt },
    devices.clone,
    devices.save,
    devices.meta,
    alloc,
    cp.quotaSlots,
  );
  core.nextSnapId = cp.nextSnapId;
  cp.productionPages.forEach((page, pi) => {
    if (pi >= core.meta.pageCount) throw corrupt('production meta page outside the volume', { page: pi });
    core.meta.loadPage(pi, page);
  });
  for (const s of cp.snapshots) {
    const map = loadMap(alloc, s.entries, s.entryCount, s.blockCount, `snapshot ${s.id}`);
    const entry: SnapshotEntry = {
      id: s.id,
      method: s.method,
      state: s.state,
      tag: s.tag,
      blockCount: s.blockCount,
      createdAt: s.createdAt,
      meta: new FrozenMeta(cp.granuleShift, s.metaGranules, s.metaPages.map(checkPage)),
      map,
      pins: 0,
      flags: s.flags,
    };
    if (s.id >= core.nextSnapId) throw corrupt('snapshot id not below nextSnapId', { id: s.id });
    core.queue.append(entry);
  }
  core.nextRwId = cp.nextRwId;
  for (const r of cp.rws) {
    if (r.id >= core.nextRwId) throw corrupt('RW snapshot id not below nextRwId', { id: r.id });
    if (core.queue.find(r.base) === undefined) throw corrupt('RW snapshot base is missing', { id: r.id, base: r.base });
    core.rws.set(r.id, {
      id: r.id,
      base: r.base,
      blockCount: r.blockCount,
      createdAt: r.createdAt,
      tag: r.tag,
      map: loadMap(alloc, r.entries, r.entryCount, r.blockCount, `RW snapshot ${r.id}`),
      meta: RwMeta.load(cp.granuleShift, r.metaGranules, r.metaPages.map(checkPage), alloc),
      pins: 0,
      busy: new Map(),
    });
  }
  for (const [k, v] of cp.attributes) core.attributes.set(k, v);
  if (cp.restore !== null) core.setRestore(loadRestore(core, cp.restore));
  core.freezer.seed(core.queue.tail?.meta ?? null);
  const journal = decodeJournal(loaded.journal, cp.gen);
  devices.meta.setJournalEnd(journal.validBytes);
  const unbacked = await unbackedSaves(core, journal.frames[journal.frames.length - 1] ?? []);
  for (const frame of journal.frames) for (const r of frame) if (!unbacked.has(r)) applyRecord(core, r);
  rebuildPool(core, cp.poolSlots);
  if (devices.clone.blockCount() < core.blockCount) await devices.clone.resize(core.blockCount);
  return { core, gen: cp.gen, framesReplayed: journal.frames.length };
}

/**
 * Cow records of the last frame whose save slot does not hold the checksummed before-image: the crash came
 * after the frame but before the save data was durable (they are synced in parallel). Their production
 * write was never acknowledged and the clone still holds the before-image, so dropping the entry is exact.
 * Earlier frames are safe: a commit starts only after the previous one's syncs both completed.
 */
async function unbackedSaves(core: VolumeCore, frame: readonly JournalRecord[]): Promise<Set<JournalRecord>> {
  const out = new Set<JournalRecord>();
  const buf = new Uint8Array(core.blockSize);
  const saveBlocks = core.save.blockCount();
  for (const r of frame) {
    if (r.type !== 'cow') continue;
    if (r.slot >= saveBlocks) {
      out.add(r);
      continue;
    }
    await core.save.read(r.slot, buf);
    if (blockChecksum(buf) !== r.sum) out.add(r);
  }
  return out;
}

function newestCheckpoint(candidates: Uint8Array[]): CheckpointState {
  let best: { gen: number; bytes: Uint8Array } | null = null;
  let firstError: unknown = null;
  for (const bytes of candidates) {
    try {
      const gen = checkpointGeneration(bytes);
      if (best === null || gen > best.gen) best = { gen, bytes };
    } catch (err) {
      if (err instanceof EngineError && err.code === 'ENGINE_BAD_VERSION') throw err;
      firstError ??= err;
    }
  }
  if (best === null) {
    if (firstError instanceof EngineError) throw firstError;
    throw corrupt('no valid checkpoint found', { candidates: candidates.length });
  }
  return decodeCheckpoint(best.bytes);
}

function loadMap(
  alloc: WordAllocator,
  entries: Uint32Array | undefined,
  count: number,
  blockCount: number,
  what: string,
): BlockMap {
  const map = new BlockMap(alloc);
  const e = entries ?? new Uint32Array(0);
  let last = -1;
  for (let i = 0; i < count; i++) {
    const block = e[i * 3 + 1]! * TWO32 + e[i * 3]!;
    if (block <= last || block >= blockCount) throw corrupt(`${what}: block map is not ascending`);
    map.set(block, e[i * 3 + 2]!);
    last = block;
  }
  return map;
}

function checkPage(page: Uint32Array | undefined): Uint32Array | undefined {
  if (page !== undefined && page.length !== META_PAGE_WORDS) throw corrupt('meta page has a wrong size');
  return page;
}

/** Re-executes one journal record (the live path appended it after making the same change). */
export function applyRecord(core: VolumeCore, r: JournalRecord): void {
  switch (r.type) {
    case 'cow': {
      const e = core.queue.find(r.snapId);
      if (e === undefined) throw corrupt('cow record for an unknown snapshot', { ...r });
      if (r.block >= core.blockCount || e.map.has(r.block)) throw corrupt('cow record conflicts', { ...r });
      e.map.set(r.block, r.slot);
      return;
    }
    case 'meta-set':
      core.meta.setRange(r.granule, r.granule + r.count);
      return;
    case 'meta-clear':
      core.meta.clearRange(r.granule, r.granule + r.count);
      return;
    case 'snap-create': {
      const tail = core.queue.tail;
      if (tail !== undefined && r.snapId <= tail.id) throw corrupt('snapshot ids do not increase', { ...r });
      core.queue.append({
        id: r.snapId,
        method: r.method,
        state: 'valid',
        tag: r.tag,
        blockCount: core.blockCount,
        createdAt: r.createdAt,
        meta: core.freezer.freeze(core.meta),
        map: new BlockMap(core.alloc),
        pins: 0,
        flags: 0,
      });
      core.nextSnapId = Math.max(core.nextSnapId, r.snapId + 1);
      return;
    }
    case 'snap-delete':
      if (core.queue.find(r.snapId) === undefined) throw corrupt('delete of an unknown snapshot', { ...r });
      core.queue.remove(r.snapId, () => {});
      return;
    case 'snap-invalid': {
      const e = core.queue.find(r.snapId);
      if (e === undefined) throw corrupt('invalidation of an unknown snapshot', { ...r });
      e.state = 'invalid';
      return;
    }
    case 'snap-release': {
      const e = core.queue.find(r.snapId);
      if (e === undefined) throw corrupt('release of an unknown snapshot', { ...r });
      core.queue.release(e.id, () => {});
      return;
    }
    case 'resize':
      if (r.blockCount < core.blockCount) throw corrupt('resize record shrinks the volume', { ...r });
      core.grow(r.blockCount);
      return;
    case 'quota':
      core.pool.setQuota(r.quotaSlots);
      return;
    case 'snap-flags': {
      const e = core.queue.find(r.snapId);
      if (e === undefined) throw corrupt('flags of an unknown snapshot', { ...r });
      e.flags = r.flags;
      return;
    }
    case 'rw-create': {
      const base = core.queue.find(r.baseId);
      if (base === undefined || core.rws.has(r.rwId)) throw corrupt('RW snapshot record conflicts', { ...r });
      core.rws.set(r.rwId, newRwEntry(core, r.rwId, base, r.blockCount, r.createdAt, r.tag));
      core.nextRwId = Math.max(core.nextRwId, r.rwId + 1);
      return;
    }
    case 'rw-map': {
      const rw = rwOf(core, r.rwId, r);
      if (r.block >= rw.blockCount || rw.map.has(r.block)) throw corrupt('rw-map record conflicts', { ...r });
      rw.map.set(r.block, r.slot);
      return;
    }
    case 'rw-meta-set':
      rwOf(core, r.rwId, r).meta.setRange(r.granule, r.granule + r.count);
      return;
    case 'rw-discard': {
      const rw = rwOf(core, r.rwId, r);
      const g = core.granuleBlocks;
      rw.meta.clearRange(r.granule, r.granule + r.count);
      rw.map.removeRange(r.granule * g, Math.min((r.granule + r.count) * g, rw.blockCount), () => {});
      return;
    }
    case 'rw-delete':
      rwOf(core, r.rwId, r);
      core.rws.delete(r.rwId);
      return;
    case 'rw-refresh': {
      const base = core.queue.find(r.baseId);
      if (base === undefined) throw corrupt('refresh onto an unknown snapshot', { ...r });
      refreshRwEntry(core, rwOf(core, r.rwId, r), base, () => {});
      return;
    }
    case 'rw-resize': {
      const rw = rwOf(core, r.rwId, r);
      if (r.blockCount < rw.blockCount) throw corrupt('rw-resize shrinks', { ...r });
      rw.blockCount = r.blockCount;
      rw.meta.grow(core.granulesFor(r.blockCount));
      return;
    }
    case 'restore-start':
      if (core.restore !== null) throw corrupt('restore started twice', { ...r });
      beginRestore(core, r);
      return;
    case 'restore-done':
    case 'restore-first': {
      const rs = core.restore;
      if (rs === null) throw corrupt(`${r.type} without a restore`, { ...r });
      if (r.type === 'restore-done') markDone(rs, r.block, r.count);
      else markFirstDone(rs, r.block, r.count);
      return;
    }
    case 'restore-end':
      if (core.restore === null) throw corrupt('restore-end without a restore');
      core.setRestore(null);
      return;
    case 'attr':
      if (r.value === '') core.attributes.delete(r.key);
      else core.attributes.set(r.key, r.value);
      return;
  }
}

function rwOf(core: VolumeCore, id: number, r: JournalRecord) {
  const rw = core.rws.get(id);
  if (rw === undefined) throw corrupt(`${r.type} of an unknown RW snapshot`, { ...r });
  return rw;
}

function rebuildPool(core: VolumeCore, poolSlots: number): void {
  let maxSlot = -1;
  const mark = (what: string, id: number) => (b: number, slot: number) => {
    if (!core.pool.markReferenced(slot, what === 'rwId' ? 'rw' : 'save'))
      throw corrupt('save slot referenced twice', { slot, block: b, [what]: id });
    if (slot > maxSlot) maxSlot = slot;
  };
  for (const e of core.queue.entries) e.map.forEach(mark('id', e.id));
  for (const rw of core.rws.values()) rw.map.forEach(mark('rwId', rw.id));
  if (maxSlot >= core.save.blockCount()) {
    throw corrupt('a referenced save slot lies past the end of the save pool', {
      slot: maxSlot,
      saveBlocks: core.save.blockCount(),
    });
  }
  core.pool.finishRebuild(poolSlots);
}

function corrupt(message: string, details: Record<string, unknown> = {}) {
  return engineError('ENGINE_CORRUPT_METADATA', message, details);
}
