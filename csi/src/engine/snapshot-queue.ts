// SPDX-License-Identifier: Apache-2.0
// The snapshot queue (spec §3.4): entries in ascending id order, head = oldest, tail = youngest (INV-8),
// and the three walks over it: the copy-on-write decision (OP-2/OP-3), the snapshot read resolution
// (OP-6) and the delete-by-merge (OP-11).
//
// Validity of block b in entry E (used by the COW walk): E is valid (not invalidated by EC-5), b lies below
// E's size N_E, and either E uses the save-volume method (every block counts as valid) or E's frozen meta bit
// map has b's granule set. Reads and differentials always honour the frozen meta bit map (see docs/adr).

import type { BlockMap } from './block-map.js';
import type { SnapshotMethod, SnapshotState } from './layout.js';
import type { FrozenMeta } from './meta-bitmap.js';

export interface SnapshotEntry {
  readonly id: number;
  readonly method: SnapshotMethod;
  /** N_i: the volume size in blocks when the snapshot was taken. */
  readonly blockCount: number;
  readonly createdAt: number;
  readonly tag: string;
  state: SnapshotState;
  /** MBM_i, frozen at creation. */
  readonly meta: FrozenMeta;
  /** BM_i and MAP_i. */
  readonly map: BlockMap;
  /** In-memory pins (readers, copy jobs) that forbid deletion (EC-8); persistent dependants are derived. */
  pins: number;
  /** SNAP_FLAG_* bits (persisted). */
  flags: number;
}

/** Internal snapshot (restore point, base of a clone of the live volume, copy source): not user-visible. */
export const SNAP_FLAG_HIDDEN = 1;
/** Delete by OP-11 as soon as nothing depends on it (deferred deletion, EC-8). */
export const SNAP_FLAG_AUTO_DELETE = 2;
/** Restore point of a running in-place restore: not readable until the restore completes (OP-13). */
export const SNAP_FLAG_RESTORING = 4;
export const SNAP_FLAGS_ALL = 7;

export class SnapshotQueue {
  private list: SnapshotEntry[] = [];

  get length(): number {
    return this.list.length;
  }

  get entries(): readonly SnapshotEntry[] {
    return this.list;
  }

  get tail(): SnapshotEntry | undefined {
    return this.list[this.list.length - 1];
  }

  /** Position of snapshot `id` in the queue, or -1. */
  positionOf(id: number): number {
    let lo = 0;
    let hi = this.list.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const e = this.list[mid]!;
      if (e.id === id) return mid;
      if (e.id < id) lo = mid + 1;
      else hi = mid - 1;
    }
    return -1;
  }

  find(id: number): SnapshotEntry | undefined {
    const pos = this.positionOf(id);
    return pos < 0 ? undefined : this.list[pos];
  }

  /** OP-1 step 5: the new entry becomes the tail; ids strictly increase. */
  append(entry: SnapshotEntry): void {
    const tail = this.tail;
    if (tail !== undefined && entry.id <= tail.id) throw new Error(`snapshot id ${entry.id} <= tail ${tail.id}`);
    this.list.push(entry);
  }

  /**
   * OP-2/OP-3: whether a production write of block `b` must first save the clone's before-image into the
   * tail. Walks tail -> head: an entry holding b (BM = 1) ends the walk (older readers stop there); the first
   * entry for which b is valid needs the save. `fromPos` starts the walk lower (OP-13's pre-restore tail T0).
   */
  cowNeeded(b: number, granuleShift: number, fromPos = this.list.length - 1): boolean {
    for (let i = fromPos; i >= 0; i--) {
      const e = this.list[i]!;
      if (e.map.has(b)) return false;
      if (validForCow(e, b, granuleShift)) return true;
    }
    return false;
  }

  /** EC-5: every valid entry whose reads of `b` reach the clone (those that lose b if no save is made). */
  needyEntries(b: number, granuleShift: number, fromPos = this.list.length - 1): SnapshotEntry[] {
    const out: SnapshotEntry[] = [];
    for (let i = fromPos; i >= 0; i--) {
      const e = this.list[i]!;
      if (e.map.has(b)) break;
      if (validForCow(e, b, granuleShift)) out.push(e);
    }
    return out;
  }

  /** OP-6 steps 2-5 from queue position `pos`: the save slot holding b for that snapshot, or -1 (clone). */
  resolve(pos: number, b: number): number {
    for (let i = pos; i < this.list.length; i++) {
      const slot = this.list[i]!.map.get(b);
      if (slot >= 0) return slot;
    }
    return -1;
  }

  /**
   * OP-11's data half without the removal (EC-5 sacrifice, issue 15): snapshot `id`, already invalid, gives up
   * its save slots. Its map merges into the next older entry as in remove() (the older entry keeps its own
   * where both hold a block; the younger slot is freed), or is freed at the head. Readers of every older
   * entry resolve exactly as before; the entry itself stays in the queue, invalid, holding nothing, and the
   * COW walk passes over it. Returns the number of slots freed.
   */
  release(id: number, onFree: (slot: number) => void): number {
    const pos = this.positionOf(id);
    if (pos < 0) throw new Error(`snapshot ${id} is not in the queue`);
    const entry = this.list[pos]!;
    let freed = 0;
    const free = (slot: number): void => {
      freed++;
      onFree(slot);
    };
    const older = pos > 0 ? this.list[pos - 1] : undefined;
    if (older === undefined) entry.map.clear(free);
    else {
      entry.map.dropFrom(older.blockCount, free);
      entry.map.mergeInto(older.map, free);
    }
    return freed;
  }

  /**
   * OP-11: removes snapshot `id`. The head's slots are freed; any other entry's map merges into the next
   * older entry, which keeps its own entry where both hold a block (the younger slot is freed). Freed slots
   * are passed to `onFree` (the live path quarantines them). Returns the entry that received the merge.
   */
  remove(id: number, onFree: (slot: number) => void): SnapshotEntry | undefined {
    const pos = this.positionOf(id);
    if (pos < 0) throw new Error(`snapshot ${id} is not in the queue`);
    const entry = this.list[pos]!;
    const older = pos > 0 ? this.list[pos - 1] : undefined;
    if (older === undefined) entry.map.forEach((_b, slot) => onFree(slot));
    else {
      // Entries past the older snapshot's size serve no reader: every entry older than it is no larger.
      entry.map.dropFrom(older.blockCount, onFree);
      entry.map.mergeInto(older.map, onFree);
    }
    this.list.splice(pos, 1);
    return older;
  }
}

export function validForCow(e: SnapshotEntry, b: number, granuleShift: number): boolean {
  if (e.state !== 'valid' || b >= e.blockCount) return false;
  return e.method === 'save-volume' || e.meta.test(Math.floor(b / 2 ** granuleShift));
}

/** Whether snapshot `e` reads real data (not zeros) for block b: b < N_e and its frozen granule is valid. */
export function readsData(e: SnapshotEntry, b: number, granuleShift: number): boolean {
  return b < e.blockCount && e.meta.test(Math.floor(b / 2 ** granuleShift));
}
