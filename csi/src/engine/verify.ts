// SPDX-License-Identifier: Apache-2.0
// Structural invariant checks over a VolumeCore (used by tests after every step; O(metadata)).
//   INV-8  queue ids strictly increase head -> tail
//   INV-4  every map entry is a block below the entry's size, in ascending order, with BM = 1 <=> MAP defined
//   INV-7  every referenced save slot is allocated and referenced exactly once; used slots = map entries
//   fast-path contract: settled[b] = 1 implies MBM_P valid for b and no snapshot needs b's before-image
//   INV-18 no meta bit is set past the last granule
//   RW     base exists and is not larger; entries below N_R and in valid MBMR granules; slots as INV-7
//   OP-13  restore point present and flagged; first ⊆ pending; counts match; settled blocks are not pending

import { nextSetBit, popcount32, testBit } from './bits.js';
import { SNAP_FLAG_RESTORING } from './snapshot-queue.js';
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
  for (const rw of core.rws.values()) {
    const base = core.queue.find(rw.base);
    if (base === undefined) fail(`RW snapshot ${rw.id} has no base ${rw.base}`);
    if (rw.blockCount < base!.blockCount) fail(`RW snapshot ${rw.id} is smaller than its base`);
    if (rw.meta.granules !== core.granulesFor(rw.blockCount)) fail(`RW snapshot ${rw.id} MBMR size`);
    let last = -1;
    let count = 0;
    rw.map.forEach((b, slot) => {
      if (b <= last) fail(`INV-4 RW snapshot ${rw.id} map not ascending at ${b}`);
      if (b >= rw.blockCount) fail(`INV-4 RW snapshot ${rw.id} holds block ${b} past its size`);
      if (!rw.meta.test(core.granuleOf(b))) fail(`RW snapshot ${rw.id} holds block ${b} of an invalid granule`);
      if (seen.has(slot)) fail(`INV-7 save slot ${slot} referenced twice (RW ${rw.id})`);
      if (!core.pool.isAllocated(slot)) fail(`INV-7 save slot ${slot} referenced but free (RW ${rw.id})`);
      seen.add(slot);
      last = b;
      count++;
    });
    if (count !== rw.map.size) fail(`INV-4 RW snapshot ${rw.id} size mismatch`);
    entries += count;
  }
  if (core.pool.usedSlots !== entries) fail(`INV-7 ${core.pool.usedSlots} slots used but ${entries} map entries`);
  const rs = core.restore;
  if (rs !== null) {
    const pos = core.queue.positionOf(rs.rpId);
    if (pos <= 0) fail('OP-13 restore point or pre-restore tail missing');
    if ((core.queue.entries[pos]!.flags & SNAP_FLAG_RESTORING) === 0) fail('OP-13 restore point not flagged');
    if (pos !== core.queue.length - 1) fail('OP-13 restore point is not the tail');
    let pending = 0;
    let first = 0;
    for (let w = 0; w < rs.pending.length; w++) {
      pending += popcount32(rs.pending[w]!);
      first += popcount32(rs.first[w]!);
      if ((rs.first[w]! & ~rs.pending[w]!) !== 0) fail('OP-13 first-pass block not pending');
    }
    if (pending !== rs.pendingCount || first !== rs.firstCount) fail('OP-13 restore counts mismatch');
    if (nextSetBit(rs.pending, core.blockCount, rs.pending.length * 32) >= 0) fail('OP-13 pending past the end');
  }
  for (
    let b = nextSetBit(core.settled, 0, core.blockCount);
    b >= 0;
    b = nextSetBit(core.settled, b + 1, core.blockCount)
  ) {
    if (!core.meta.test(core.granuleOf(b))) fail(`settled block ${b} lies in an invalid granule`);
    if (rs !== null && testBit(rs.pending, b)) fail(`settled block ${b} is still to be restored`);
    if (core.queue.cowNeeded(b, core.granuleShift)) fail(`settled block ${b} still needs a before-image`);
  }
  const words = core.meta.words;
  if (nextSetBit(words, core.meta.granules, words.length * 32) >= 0) fail('INV-18 meta bit set past the last granule');
}
