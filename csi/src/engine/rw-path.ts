// SPDX-License-Identifier: Apache-2.0
// RW snapshot writes (OP-9) and discards. They never touch the clone, the production maps or other RW
// snapshots: new data goes to save-pool slots owned by this RW snapshot.
//
// Write of block b:
//   BMR[b] = 1 -> overwrite SV[MAPR[b]] in place (a partial write writes only its bytes);
//   else       -> allocate a slot, write the whole new block (a partial write merged onto the block's
//                 current content: the base's OP-6 value when the MBMR granule is valid, else zeros), then
//                 MAPR[b] := slot and BMR[b] := 1 (a deferred `rw-map` record).
// A write into an invalid MBMR granule of several blocks also gives the granule's other blocks zero entries
// where the base has data, so that the granule reads as zeros outside the write once its bit is set
// (OP-5 step 4 for RW snapshots). RW data does not count against the save quota (save-pool.ts); on a full
// disk unpinned snapshots of the base volume are sacrificed first (space-policy.ts), and when none is left the
// write fails with ENGINE_SAVE_POOL_FULL (ENOSPC) for this write only (EC-5 item 5).
// Durability: like production writes, RW data and its records are durable after flush(): flush syncs the
// save device before it writes the frame holding the deferred rw-map / rw-meta-set records.
// Discards of whole granules clear MBMR and free the granule's slots (an ordered `rw-discard` record after
// a flush, so that no deferred rw-map of an earlier write replays after it); other bytes are zero-written.

import { engineError, isEngineError } from './errors.js';
import { readBlocks, rwBlock } from './read-path.js';
import { restoreBeforeSourceChange } from './restore-path.js';
import type { RwEntry } from './rw-snapshot.js';
import { readsData } from './snapshot-queue.js';
import { makeRoom } from './space-policy.js';
import type { VolumeCore } from './volume-core.js';

/** Blocks a write of [b0, b1) touches: the range, plus blocks of revalidated granules whose base has data. */
function touchedBlocks(core: VolumeCore, rw: RwEntry, b0: number, b1: number): number[] {
  const g = core.granuleBlocks;
  if (g === 1) return Array.from({ length: b1 - b0 }, (_, i) => b0 + i);
  const out: number[] = [];
  const base = core.queue.find(rw.base);
  for (let gi = core.granuleOf(b0); gi <= core.granuleOf(b1 - 1); gi++) {
    const first = gi * g;
    const last = Math.min(first + g, rw.blockCount);
    const valid = rw.meta.test(gi);
    for (let x = first; x < last; x++) {
      if (x >= b0 && x < b1) out.push(x);
      else if (!valid && !rw.map.has(x) && base !== undefined && readsData(base, x, core.granuleShift)) out.push(x);
    }
  }
  return out;
}

async function claim(rw: RwEntry, blocks: readonly number[]): Promise<() => void> {
  for (;;) {
    let blocker: Promise<void> | undefined;
    for (const b of blocks) {
      blocker = rw.busy.get(b);
      if (blocker !== undefined) break;
    }
    if (blocker === undefined) break;
    await blocker;
  }
  let release = (): void => {};
  const done = new Promise<void>((resolve) => (release = resolve));
  for (const b of blocks) rw.busy.set(b, done);
  return () => {
    for (const b of blocks) if (rw.busy.get(b) === done) rw.busy.delete(b);
    release();
  };
}

/** OP-9: writes `data` at byte `offset` of RW snapshot `rw` (range already validated). */
export async function writeRw(core: VolumeCore, rw: RwEntry, offset: number, data: Uint8Array): Promise<void> {
  if (data.length === 0) return;
  const bs = core.blockSize;
  const b0 = Math.floor(offset / bs);
  const b1 = Math.floor((offset + data.length - 1) / bs) + 1;
  const blocks = touchedBlocks(core, rw, b0, b1);
  const release = await claim(rw, blocks);
  try {
    await restoreBeforeSourceChange(core, rw.id, () => blocks);
    const end = offset + data.length;
    for (const b of blocks) {
      const start = b * bs;
      const from = Math.max(start, offset);
      const to = Math.min(start + bs, end);
      const inRange = b >= b0 && b < b1;
      const slot = rw.map.get(b);
      if (slot >= 0) {
        if (from === start && to === start + bs) await core.save.write(slot, data.subarray(from - offset, to - offset));
        else await core.save.writePartial(slot, from - start, data.subarray(from - offset, to - offset));
        core.committer.noteRwWrite();
        continue;
      }
      let content: Uint8Array;
      if (inRange && from === start && to === start + bs) content = data.subarray(from - offset, to - offset);
      else {
        content = new Uint8Array(bs);
        if (inRange && rw.meta.test(core.granuleOf(b))) {
          await core.epochs.read(() => readBlocks(core, b, content, (x) => rwBlock(core, rw, x)));
        }
        if (inRange) content.set(data.subarray(from - offset, to - offset), from - start);
      }
      const fresh = await allocWrite(core, rw, content);
      rw.map.set(b, fresh);
      core.committer.defer({ type: 'rw-map', rwId: rw.id, block: b, slot: fresh });
    }
    const g0 = core.granuleOf(blocks[0]!);
    const g1 = core.granuleOf(blocks[blocks.length - 1]!) + 1;
    if (rw.meta.setRange(g0, g1))
      core.committer.defer({ type: 'rw-meta-set', rwId: rw.id, granule: g0, count: g1 - g0 });
  } finally {
    release();
  }
}

async function allocWrite(core: VolumeCore, rw: RwEntry, content: Uint8Array): Promise<number> {
  for (;;) {
    const slot = core.pool.alloc('rw');
    try {
      await core.save.write(slot, content);
    } catch (err) {
      core.pool.cancel(slot);
      if (!isEngineError(err, 'ENGINE_DEVICE_NO_SPACE')) throw err;
      if (await makeRoom(core)) continue;
      throw engineError(
        'ENGINE_SAVE_POOL_FULL',
        `no space for new data of RW snapshot ${rw.id}: the disk is full`,
        { id: rw.id },
        err,
      );
    }
    // Before the rw-map record exists: a flush that takes the record also syncs this data first.
    core.committer.noteRwWrite();
    return slot;
  }
}

/**
 * Punch-hole discard of an RW snapshot (gate held exclusively): whole granules drop their MBMR bit and their
 * slots, the rest of the range is written with zeros where the granule is valid.
 */
export async function discardRw(core: VolumeCore, rw: RwEntry, offset: number, length: number): Promise<void> {
  if (length === 0) return;
  const bs = core.blockSize;
  const g = core.granuleBlocks;
  const end = offset + length;
  const n = rw.blockCount;
  const first = Math.floor(offset / bs);
  await restoreBeforeSourceChange(core, rw.id, () =>
    Array.from({ length: Math.floor((end - 1) / bs) - first + 1 }, (_, i) => first + i),
  );
  // Deferred rw-map records of earlier writes must not replay after the discard record.
  await core.committer.flush();
  const fb0 = Math.ceil(offset / bs);
  const fb1 = Math.floor(end / bs);
  let clearedFrom = end;
  let clearedTo = end;
  if (fb1 > fb0) {
    const g0 = Math.ceil(fb0 / g);
    const g1 = fb1 === n ? Math.ceil(n / g) : Math.floor(fb1 / g);
    if (g1 > g0) {
      const from = g0 * g;
      const to = Math.min(g1 * g, n);
      rw.meta.clearRange(g0, g1);
      rw.map.removeRange(from, to, (slot) => core.pool.freeLater(slot));
      core.committer.append({ type: 'rw-discard', rwId: rw.id, granule: g0, count: g1 - g0 });
      clearedFrom = from * bs;
      clearedTo = to * bs;
    }
  }
  await zeroValid(core, rw, offset, Math.min(clearedFrom, end));
  await zeroValid(core, rw, Math.max(clearedTo, offset), end);
  await core.committer.barrier();
  core.pool.commitFrees();
}

async function zeroValid(core: VolumeCore, rw: RwEntry, from: number, to: number): Promise<void> {
  const bs = core.blockSize;
  for (let pos = from; pos < to;) {
    const b = Math.floor(pos / bs);
    const stop = Math.min(to, (b + 1) * bs);
    if (rw.meta.test(core.granuleOf(b))) await writeRw(core, rw, pos, new Uint8Array(stop - pos));
    pos = stop;
  }
}
