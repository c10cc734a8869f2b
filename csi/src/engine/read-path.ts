// SPDX-License-Identifier: Apache-2.0
// Production reads (OP-4, and OP-13's foreground read rule during a restore), RO snapshot reads (OP-6) and
// RW snapshot reads (OP-8). Blocks of invalid granules read as zeros (§3.9). Consecutive blocks served from
// the same device at consecutive positions are read in one device call.

import { testBit } from './bits.js';
import type { RestoreState } from './restore-state.js';
import type { RwEntry } from './rw-snapshot.js';
import { readsData, type SnapshotEntry } from './snapshot-queue.js';
import type { VolumeCore } from './volume-core.js';

/** Where a block's bytes come from: zeros, a clone block, or a save slot. */
export type Source = 0 | 1 | 2;
export type Located = readonly [Source, number];

export const ZERO: Located = [0, 0];

/**
 * Fills `into` with the production bytes at `offset` (range already validated). During a restore, blocks
 * still pending read X(b), the restored value, straight from where the source keeps it (OP-13 step 7).
 */
export async function readProduction(core: VolumeCore, offset: number, into: Uint8Array): Promise<void> {
  const rs = core.restore;
  if (rs === null) {
    await readMapped(core, offset, into, (b) => (core.meta.test(core.granuleOf(b)) ? [1, b] : ZERO));
    return;
  }
  await readMapped(core, offset, into, (b) => {
    if (!core.meta.test(core.granuleOf(b))) return ZERO;
    return testBit(rs.pending, b) ? finalValueOf(core, rs, b) : [1, b];
  });
}

/** Fills `into` with snapshot `entry`'s bytes at `offset`; `pos` is its queue position. */
export async function readSnapshot(
  core: VolumeCore,
  entry: SnapshotEntry,
  pos: number,
  offset: number,
  into: Uint8Array,
): Promise<void> {
  await readMapped(core, offset, into, (b) => snapshotBlock(core, entry, pos, b));
}

/** OP-6 for one block of the snapshot at queue position `pos`. */
export function snapshotBlock(core: VolumeCore, entry: SnapshotEntry, pos: number, b: number): Located {
  if (!readsData(entry, b, core.granuleShift)) return ZERO;
  const slot = core.queue.resolve(pos, b);
  return slot >= 0 ? [2, slot] : [1, b];
}

/** OP-8: the RW snapshot's new data, else its base's OP-6, zeros where MBMR is invalid. */
export function rwBlock(core: VolumeCore, rw: RwEntry, b: number): Located {
  if (!rw.meta.test(core.granuleOf(b))) return ZERO;
  const slot = rw.map.get(b);
  if (slot >= 0) return [2, slot];
  const pos = core.queue.positionOf(rw.base);
  return pos < 0 ? ZERO : snapshotBlock(core, core.queue.entries[pos]!, pos, b);
}

/** Fills `into` with RW snapshot `rw`'s bytes at `offset` (range already validated). */
export async function readRw(core: VolumeCore, rw: RwEntry, offset: number, into: Uint8Array): Promise<void> {
  await readMapped(core, offset, into, (b) => rwBlock(core, rw, b));
}

/** X(b) of a pending block: the source's new data (RW) or its base's old data. Never the clone for b in D. */
export function finalValueOf(core: VolumeCore, rs: RestoreState, b: number): Located {
  if (rs.sourceKind === 'rw') {
    const rw = core.rws.get(rs.sourceId);
    if (rw !== undefined) {
      if (b >= rw.blockCount) return ZERO;
      const slot = rw.map.get(b);
      if (slot >= 0) return [2, slot];
      return oldValueOf(core, rw.base, b);
    }
  }
  return oldValueOf(core, rs.sourceId, b);
}

/** The base snapshot's value of b (cl.14's "old data"): its OP-6 read. */
export function oldValueOf(core: VolumeCore, baseId: number, b: number): Located {
  const pos = core.queue.positionOf(baseId);
  return pos < 0 ? ZERO : snapshotBlock(core, core.queue.entries[pos]!, pos, b);
}

/** Reads blocks [b0, b0 + out.length / bs) located by `map` into `out` (whole blocks). */
export async function readBlocks(
  core: VolumeCore,
  b0: number,
  out: Uint8Array,
  map: (b: number) => Located,
): Promise<void> {
  await readMapped(core, b0 * core.blockSize, out, map);
}

export async function readMapped(
  core: VolumeCore,
  offset: number,
  into: Uint8Array,
  map: (b: number) => Located,
): Promise<void> {
  const bs = core.blockSize;
  if (into.length === 0) return;
  const b0 = Math.floor(offset / bs);
  const b1 = Math.floor((offset + into.length - 1) / bs) + 1;
  const head = offset - b0 * bs;
  const aligned = head === 0 && into.length % bs === 0;
  const buf = aligned ? into : new Uint8Array((b1 - b0) * bs);
  // Resolve every block before the first device read, so that no await separates a block's resolution
  // from the reads issued for the same call (writers that change maps hold the data-path range lock or
  // wait for read epochs; see read-epochs.ts).
  const n = b1 - b0;
  const src = new Uint8Array(n);
  const pos = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const l = map(b0 + i);
    src[i] = l[0];
    pos[i] = l[1];
  }
  let i = 0;
  while (i < n) {
    let j = i + 1;
    while (j < n && src[j] === src[i] && (src[i] === 0 || pos[j] === pos[i]! + (j - i))) j++;
    const view = buf.subarray(i * bs, j * bs);
    if (src[i] === 0) view.fill(0);
    else await (src[i] === 1 ? core.clone : core.save).read(pos[i]!, view);
    i = j;
  }
  if (!aligned) into.set(buf.subarray(head, head + into.length));
}
