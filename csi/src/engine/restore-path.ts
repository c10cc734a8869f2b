// SPDX-License-Identifier: Apache-2.0
// OP-13 steps 6-8: placing restored blocks (background copier, restore-before-write), completion.
//
// Placing block b (its final value v = X(b), or in cl.14's first pass the base snapshot's old value):
//   1. T0 preservation: if a pre-restore snapshot (the walk from T0 down) still reads b from the clone, copy
//      C[b] into a new slot of T0 first (a `cow` record), then wait for the barrier (EC-1) and for every read
//      that may have resolved b to the clone before the map changed (read epochs, EC-2);
//   2. C[b] := v;
//   3. only then RP[b] := 0 (a deferred `restore-done` record, durable after the clone data in flush()), so a
//      production read sees X(b) until the clone holds it. A crash before the record is durable replays the
//      placement: the same value again, and C[b] may only have changed by writes that were not flushed.
// Restore-before-write (a production write or discard of a pending block) does step 1, then routes v into
// Rp's slot, Rp being the tail (the seed's "new save volume as indicated by the new bitmap"), and lets the
// write overwrite the clone behind the same barrier: one barrier, and Rp = X for that block.

import { clearBit, testBit } from './bits.js';
import { engineError, isEngineError } from './errors.js';
import { blockChecksum, type RestoreOrder, type RestoreSourceKind } from './layout.js';
import { finalValueOf, type Located, oldValueOf, readBlocks } from './read-path.js';
import {
  beginRestore,
  isPending,
  markDone,
  markFirstDone,
  type RestoreParams,
  type RestoreState,
  restoreEntries,
} from './restore-state.js';
import { baseEntry, checkCut, type OpsContext, rwEntry } from './rw-ops.js';
import { collectAutoDeletes } from './snapshot-gc.js';
import { SNAP_FLAG_RESTORING, validForCow } from './snapshot-queue.js';
import { pinned, pinnedFull } from './space-policy.js';
import type { VolumeCore } from './volume-core.js';

/** Copies C[b] into T0 when a pre-restore snapshot still reads it there; true when a record was appended. */
async function preserve(core: VolumeCore, t0Pos: number, b: number): Promise<boolean> {
  if (!core.queue.cowNeeded(b, core.granuleShift, t0Pos)) return false;
  const old = new Uint8Array(core.blockSize);
  await core.clone.read(b, old);
  const t0 = core.queue.entries[t0Pos]!;
  const slot = await saveSlot(core, old);
  if (slot < 0) {
    invalidate(core, b, t0Pos);
    return true;
  }
  t0.map.set(b, slot);
  core.committer.append({ type: 'cow', snapId: t0.id, block: b, slot, sum: blockChecksum(old) });
  core.counters.cowCopies++;
  return true;
}

/** Writes `data` into a new save slot; -1 when none can be had (EC-5). */
async function saveSlot(core: VolumeCore, data: Uint8Array): Promise<number> {
  const slot = core.pool.alloc();
  if (slot < 0) return -1;
  try {
    await core.save.write(slot, data);
  } catch (err) {
    core.pool.cancel(slot);
    if (!isEngineError(err, 'ENGINE_DEVICE_NO_SPACE')) throw err;
    return -1;
  }
  core.committer.noteSaveWrite();
  return slot;
}

/**
 * EC-5 for a save the walk from `fromPos` needs: the production data goes on, those snapshots lose b. A
 * snapshot with dependants is never invalidated (space-policy.ts): the step fails with ENOSPC instead.
 */
function invalidate(core: VolumeCore, b: number, fromPos?: number): void {
  const needy = core.queue.needyEntries(b, core.granuleShift, fromPos);
  const held = needy.filter((e) => e.state === 'valid' && pinned(core, e));
  if (held.length > 0) throw pinnedFull(core, b, held);
  for (const e of needy) {
    if (e.state === 'invalid') continue;
    e.state = 'invalid';
    core.committer.append({ type: 'snap-invalid', snapId: e.id });
    core.counters.invalidations++;
  }
}

/**
 * Restore-before-write of pending block b (OP-13 step 7): returns X(b), which the caller merges a partial
 * write onto. Appends T0's and Rp's records; the caller waits for the barrier before writing the clone and
 * calls finishWrite() afterwards.
 */
export async function restoreForWrite(core: VolumeCore, rs: RestoreState, b: number): Promise<Uint8Array> {
  const { rp, t0Pos } = restoreEntries(core, rs);
  const v = new Uint8Array(core.blockSize);
  await readBlocks(core, b, v, (x) => finalValueOf(core, rs, x));
  await preserve(core, t0Pos, b);
  if (!rp.map.has(b) && rp.state === 'valid' && validForCow(rp, b, core.granuleShift)) {
    const slot = await saveSlot(core, v);
    if (slot < 0) invalidate(core, b);
    else {
      rp.map.set(b, slot);
      core.committer.append({ type: 'cow', snapId: rp.id, block: b, slot, sum: blockChecksum(v) });
      core.counters.cowCopies++;
    }
  }
  return v;
}

/** After the clone write of restored-before-write blocks (sorted): RP := 0 for them. */
export function finishWrite(core: VolumeCore, rs: RestoreState, blocks: readonly number[]): void {
  deferRuns(blocks, (b, n) => {
    markDone(rs, b, n);
    core.committer.defer({ type: 'restore-done', block: b, count: n });
  });
  core.counters.restoredBlocks += blocks.length;
}

/**
 * Places blocks (sorted, claimed in core.busy by the caller). `old` = cl.14's first pass: the base
 * snapshot's old data, final for blocks without RW new data.
 */
export async function placeBlocks(
  core: VolumeCore,
  rs: RestoreState,
  blocks: readonly number[],
  old: boolean,
): Promise<void> {
  if (blocks.length === 0) return;
  const bs = core.blockSize;
  const rw = rs.sourceKind === 'rw' ? core.rws.get(rs.sourceId) : undefined;
  const baseId = rw?.base ?? rs.sourceId;
  const locate = (b: number): Located => (old ? oldValueOf(core, baseId, b) : finalValueOf(core, rs, b));
  const values = new Uint8Array(blocks.length * bs);
  await forRuns(blocks, (i, j) => readBlocks(core, blocks[i]!, values.subarray(i * bs, j * bs), locate));
  const { t0Pos } = restoreEntries(core, rs);
  let preserved = false;
  for (const b of blocks) if (await preserve(core, t0Pos, b)) preserved = true;
  if (preserved) await Promise.all([core.committer.barrier(), core.epochs.quiesce()]);
  await forRuns(blocks, (i, j) => core.clone.write(blocks[i]!, values.subarray(i * bs, j * bs)));
  // cl.14: the old data is final where the RW snapshot reads its base; elsewhere new data follows in pass 2.
  const same = (b: number) => {
    const f = finalValueOf(core, rs, b);
    const o = oldValueOf(core, baseId, b);
    return f[0] === o[0] && f[1] === o[1];
  };
  const intermediate = old && rw !== undefined ? blocks.filter((b) => !same(b)) : [];
  const final = intermediate.length === 0 ? blocks : blocks.filter((b) => same(b));
  deferRuns(intermediate, (b, n) => {
    markFirstDone(rs, b, n);
    core.committer.defer({ type: 'restore-first', block: b, count: n });
  });
  finishWrite(core, rs, final);
}

/** Calls fn(i, j) for each run blocks[i..j) of consecutive block numbers. */
async function forRuns(blocks: readonly number[], fn: (i: number, j: number) => Promise<void>): Promise<void> {
  let i = 0;
  while (i < blocks.length) {
    let j = i + 1;
    while (j < blocks.length && blocks[j] === blocks[j - 1]! + 1) j++;
    await fn(i, j);
    i = j;
  }
}

function deferRuns(blocks: readonly number[], fn: (b: number, n: number) => void): void {
  let i = 0;
  while (i < blocks.length) {
    let j = i + 1;
    while (j < blocks.length && blocks[j] === blocks[j - 1]! + 1) j++;
    fn(blocks[i]!, j - i);
    i = j;
  }
}

/** Claims `blocks` in core.busy (waiting for writes in flight); returns the release function. */
async function claim(core: VolumeCore, blocks: readonly number[]): Promise<() => void> {
  for (;;) {
    let blocker: Promise<void> | undefined;
    for (const b of blocks) {
      blocker = core.busy.get(b);
      if (blocker !== undefined) break;
    }
    if (blocker === undefined) break;
    await blocker;
  }
  let release = (): void => {};
  const done = new Promise<void>((resolve) => (release = resolve));
  for (const b of blocks) core.busy.set(b, done);
  return () => {
    for (const b of blocks) if (core.busy.get(b) === done) core.busy.delete(b);
    release();
  };
}

/**
 * Before the RW snapshot that is the restore source overwrites or discards blocks: places the pending ones
 * (so X stays what it was at the restore instant); when a block's X lives in the source's own slot and its
 * RP clear may not be durable yet (placed here or earlier by the copier), flushes first: a crash between the
 * slot's change and the clear would replay a pending block whose X is gone. Then waits for production reads
 * that may still read the old slot.
 */
export async function restoreBeforeSourceChange(
  core: VolumeCore,
  rwId: number,
  blocks: () => readonly number[],
): Promise<void> {
  const rs = core.restore;
  if (rs === null || rs.sourceKind !== 'rw' || rs.sourceId !== rwId) return;
  const all = blocks();
  const pending = all.filter((b) => isPending(rs, b));
  const guard = rs.guard;
  const guarded = guard === null ? [] : all.filter((b) => testBit(guard, b));
  if (pending.length === 0 && guarded.length === 0) return;
  if (pending.length > 0) {
    const release = await claim(core, pending);
    try {
      await placeBlocks(
        core,
        rs,
        pending.filter((b) => isPending(rs, b)),
        false,
      );
    } finally {
      release();
    }
  }
  await Promise.all([core.committer.flush(), core.epochs.quiesce()]);
  if (guard !== null) for (const b of guarded) if (!isPending(rs, b)) clearBit(guard, b);
}

/**
 * One step of the background copier: up to `maxBlocks` blocks of the current pass, skipping blocks a
 * foreground write holds (it restores them itself). Returns the number of blocks placed.
 */
export async function copyStep(core: VolumeCore, rs: RestoreState, maxBlocks: number): Promise<number> {
  const firstPass = rs.firstCount > 0;
  const bits = firstPass ? rs.first : rs.pending;
  const limit = core.blockCount;
  const blocks: number[] = [];
  let from = rs.cursor < limit ? rs.cursor : 0;
  let wrapped = false;
  while (blocks.length < maxBlocks) {
    const b = nextSet(bits, from, limit);
    if (b < 0) {
      if (wrapped || from === 0) break;
      wrapped = true;
      from = 0;
      continue;
    }
    if (wrapped && b >= rs.cursor) break;
    if (!core.busy.has(b)) blocks.push(b);
    from = b + 1;
  }
  if (blocks.length === 0) return 0;
  blocks.sort((a, b) => a - b);
  const release = await claim(core, blocks);
  try {
    const still = blocks.filter((b) => ((bits[b >>> 5]! >>> (b & 31)) & 1) === 1);
    await placeBlocks(core, rs, still, firstPass && rs.order === 'old-then-new');
  } finally {
    release();
  }
  rs.cursor = blocks[blocks.length - 1]! + 1;
  if (firstPass && rs.firstCount === 0) rs.cursor = 0;
  return blocks.length;
}

function nextSet(words: Uint32Array, from: number, limit: number): number {
  for (let b = from; b < limit;) {
    const w = words[b >>> 5]! >>> (b & 31);
    if (w === 0) {
      b = ((b >>> 5) + 1) << 5;
      continue;
    }
    const x = b + (31 - Math.clz32(w & -w));
    return x < limit ? x : -1;
  }
  return -1;
}

/**
 * OP-13 step 8 (gate held exclusively, nothing pending): makes the placed data and RP durable, keeps Rp as a
 * visible snapshot or merges it away (OP-11), clears the record and deletes snapshots nothing pins any more.
 */
export async function finishRestore(core: VolumeCore, rs: RestoreState): Promise<number | null> {
  if (rs.pendingCount !== 0) throw engineError('ENGINE_RESTORE_IN_PROGRESS', 'blocks are still pending');
  await core.committer.flush();
  const { rp } = restoreEntries(core, rs);
  let kept: number | null = null;
  if (rs.keep) {
    rp.flags = 0;
    core.committer.append({ type: 'snap-flags', snapId: rp.id, flags: 0 });
    kept = rp.id;
  } else {
    rp.flags &= ~SNAP_FLAG_RESTORING;
    core.queue.remove(rp.id, (slot) => core.pool.freeLater(slot));
    core.committer.append({ type: 'snap-delete', snapId: rp.id });
  }
  core.committer.append({ type: 'restore-end' });
  core.setRestore(null);
  collectAutoDeletes(core);
  await core.committer.barrier();
  core.pool.commitFrees();
  return kept;
}

/**
 * OP-13 steps 1-5 (gate held exclusively: I/O is quiesced): checks, MBM_P := MBM_X, Rp, RP := D, then one
 * commit (clone fsync, pending meta records, restore-start). Reads see X at once; the copier does the rest.
 */
export async function startRestore(
  ctx: OpsContext,
  source: { kind: RestoreSourceKind; id: number },
  order: RestoreOrder,
  keep: boolean,
  tag: string,
): Promise<RestoreState> {
  const core = ctx.core;
  checkCut(ctx);
  let blocks: number;
  if (source.kind === 'snapshot') blocks = baseEntry(core, source.id).blockCount;
  else {
    const rw = rwEntry(core, source.id);
    if (core.queue.find(rw.base)?.state !== 'valid') {
      throw engineError('ENGINE_SNAPSHOT_INVALID', `the base of RW snapshot ${rw.id} lost data`, { id: rw.id });
    }
    blocks = rw.blockCount;
  }
  if (blocks > core.blockCount) {
    throw engineError(
      'ENGINE_BAD_ARGUMENT',
      `the source (${blocks * core.blockSize} bytes) is larger than the volume (${core.blockCount * core.blockSize} bytes); grow the volume first`,
    );
  }
  const params: RestoreParams = {
    sourceKind: source.kind,
    sourceId: source.id,
    order,
    rpId: core.nextSnapId++,
    createdAt: ctx.clock(),
    keep,
    tag,
  };
  beginRestore(core, params);
  await core.committer.flush({ then: [{ type: 'restore-start', ...params }], now: true });
  return core.restore!;
}
