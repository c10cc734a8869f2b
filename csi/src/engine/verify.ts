// SPDX-License-Identifier: Apache-2.0
// Structural invariant checks over a VolumeCore (used by tests after every step; O(metadata)).
//   INV-8  queue ids strictly increase head -> tail
//   INV-4  every map entry is a block below the entry's size, in ascending order, with BM = 1 <=> MAP defined
//   INV-7  every referenced save slot is allocated and referenced exactly once; used slots = map entries
//   fast-path contract: settled[b] = 1 implies MBM_P valid for b and no snapshot needs b's before-image
//   INV-18 no meta bit is set past the last granule

import { nextSetBit } from './bits.js';
import type { VolumeCore } from './volume-core.js';

export function verifyCore(core: VolumeCore): void {
  const fail = (msg: string): never => {
    throw new Error(`invariant violated: ${msg}`);
  };
  let lastId = 0;
  const seen = new Set<number>();
  let entries = 0;
  for (const e of core.queue.entries) {
    if (e.id <= lastId) fail(`INV-8 snapshot ids not increasing at ${e.id}`);
    lastId = e.id;
    let last = -1;
    let count = 0;
    e.map.forEach((b, slot) => {
      if (b <= last) fail(`INV-4 snapshot ${e.id} map not ascending at ${b}`);
      if (b >= e.blockCount) fail(`INV-4 snapshot ${e.id} holds block ${b} past its size ${e.blockCount}`);
      if (!e.map.has(b) || e.map.get(b) !== slot) fail(`INV-4 snapshot ${e.id} bit/map mismatch at ${b}`);
      if (seen.has(slot)) fail(`INV-7 save slot ${slot} referenced twice`);
      if (!core.pool.isAllocated(slot)) fail(`INV-7 save slot ${slot} referenced but free`);
      seen.add(slot);
      last = b;
      count++;
    });
    if (count !== e.map.size) fail(`INV-4 snapshot ${e.id} size ${e.map.size} but ${count} entries`);
    entries += count;
  }
  if (core.pool.usedSlots !== entries) fail(`INV-7 ${core.pool.usedSlots} slots used but ${entries} map entries`);
  for (
    let b = nextSetBit(core.settled, 0, core.blockCount);
    b >= 0;
    b = nextSetBit(core.settled, b + 1, core.blockCount)
  ) {
    if (!core.meta.test(core.granuleOf(b))) fail(`settled block ${b} lies in an invalid granule`);
    if (core.queue.cowNeeded(b, core.granuleShift)) fail(`settled block ${b} still needs a before-image`);
  }
  const words = core.meta.words;
  if (nextSetBit(words, core.meta.granules, words.length * 32) >= 0) fail('INV-18 meta bit set past the last granule');
}
