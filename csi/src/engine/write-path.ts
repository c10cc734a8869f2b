// SPDX-License-Identifier: Apache-2.0
// Production writes (OP-2/OP-3 with EC-1 ordering, EC-4 partial blocks, EC-5 exhaustion) and discards (OP-5).
//
// A block whose settled bit is set is written straight to the clone (the common case, also what worker
// threads do). Any other block takes the slow path, in this order per block:
//   1. wait until no other engine write of the block (or of its invalid granule) is in flight (EC-2);
//   2. COW walk (SnapshotQueue.cowNeeded); if a save is needed: allocate a slot, read the clone block,
//      write it to the slot, then MAP_tail[b] := slot and BM_tail[b] := 1 and append a `cow` record;
//      if no slot can be had, apply the space policy (space-policy.ts): sacrifice unpinned snapshots oldest
//      first and retry; when only pinned snapshots need the save, fail the write with ENOSPC; during an
//      in-place restore, invalidate the unpinned snapshots that needed it (EC-5) instead;
//   3. the new content: a whole block, or a partial block merged onto the clone's current bytes, or onto
//      zeros when the granule is invalid (EC-4); blocks of an invalid granule outside the write are zeroed;
//   4. barrier: the save data and the records are durable before the clone is touched (EC-1);
//   5. clone write; then MBM_P := valid for the touched granules (a deferred record) and settled := 1.
// During an in-place restore, step 2 for a block still pending is restore-before-write (restore-path.ts):
// T0 keeps the pre-restore data, Rp receives the restored value X(b) as its before-image, and a partial
// write merges onto X(b); after the clone write RP[b] := 0.

import { testBit } from './bits.js';
import { isEngineError } from './errors.js';
import { blockChecksum } from './layout.js';
import { finishWrite, restoreForWrite } from './restore-path.js';
import { makeRoom, pinned, pinnedFull } from './space-policy.js';
import type { SnapshotEntry } from './snapshot-queue.js';
import type { VolumeCore } from './volume-core.js';

interface BlockContent {
  b: number;
  data: Uint8Array;
}

/** Writes `data` at byte `offset` of the production volume. The range must lie inside the volume. */
export async function writeRange(core: VolumeCore, offset: number, data: Uint8Array): Promise<void> {
  const bs = core.blockSize;
  const len = data.length;
  if (len === 0) return;
  const b0 = Math.floor(offset / bs);
  const b1 = Math.floor((offset + len - 1) / bs) + 1;
  if (core.allSettled(b0, b1)) {
    await writeSettled(core, offset, data, b0, b1);
    return;
  }
  let affected: number[];
  for (;;) {
    affected = affectedBlocks(core, b0, b1);
    const blocker = core.busy.size > 0 ? firstBusy(core, affected) : undefined;
    if (blocker === undefined) break;
    await blocker;
  }
  let release = (): void => {};
  const done = new Promise<void>((resolve) => (release = resolve));
  for (const b of affected) core.busy.set(b, done);
  try {
    await writeSettledParts(core, offset, data, b0, b1, affected);
    await writeSlow(core, offset, data, b0, b1, affected);
  } finally {
    for (const b of affected) if (core.busy.get(b) === done) core.busy.delete(b);
    release();
  }
}

/** Blocks of [b0, b1) that are not settled, plus every block of an invalid granule touched (zero-fill). */
function affectedBlocks(core: VolumeCore, b0: number, b1: number): number[] {
  const out: number[] = [];
  const g = core.granuleBlocks;
  let lastGranule = -1;
  for (let b = b0; b < b1; b++) {
    if (core.isSettled(b)) continue;
    if (g === 1) {
      out.push(b);
      continue;
    }
    const gi = core.granuleOf(b);
    if (gi === lastGranule) continue;
    if (core.meta.test(gi)) {
      out.push(b);
      continue;
    }
    lastGranule = gi;
    const end = Math.min((gi + 1) * g, core.blockCount);
    for (let x = gi * g; x < end; x++) out.push(x);
  }
  return out;
}

function firstBusy(core: VolumeCore, blocks: readonly number[]): Promise<void> | undefined {
  for (const b of blocks) {
    const p = core.busy.get(b);
    if (p !== undefined) return p;
  }
  return undefined;
}

/** Whole range settled: whole blocks in one write, partial edge blocks in place (no read-modify-write). */
async function writeSettled(core: VolumeCore, offset: number, data: Uint8Array, b0: number, b1: number) {
  const bs = core.blockSize;
  const head = offset - b0 * bs;
  if (head === 0 && data.length % bs === 0) {
    await core.clone.write(b0, data);
    return;
  }
  await writeSettledParts(core, offset, data, b0, b1, []);
}

/** Writes the settled blocks of [b0, b1) that are not in `skip` (sorted). */
async function writeSettledParts(
  core: VolumeCore,
  offset: number,
  data: Uint8Array,
  b0: number,
  b1: number,
  skip: readonly number[],
): Promise<void> {
  const bs = core.blockSize;
  const end = offset + data.length;
  let k = 0;
  let runStart = -1;
  const flushRun = async (stop: number) => {
    if (runStart < 0) return;
    await core.clone.write(runStart, data.subarray(runStart * bs - offset, stop * bs - offset));
    runStart = -1;
  };
  for (let b = b0; b < b1; b++) {
    while (k < skip.length && skip[k]! < b) k++;
    if (k < skip.length && skip[k] === b) {
      await flushRun(b);
      continue;
    }
    const start = b * bs;
    if (start >= offset && start + bs <= end) {
      if (runStart < 0) runStart = b;
      continue;
    }
    await flushRun(b);
    const from = Math.max(start, offset);
    const to = Math.min(start + bs, end);
    await core.clone.writePartial(b, from - start, data.subarray(from - offset, to - offset));
  }
  await flushRun(b1);
}

async function writeSlow(
  core: VolumeCore,
  offset: number,
  data: Uint8Array,
  b0: number,
  b1: number,
  affected: readonly number[],
): Promise<void> {
  if (affected.length === 0) return;
  const bs = core.blockSize;
  const shift = core.granuleShift;
  const out: BlockContent[] = [];
  let needBarrier = false;
  let zero: Uint8Array | null = null;
  const rs = core.restore;
  const restored: number[] = [];
  for (const b of affected) {
    const granuleValid = core.meta.test(core.granuleOf(b));
    let old: Uint8Array | null = null;
    if (rs !== null && testBit(rs.pending, b)) {
      old = await restoreForWrite(core, rs, b);
      restored.push(b);
      needBarrier = true;
    } else if (core.queue.length > 0 && core.queue.cowNeeded(b, shift)) {
      old = await saveBeforeImage(core, b);
      needBarrier = true;
    }
    const start = b * bs;
    if (b < b0 || b >= b1) {
      zero ??= new Uint8Array(bs);
      out.push({ b, data: zero });
      continue;
    }
    const from = Math.max(start, offset);
    const to = Math.min(start + bs, offset + data.length);
    if (from === start && to === start + bs) {
      out.push({ b, data: data.subarray(from - offset, to - offset) });
      continue;
    }
    let base: Uint8Array;
    if (!granuleValid) base = new Uint8Array(bs);
    else if (old !== null) base = old;
    else {
      base = new Uint8Array(bs);
      await core.clone.read(b, base);
    }
    base.set(data.subarray(from - offset, to - offset), from - start);
    out.push({ b, data: base });
  }
  if (needBarrier) await core.committer.barrier();
  await writeContents(core, out);
  if (rs !== null && restored.length > 0) finishWrite(core, rs, restored);
  const g0 = core.granuleOf(affected[0]!);
  const g1 = core.granuleOf(affected[affected.length - 1]!) + 1;
  if (core.meta.setRange(g0, g1)) core.committer.defer({ type: 'meta-set', granule: g0, count: g1 - g0 });
  for (const b of affected) core.settle(b);
}

/** Step 2 of the slow path; returns the clone's before-image of `b`. */
async function saveBeforeImage(core: VolumeCore, b: number): Promise<Uint8Array> {
  const old = new Uint8Array(core.blockSize);
  await core.clone.read(b, old);
  for (let retry = false; ; retry = true) {
    // After a sacrifice nobody may need the before-image any more.
    if (retry && core.queue.needyEntries(b, core.granuleShift).length === 0) return old;
    const slot = await trySave(core, old);
    if (slot >= 0) {
      const tail = core.queue.tail!;
      tail.map.set(b, slot);
      core.committer.append({ type: 'cow', snapId: tail.id, block: b, slot, sum: blockChecksum(old) });
      core.counters.cowCopies++;
      core.counters.outOfSpace = false;
      return old;
    }
    const needy = core.queue.needyEntries(b, core.granuleShift);
    if (needy.length === 0) return old;
    if (await makeRoom(core, needy)) continue;
    // Nothing may be sacrificed: every snapshot left that needs b is pinned, or an in-place restore runs.
    const held = needy.filter((e) => pinned(core, e));
    if (held.length > 0) throw pinnedFull(core, b, held);
    invalidate(core, needy);
    return old;
  }
}

/** Writes a before-image into a new slot; -1 when the quota or the disk has no room for it. */
async function trySave(core: VolumeCore, old: Uint8Array): Promise<number> {
  const slot = core.pool.alloc();
  if (slot < 0) return -1;
  try {
    await core.save.write(slot, old);
  } catch (err) {
    core.pool.cancel(slot);
    if (!isEngineError(err, 'ENGINE_DEVICE_NO_SPACE')) throw err;
    return -1;
  }
  core.committer.noteSaveWrite();
  return slot;
}

/** EC-5 during an in-place restore: the production write goes on; these (unpinned) snapshots lose b. */
function invalidate(core: VolumeCore, needy: readonly SnapshotEntry[]): void {
  for (const e of needy) {
    e.state = 'invalid';
    core.committer.append({ type: 'snap-invalid', snapId: e.id });
    core.counters.invalidations++;
  }
}

/** Writes block contents (sorted by block), coalescing consecutive blocks into one device write. */
async function writeContents(core: VolumeCore, out: readonly BlockContent[]): Promise<void> {
  const bs = core.blockSize;
  let i = 0;
  while (i < out.length) {
    let j = i + 1;
    while (j < out.length && out[j]!.b === out[j - 1]!.b + 1) j++;
    if (j - i === 1) await core.clone.write(out[i]!.b, out[i]!.data);
    else {
      const buf = contiguousView(out, i, j) ?? concat(out, i, j, bs);
      await core.clone.write(out[i]!.b, buf);
    }
    i = j;
  }
}

/** When blocks i..j-1 are consecutive views of one buffer, a view of the whole run. */
function contiguousView(out: readonly BlockContent[], i: number, j: number): Uint8Array | null {
  const first = out[i]!.data;
  let expect = first.byteOffset;
  for (let k = i; k < j; k++) {
    const d = out[k]!.data;
    if (d.buffer !== first.buffer || d.byteOffset !== expect) return null;
    expect += d.length;
  }
  return new Uint8Array(first.buffer, first.byteOffset, expect - first.byteOffset);
}

function concat(out: readonly BlockContent[], i: number, j: number, bs: number): Uint8Array {
  const buf = new Uint8Array((j - i) * bs);
  for (let k = i; k < j; k++) buf.set(out[k]!.data, (k - i) * bs);
  return buf;
}

/**
 * OP-5 with punch-hole semantics: afterwards every byte of [offset, offset + length) reads as zeros.
 * Whole granules only clear their MBM_P bit (no data moves, no COW); bytes in granules that stay valid are
 * overwritten with zeros through the normal write path; granules already invalid need nothing.
 * Runs with the gate held exclusively (no engine or worker write is in flight).
 */
export async function discardRange(core: VolumeCore, offset: number, length: number): Promise<void> {
  if (length === 0) return;
  const bs = core.blockSize;
  const g = core.granuleBlocks;
  const end = offset + length;
  const n = core.blockCount;
  const fb0 = Math.ceil(offset / bs);
  const fb1 = Math.floor(end / bs);
  let clearedFrom = end;
  let clearedTo = end;
  if (fb1 > fb0) {
    const g0 = Math.ceil(fb0 / g);
    const g1 = fb1 === n ? Math.ceil(n / g) : Math.floor(fb1 / g);
    if (g1 > g0) {
      if (core.meta.clearRange(g0, g1)) core.committer.defer({ type: 'meta-clear', granule: g0, count: g1 - g0 });
      core.unsettleRange(g0 * g, Math.min(g1 * g, n));
      clearedFrom = g0 * g * bs;
      clearedTo = Math.min(g1 * g, n) * bs;
    }
  }
  await zeroValid(core, offset, Math.min(clearedFrom, end));
  await zeroValid(core, Math.max(clearedTo, offset), end);
}

/** Writes zeros over [from, to), skipping blocks whose granule is invalid (they already read as zeros). */
async function zeroValid(core: VolumeCore, from: number, to: number): Promise<void> {
  if (to <= from) return;
  const bs = core.blockSize;
  let runStart = -1;
  const flush = async (stopByte: number) => {
    if (runStart < 0) return;
    await writeRange(core, runStart, new Uint8Array(stopByte - runStart));
    runStart = -1;
  };
  for (let b = Math.floor(from / bs); b * bs < to; b++) {
    const lo = Math.max(from, b * bs);
    const hi = Math.min(to, (b + 1) * bs);
    if (core.meta.test(core.granuleOf(b))) {
      if (runStart < 0) runStart = lo;
    } else await flush(lo);
    if (hi >= to) break;
  }
  await flush(to);
}
