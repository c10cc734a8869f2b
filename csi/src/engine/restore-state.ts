// SPDX-License-Identifier: Apache-2.0
// The restore record of an online in-place restore (spec §3.12, OP-13) and its in-memory steps 3-5, shared
// by the live call (restore-path.ts) and journal replay (recovery.ts), so both build the same state.
//
//   source   X: RO snapshot N, or RW snapshot R with base N
//   T0       the pre-restore tail: always the entry just older than Rp (deleting it merges it into its own
//            predecessor, which then takes the role; sizes and reads are unchanged by OP-11)
//   Rp       the restore point: a snapshot cut right after MBM_P := MBM_X, so Rp = X; hidden and unreadable
//            (SNAP_FLAG_RESTORING) until the copy completes, since the clone still holds pre-restore data
//   pending  RP: blocks whose final value X(b) is not yet in place (production reads of them return X(b))
//   first    blocks the first pass of the chosen copy order still has to visit: cl.15 (new-then-old) visits
//            the RW snapshot's new data first, cl.14 (old-then-new) the base snapshots' old data first; the
//            second pass visits whatever is pending. first ⊆ pending.
//
// D (the restore set) = (∪ BM_i for N <= i <= T0) ∪ BMR, minus blocks invalid in X or past X's size; for an
// RW source also the blocks it reads as zeros although MBMR is valid (no data of its own, base invalid there:
// the other blocks of a granule an RW write revalidated). Every other block valid in X already holds X(b) in
// the clone: no entry between N and T0 holds it, so X's walk reaches the clone. For b in D, X(b) never resolves to the clone (some entry in [N, T0] or BMR holds it),
// so it stays stable while the copy runs: the source is pinned, and an RW source restores a block before
// the RW snapshot overwrites or discards it.

import { clearBit, nextSetBit, popcount32, testBit } from './bits.js';
import { BlockMap } from './block-map.js';
import { validityPage } from './differential.js';
import { engineError } from './errors.js';
import type { BitPages, RestoreOrder, RestoreSourceKind } from './layout.js';
import { MAP_PAGE_BLOCKS } from './block-map.js';
import type { FrozenMeta } from './meta-bitmap.js';
import type { RwEntry, RwMeta } from './rw-snapshot.js';
import { SNAP_FLAG_HIDDEN, SNAP_FLAG_RESTORING, type SnapshotEntry } from './snapshot-queue.js';
import type { VolumeCore } from './volume-core.js';

const PAGE_WORDS = MAP_PAGE_BLOCKS >>> 5;

export interface RestoreParams {
  sourceKind: RestoreSourceKind;
  sourceId: number;
  order: RestoreOrder;
  rpId: number;
  createdAt: number;
  keep: boolean;
  tag: string;
}

export interface RestoreState extends RestoreParams {
  readonly totalBlocks: number;
  /** RP, one bit per block of the volume. */
  readonly pending: Uint32Array;
  readonly first: Uint32Array;
  pendingCount: number;
  firstCount: number;
  /** Where the copier continues its scan (not persisted). */
  cursor: number;
  /**
   * RW source only (not persisted): blocks whose X(b) lives in the source's own slots and whose RP clear may
   * not be durable yet. Before such a slot changes in place, a flush makes the clear durable (restore-path.ts).
   * Rebuilt as pending ∧ BMR after a reopen, when the durable and the in-memory RP agree.
   */
  guard: Uint32Array | null;
}

/** The source X as the restore sees it. */
export interface RestoreSource {
  /** N: the RO snapshot X is (or X's base). */
  base: SnapshotEntry;
  rw: RwEntry | null;
  meta: FrozenMeta | RwMeta;
  blockCount: number;
}

export function sourceOf(core: VolumeCore, kind: RestoreSourceKind, id: number): RestoreSource {
  if (kind === 'rw') {
    const rw = core.rws.get(id);
    if (rw === undefined) throw engineError('ENGINE_UNKNOWN_RW', `RW snapshot ${id} does not exist`, { id });
    const base = core.queue.find(rw.base);
    if (base === undefined) throw engineError('ENGINE_CORRUPT_METADATA', `RW snapshot ${id} has no base`, { id });
    return { base, rw, meta: rw.meta, blockCount: rw.blockCount };
  }
  const base = core.queue.find(id);
  if (base === undefined) throw engineError('ENGINE_UNKNOWN_SNAPSHOT', `snapshot ${id} does not exist`, { id });
  return { base, rw: null, meta: base.meta, blockCount: base.blockCount };
}

/**
 * OP-13 steps 3-5 in memory: MBM_P := MBM_X, Rp appended as the new tail, RP := D and the first pass.
 * The caller checked the preconditions (live) or replays an acknowledged record.
 */
export function beginRestore(core: VolumeCore, p: RestoreParams): SnapshotEntry {
  const src = sourceOf(core, p.sourceKind, p.sourceId);
  const t0 = core.queue.tail;
  if (t0 === undefined) throw engineError('ENGINE_CORRUPT_METADATA', 'restore without a snapshot queue');
  // Step 3: MBM_P := MBM_X (granules past X's size stay invalid).
  for (let pi = 0; pi < core.meta.pageCount; pi++) core.meta.loadPage(pi, src.meta.pages[pi]);
  if (src.meta.granules < core.meta.granules) core.meta.clearRange(src.meta.granules, core.meta.granules);
  // Step 4: Rp, hidden and unreadable until completion; equal to X because MBM_P = MBM_X now.
  const rp: SnapshotEntry = {
    id: p.rpId,
    method: 'meta-bitmap',
    state: 'valid',
    tag: p.tag,
    blockCount: core.blockCount,
    createdAt: p.createdAt,
    meta: core.freezer.freeze(core.meta),
    map: new BlockMap(core.alloc),
    pins: 0,
    flags: SNAP_FLAG_HIDDEN | SNAP_FLAG_RESTORING,
  };
  core.queue.append(rp);
  core.nextSnapId = Math.max(core.nextSnapId, p.rpId + 1);
  // Step 5: D.
  const words = Math.ceil(core.blockCount / 32) + 1;
  const pending = new Uint32Array(words);
  const first = new Uint32Array(words);
  const posN = core.queue.positionOf(src.base.id);
  const posT0 = core.queue.positionOf(t0.id);
  const valid = new Uint32Array(PAGE_WORDS);
  const baseValid = new Uint32Array(PAGE_WORDS);
  const pages = Math.ceil(src.blockCount / MAP_PAGE_BLOCKS);
  for (let pg = 0; pg < pages; pg++) {
    if (validityPage({ meta: src.meta, blockCount: src.blockCount }, core.granuleShift, pg, valid) === 0) continue;
    const base = pg * PAGE_WORDS;
    for (let i = posN; i <= posT0; i++) orPage(pending, base, core.queue.entries[i]!.map.pageBits(pg));
    if (p.order === 'old-then-new') orPage(first, base, pendingView(pending, base));
    if (src.rw !== null) {
      const bits = src.rw.map.pageBits(pg);
      orPage(pending, base, bits);
      if (p.order === 'new-then-old') orPage(first, base, bits);
      if (validityPage(src.base, core.granuleShift, pg, baseValid) !== 2) {
        for (let w = 0; w < PAGE_WORDS; w++) baseValid[w] = ~baseValid[w]!;
        orPage(pending, base, baseValid);
        if (p.order === 'new-then-old') orPage(first, base, baseValid);
      }
    }
    for (let w = 0; w < PAGE_WORDS && base + w < words; w++) {
      pending[base + w]! &= valid[w]!;
      first[base + w]! &= valid[w]!;
    }
  }
  // Blocks past X's size that share a valid granule with X's last block read zeros after MBM_P := MBM_X:
  // they join D with X(b) = zeros (finalValueOf), so the clone's stale bytes there never show.
  const g = core.granuleBlocks;
  if (g > 1 && src.blockCount % g !== 0 && src.meta.test(core.granuleOf(src.blockCount - 1))) {
    const end = Math.min(core.blockCount, (core.granuleOf(src.blockCount - 1) + 1) * g);
    for (let b = src.blockCount; b < end; b++) pending[b >>> 5]! |= 1 << (b & 31);
  }
  const total = countBits(pending);
  const rs: RestoreState = {
    ...p,
    totalBlocks: total,
    pending,
    first,
    pendingCount: total,
    firstCount: countBits(first),
    cursor: 0,
    guard: src.rw === null ? null : guardOf(pending, src.rw),
  };
  core.resetSettled();
  core.setRestore(rs);
  return rp;
}

/** pending ∧ BMR: the blocks whose restored value is read from the RW source's own slots. */
function guardOf(pending: Uint32Array, rw: RwEntry): Uint32Array {
  const guard = new Uint32Array(pending.length);
  for (let pg = 0; pg * PAGE_WORDS < pending.length; pg++) {
    const bits = rw.map.pageBits(pg);
    if (bits === undefined) continue;
    const base = pg * PAGE_WORDS;
    for (let w = 0; w < PAGE_WORDS && base + w < pending.length; w++) guard[base + w] = pending[base + w]! & bits[w]!;
  }
  return guard;
}

function pendingView(pending: Uint32Array, base: number): Uint32Array {
  return pending.subarray(base, Math.min(pending.length, base + PAGE_WORDS));
}

function orPage(dst: Uint32Array, base: number, bits: Uint32Array | undefined): void {
  if (bits === undefined) return;
  const n = Math.min(bits.length, dst.length - base);
  for (let w = 0; w < n; w++) dst[base + w]! |= bits[w]!;
}

function countBits(words: Uint32Array): number {
  let n = 0;
  for (let i = 0; i < words.length; i++) if (words[i] !== 0) n += popcount32(words[i]!);
  return n;
}

export function isPending(rs: RestoreState, b: number): boolean {
  return testBit(rs.pending, b);
}

/** Clears RP (and the first-pass bit) of [b, b + count). Returns the number of bits that changed. */
export function markDone(rs: RestoreState, b: number, count: number): number {
  let n = 0;
  for (let x = b; x < b + count; x++) {
    if (testBit(rs.first, x)) {
      clearBit(rs.first, x);
      rs.firstCount--;
    }
    if (testBit(rs.pending, x)) {
      clearBit(rs.pending, x);
      rs.pendingCount--;
      n++;
    }
  }
  return n;
}

/** cl.14 first pass placed the old data of [b, b + count): clears their first-pass bits only. */
export function markFirstDone(rs: RestoreState, b: number, count: number): void {
  for (let x = b; x < b + count; x++) {
    if (testBit(rs.first, x)) {
      clearBit(rs.first, x);
      rs.firstCount--;
    }
  }
}

/** The restore point and the pre-restore tail T0 (the entry just older than Rp). */
export function restoreEntries(core: VolumeCore, rs: RestoreState): { rp: SnapshotEntry; t0Pos: number } {
  const pos = core.queue.positionOf(rs.rpId);
  if (pos <= 0) throw engineError('ENGINE_CORRUPT_METADATA', 'restore point or pre-restore tail is missing');
  return { rp: core.queue.entries[pos]!, t0Pos: pos - 1 };
}

export function toBitPages(words: Uint32Array): BitPages {
  const out: { index: number; words: Uint32Array }[] = [];
  for (let base = 0, index = 0; base < words.length; base += PAGE_WORDS, index++) {
    const end = Math.min(words.length, base + PAGE_WORDS);
    if (nextSetBit(words, base * 32, end * 32) < 0) continue;
    const page = new Uint32Array(PAGE_WORDS);
    page.set(words.subarray(base, end));
    out.push({ index, words: page });
  }
  return out;
}

export function fromBitPages(pages: BitPages, words: number): Uint32Array {
  const out = new Uint32Array(words);
  for (const p of pages) {
    const base = p.index * PAGE_WORDS;
    if (base >= words) throw engineError('ENGINE_CORRUPT_METADATA', 'restore bit page outside the volume');
    out.set(p.words.subarray(0, Math.min(PAGE_WORDS, words - base)), base);
  }
  return out;
}

/** Rebuilds the restore state from a checkpoint. */
export function loadRestore(
  core: VolumeCore,
  p: RestoreParams & { totalBlocks: number; pending: BitPages; first: BitPages },
): RestoreState {
  const words = Math.ceil(core.blockCount / 32) + 1;
  const pending = fromBitPages(p.pending, words);
  const first = fromBitPages(p.first, words);
  const rw = p.sourceKind === 'rw' ? core.rws.get(p.sourceId) : undefined;
  return {
    guard: rw === undefined ? null : guardOf(pending, rw),
    sourceKind: p.sourceKind,
    sourceId: p.sourceId,
    order: p.order,
    rpId: p.rpId,
    createdAt: p.createdAt,
    keep: p.keep,
    tag: p.tag,
    totalBlocks: p.totalBlocks,
    pending,
    first,
    pendingCount: countBits(pending),
    firstCount: countBits(first),
    cursor: 0,
  };
}
