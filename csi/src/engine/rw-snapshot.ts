// SPDX-License-Identifier: Apache-2.0
// RW snapshots (spec §3.11, OP-7..OP-10): a writable view based on an RO snapshot `base` of the queue.
//
//   map   BMR / MAPR: blocks holding new data of the RW snapshot, each in its own save-pool slot (the shared
//         save pool, [000 cl.10, cl.27]); BMR[b] = 1 <=> b in dom(MAPR) as for snapshots (INV-4).
//   meta  MBMR: a copy of MBM_base taken at creation (or refresh), afterwards set by RW writes and cleared
//         by RW discards of whole granules. Blocks of invalid granules read as zeros (§3.9).
//
// Read rule (OP-8): MBMR[g(b)] = 0 -> zeros; BMR[b] = 1 -> SV[MAPR[b]]; else OP-6(base, b).
// Invariant (checked in verify.ts): MBMR[g(b)] = 1 and BMR[b] = 0 imply that the base reads data for b
// (b < N_base and MBM_base[g(b)] = 1), so every block an RW snapshot reads through its base is one the
// copy-on-write walk protects (the base is a valid queue entry with b valid).
//
// RwMeta is a page table like FrozenMeta whose pages start shared with the frozen map they were copied
// from and are copied on the first change (FULL_META_PAGE and frozen pages are never mutated).

import { allOnes, allZero, clearRange, setRange, testBit, type WordAllocator } from './bits.js';
import type { BlockMap } from './block-map.js';
import { type FrozenMeta, FULL_META_PAGE, META_PAGE_GRANULES, META_PAGE_WORDS, metaPagesFor } from './meta-bitmap.js';

export class RwMeta {
  private owned: boolean[];

  private constructor(
    readonly granuleShift: number,
    private granuleCount: number,
    readonly pages: (Uint32Array | undefined)[],
    private readonly alloc: WordAllocator,
  ) {
    this.owned = pages.map(() => false);
  }

  /** MBMR := MBM_base, extended (invalid) to `granules`. Pages are shared until changed. */
  static fromFrozen(frozen: FrozenMeta, granules: number, alloc: WordAllocator): RwMeta {
    const pages: (Uint32Array | undefined)[] = [];
    for (let pi = 0; pi < metaPagesFor(granules); pi++) pages.push(frozen.pages[pi]);
    const m = new RwMeta(frozen.granuleShift, granules, pages, alloc);
    // Granules past the base's own count must read invalid: clip a shared last page when needed.
    if (frozen.granules < granules) m.clearRange(frozen.granules, granules);
    return m;
  }

  /** A map loaded from a checkpoint; the pages it holds become its own. */
  static load(
    granuleShift: number,
    granules: number,
    pages: (Uint32Array | undefined)[],
    alloc: WordAllocator,
  ): RwMeta {
    return new RwMeta(granuleShift, granules, pages, alloc);
  }

  get granules(): number {
    return this.granuleCount;
  }

  test(g: number): boolean {
    if (g >= this.granuleCount) return false;
    const page = this.pages[Math.floor(g / META_PAGE_GRANULES)];
    if (page === undefined) return false;
    return page === FULL_META_PAGE || testBit(page, g % META_PAGE_GRANULES);
  }

  /** Sets granules [g0, g1); returns true when any bit changed. */
  setRange(g0: number, g1: number): boolean {
    return this.update(g0, Math.min(g1, this.granuleCount), true);
  }

  /** Clears granules [g0, g1); returns true when any bit changed. */
  clearRange(g0: number, g1: number): boolean {
    return this.update(g0, Math.min(g1, this.granuleCount), false);
  }

  /** Grows to `granules`; the new ones are invalid. */
  grow(granules: number): void {
    if (granules <= this.granuleCount) return;
    while (this.pages.length < metaPagesFor(granules)) {
      this.pages.push(undefined);
      this.owned.push(false);
    }
    this.granuleCount = granules;
  }

  /** Pages this map owns (not shared with a frozen map), for resident-size accounting. */
  ownPages(): Uint32Array[] {
    return this.pages.filter((p, i): p is Uint32Array => p !== undefined && this.owned[i] === true);
  }

  private update(g0: number, g1: number, value: boolean): boolean {
    let changed = false;
    for (let g = g0; g < g1;) {
      const pi = Math.floor(g / META_PAGE_GRANULES);
      const end = Math.min(g1, (pi + 1) * META_PAGE_GRANULES);
      const page = this.pages[pi];
      const off0 = g - pi * META_PAGE_GRANULES;
      const off1 = end - pi * META_PAGE_GRANULES;
      if (page === undefined ? value : page === FULL_META_PAGE ? !value : rangeDiffers(page, off0, off1, value)) {
        const own = this.ownPage(pi);
        if (value) setRange(own, off0, off1);
        else clearRange(own, off0, off1);
        if (allZero(own)) {
          this.pages[pi] = undefined;
          this.owned[pi] = false;
        } else if (allOnes(own)) {
          this.pages[pi] = FULL_META_PAGE;
          this.owned[pi] = false;
        }
        changed = true;
      }
      g = end;
    }
    return changed;
  }

  private ownPage(pi: number): Uint32Array {
    const page = this.pages[pi];
    if (page !== undefined && this.owned[pi] === true) return page;
    const copy = this.alloc.words(META_PAGE_WORDS);
    if (page === FULL_META_PAGE) copy.fill(0xffffffff);
    else if (page !== undefined) copy.set(page);
    this.pages[pi] = copy;
    this.owned[pi] = true;
    return copy;
  }
}

function rangeDiffers(page: Uint32Array, from: number, to: number, value: boolean): boolean {
  for (let i = from; i < to; i++) if (testBit(page, i) !== value) return true;
  return false;
}

export interface RwEntry {
  readonly id: number;
  /** Id of the RO snapshot this RW snapshot is based on (changes on refresh). */
  base: number;
  /** N_R: size in blocks (at least the base's size when created or refreshed; grows with resizeRw). */
  blockCount: number;
  readonly createdAt: number;
  /** Free text kept across refreshes (the RW snapshot's identity, e.g. a CSI volume id). */
  readonly tag: string;
  /** BMR and MAPR. */
  map: BlockMap;
  /** MBMR. */
  meta: RwMeta;
  /** In-memory pins (hydration, other readers) that forbid deleting or refreshing it. */
  pins: number;
  /** Engine writes of a block in flight (EC-2 within this RW snapshot). */
  readonly busy: Map<number, Promise<void>>;
}
