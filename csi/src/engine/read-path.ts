// SPDX-License-Identifier: Apache-2.0
// Production reads (OP-4) and RO snapshot reads (OP-6). Blocks of invalid granules read as zeros (§3.9).
// Consecutive blocks served from the same device at consecutive positions are read in one device call.

import { readsData, type SnapshotEntry } from './snapshot-queue.js';
import type { VolumeCore } from './volume-core.js';

type Source = 0 | 1 | 2; // zeros, clone block, save slot

/** Fills `into` with the production bytes at `offset` (range already validated). */
export async function readProduction(core: VolumeCore, offset: number, into: Uint8Array): Promise<void> {
  await readMapped(core, offset, into, (b) => (core.meta.test(core.granuleOf(b)) ? [1, b] : ZERO));
}

/** Fills `into` with snapshot `entry`'s bytes at `offset`; `pos` is its queue position. */
export async function readSnapshot(
  core: VolumeCore,
  entry: SnapshotEntry,
  pos: number,
  offset: number,
  into: Uint8Array,
): Promise<void> {
  const shift = core.granuleShift;
  await readMapped(core, offset, into, (b) => {
    if (!readsData(entry, b, shift)) return ZERO;
    const slot = core.queue.resolve(pos, b);
    return slot >= 0 ? [2, slot] : [1, b];
  });
}

const ZERO: readonly [Source, number] = [0, 0];

async function readMapped(
  core: VolumeCore,
  offset: number,
  into: Uint8Array,
  map: (b: number) => readonly [Source, number],
): Promise<void> {
  const bs = core.blockSize;
  if (into.length === 0) return;
  const b0 = Math.floor(offset / bs);
  const b1 = Math.floor((offset + into.length - 1) / bs) + 1;
  const head = offset - b0 * bs;
  const aligned = head === 0 && into.length % bs === 0;
  const buf = aligned ? into : new Uint8Array((b1 - b0) * bs);
  let i = 0;
  let [src, pos] = map(b0);
  while (i < b1 - b0) {
    let j = i + 1;
    let next: readonly [Source, number] | null = null;
    while (j < b1 - b0) {
      next = map(b0 + j);
      if (next[0] !== src || (src !== 0 && next[1] !== pos + (j - i))) break;
      next = null;
      j++;
    }
    const view = buf.subarray(i * bs, j * bs);
    if (src === 0) view.fill(0);
    else await (src === 1 ? core.clone : core.save).read(pos, view);
    i = j;
    if (next !== null) [src, pos] = next;
  }
  if (!aligned) into.set(buf.subarray(head, head + into.length));
}
