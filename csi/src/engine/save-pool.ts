// SPDX-License-Identifier: Apache-2.0
// Allocator of the shared save pool (spec §3.3): slot s is block s of save.img. Slots are handed out from
// a free list (reused slots) or by bumping the high-water mark, up to an optional quota (EC-5).
//
// The quota bounds the slots holding before-images of snapshots (EC-5). Slots holding an RW snapshot's own
// data (a thin clone's writes, kind 'rw') do not count against it and are never refused by it: they are a
// PVC's data, not snapshot overhead, and another volume's writes must not make them fail (issue 15); only
// the disk bounds them.
//
// Invariants (INV-7): a slot is allocated iff exactly one map entry references it. A slot freed by a
// metadata change (OP-11) sits in quarantine until the journal frame recording that change is durable;
// only then may a new before-image overwrite it, otherwise a crash could resurrect the old entry pointing
// at foreign data. The allocator is rebuilt from the maps on open, so it is never persisted itself.

export type SlotKind = 'save' | 'rw';

export class SavePool {
  private allocated: Uint32Array;
  /** Slots of kind 'rw' (a subset of `allocated`). */
  private rwBits: Uint32Array;
  private rwUsed = 0;
  private free: number[] = [];
  private quarantine: number[] = [];
  private highWater = 0;
  private used = 0;

  constructor(private quota: number | null) {
    this.allocated = new Uint32Array(64);
    this.rwBits = new Uint32Array(64);
  }

  /** Slots in use (referenced by a map entry). */
  get usedSlots(): number {
    return this.used;
  }

  /** Slots holding before-images (what the quota bounds). */
  get saveSlots(): number {
    return this.used - this.rwUsed;
  }

  /** Slots holding RW snapshots' own data. */
  get rwSlots(): number {
    return this.rwUsed;
  }

  /** Size of the pool in slots: every slot below it exists in save.img (allocated or free). */
  get sizeSlots(): number {
    return this.highWater;
  }

  get quotaSlots(): number | null {
    return this.quota;
  }

  setQuota(quota: number | null): void {
    this.quota = quota;
  }

  /**
   * Whether a before-image slot would be refused by the quota now: the before-images reached it, or no free
   * slot is left and the pool without its RW slots (quarantined slots included) already has the quota's size.
   */
  get atQuota(): boolean {
    if (this.quota === null) return false;
    if (this.saveSlots >= this.quota) return true;
    return this.free.length === 0 && this.highWater - this.rwUsed >= this.quota;
  }

  /**
   * A free slot, or -1 when a before-image ('save') would exceed the quota (the caller applies EC-5). RW data
   * ('rw') is never refused here.
   */
  alloc(kind: SlotKind = 'save'): number {
    if (kind === 'save' && this.atQuota) return -1;
    let slot = this.free.pop();
    if (slot === undefined) {
      slot = this.highWater++;
      this.ensure(slot);
    }
    this.mark(slot, kind);
    return slot;
  }

  /** Returns a slot whose allocation was not used (no map entry was made). */
  cancel(slot: number): void {
    this.release(slot);
    this.free.push(slot);
  }

  /** Frees a slot whose map entry was removed; reusable after `commitFrees()`. */
  freeLater(slot: number): void {
    this.release(slot);
    this.quarantine.push(slot);
  }

  /** The frame recording the frees is durable: quarantined slots become reusable. */
  commitFrees(): void {
    for (const slot of this.quarantine) this.free.push(slot);
    this.quarantine = [];
  }

  /** Reusable free slots as ascending runs [start, count] (quarantined ones excluded). */
  freeRuns(): [number, number][] {
    const sorted = [...this.free].sort((a, b) => a - b);
    const runs: [number, number][] = [];
    for (const s of sorted) {
      const last = runs[runs.length - 1];
      if (last !== undefined && last[0] + last[1] === s) last[1]++;
      else runs.push([s, 1]);
    }
    return runs;
  }

  isAllocated(slot: number): boolean {
    return slot < this.highWater && ((this.allocated[slot >>> 5]! >>> (slot & 31)) & 1) === 1;
  }

  /** Recovery: marks a slot referenced by a loaded map entry; returns false when it was already marked. */
  markReferenced(slot: number, kind: SlotKind = 'save'): boolean {
    if (slot >= this.highWater) {
      this.highWater = slot + 1;
      this.ensure(slot);
    }
    if (this.isAllocated(slot)) return false;
    this.mark(slot, kind);
    return true;
  }

  /** Recovery: sets the pool size and rebuilds the free list from the allocation bits. */
  finishRebuild(sizeSlots: number): void {
    this.highWater = Math.max(this.highWater, sizeSlots);
    this.ensure(this.highWater);
    this.free = [];
    for (let s = this.highWater - 1; s >= 0; s--) if (!this.isAllocated(s)) this.free.push(s);
    this.quarantine = [];
  }

  /** Drops free slots at the top of the pool; returns the new size. Quarantine must be empty. */
  trimTail(): number {
    if (this.quarantine.length > 0) return this.highWater;
    let top = this.highWater;
    while (top > 0 && !this.isAllocated(top - 1)) top--;
    if (top !== this.highWater) {
      this.highWater = top;
      this.free = this.free.filter((s) => s < top);
    }
    return this.highWater;
  }

  private mark(slot: number, kind: SlotKind): void {
    this.allocated[slot >>> 5]! |= 1 << (slot & 31);
    this.used++;
    if (kind === 'rw') {
      this.rwBits[slot >>> 5]! |= 1 << (slot & 31);
      this.rwUsed++;
    }
  }

  private release(slot: number): void {
    if (!this.isAllocated(slot)) throw new Error(`save slot ${slot} is not allocated`);
    this.allocated[slot >>> 5]! &= ~(1 << (slot & 31));
    this.used--;
    if (((this.rwBits[slot >>> 5]! >>> (slot & 31)) & 1) === 1) {
      this.rwBits[slot >>> 5]! &= ~(1 << (slot & 31));
      this.rwUsed--;
    }
  }

  private ensure(slot: number): void {
    const need = (slot >>> 5) + 1;
    if (need <= this.allocated.length) return;
    const size = Math.max(need, this.allocated.length * 2);
    const grown = new Uint32Array(size);
    grown.set(this.allocated);
    this.allocated = grown;
    const rw = new Uint32Array(size);
    rw.set(this.rwBits);
    this.rwBits = rw;
  }

  residentBytes(): number {
    return this.allocated.byteLength + this.rwBits.byteLength + (this.free.length + this.quarantine.length) * 8;
  }
}
