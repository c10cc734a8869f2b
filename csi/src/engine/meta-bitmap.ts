// SPDX-License-Identifier: Apache-2.0
// Meta bit maps (spec §3.9, FIG. 45/46): 1 = valid (in use), 0 = invalid; one bit per granule of
// 2^k blocks, bit address g = floor(b / 2^k). A granule bit is set when any block in it is written and
// cleared only by a discard that covers the whole granule (OP-5), so a granule holding a valid block is
// never 0 (INV-18). Reads of invalid granules return zeros.
//
// ProductionMeta (MBM_P) is flat: whole 4 KiB pages of 32768 granules in one array from the injected
// allocator, so worker threads can test it in shared memory. It tracks which pages changed since the last
// freeze. FrozenMeta (MBM_i) is the immutable copy taken at snapshot creation (OP-1 step 3): a page table
// whose entries are undefined (all zero), FULL_META_PAGE (all one) or a private copy. Pages that did not
// change since the previous freeze are shared with it, so a freeze costs O(changed pages), and a snapshot
// of a fully used or untouched region costs nothing.

import { allOnes, allZero, clearRange, setRange, testBit, type WordAllocator } from './bits.js';

export const META_PAGE_GRANULES = 32768;
export const META_PAGE_WORDS = META_PAGE_GRANULES >>> 5;

/** Shared sentinel for an all-valid page. Never mutated. */
export const FULL_META_PAGE: Uint32Array = new Uint32Array(META_PAGE_WORDS).fill(0xffffffff);

export function metaPagesFor(granules: number): number {
  return Math.max(1, Math.ceil(granules / META_PAGE_GRANULES));
}

export class FrozenMeta {
  constructor(
    readonly granuleShift: number,
    readonly granules: number,
    readonly pages: readonly (Uint32Array | undefined)[],
  ) {}

  test(g: number): boolean {
    if (g >= this.granules) return false;
    const page = this.pages[Math.floor(g / META_PAGE_GRANULES)];
    if (page === undefined) return false;
    return page === FULL_META_PAGE || testBit(page, g % META_PAGE_GRANULES);
  }

  /** Distinct non-sentinel pages (for resident-size accounting). */
  ownPages(): Uint32Array[] {
    return this.pages.filter((p): p is Uint32Array => p !== undefined && p !== FULL_META_PAGE);
  }
}

export class ProductionMeta {
  private dirty: Uint8Array;

  private constructor(
    readonly granuleShift: number,
    private granuleCount: number,
    private bits: Uint32Array,
  ) {
    this.dirty = new Uint8Array(metaPagesFor(granuleCount)).fill(1);
  }

  static create(granuleShift: number, granules: number, alloc: WordAllocator): ProductionMeta {
    return new ProductionMeta(granuleShift, granules, alloc.words(metaPagesFor(granules) * META_PAGE_WORDS));
  }

  get granules(): number {
    return this.granuleCount;
  }

  /** The live words (shared with workers when the allocator is shared). Bits past `granules` stay 0. */
  get words(): Uint32Array {
    return this.bits;
  }

  get pageCount(): number {
    return this.dirty.length;
  }

  test(g: number): boolean {
    return g < this.granuleCount && testBit(this.bits, g);
  }

  /** Sets granules [g0, g1); returns true when any bit changed. */
  setRange(g0: number, g1: number): boolean {
    return this.update(g0, Math.min(g1, this.granuleCount), true);
  }

  /** Clears granules [g0, g1); returns true when any bit changed. */
  clearRange(g0: number, g1: number): boolean {
    return this.update(g0, Math.min(g1, this.granuleCount), false);
  }

  private update(g0: number, g1: number, value: boolean): boolean {
    if (g1 <= g0) return false;
    let changed = false;
    for (let g = g0; g < g1 && !changed; g++) changed = testBit(this.bits, g) !== value;
    if (!changed) return false;
    if (value) setRange(this.bits, g0, g1);
    else clearRange(this.bits, g0, g1);
    for (let p = Math.floor(g0 / META_PAGE_GRANULES); p <= Math.floor((g1 - 1) / META_PAGE_GRANULES); p++) {
      this.dirty[p] = 1;
    }
    return true;
  }

  /** Grows to `granules`; new granules are invalid (spec §3.2, [002 L2480-2484]). Replaces `words`. */
  grow(granules: number, alloc: WordAllocator): void {
    if (granules <= this.granuleCount) return;
    const pages = metaPagesFor(granules);
    if (pages > this.dirty.length) {
      const bits = alloc.words(pages * META_PAGE_WORDS);
      bits.set(this.bits);
      this.bits = bits;
      const dirty = new Uint8Array(pages).fill(1);
      this.dirty = dirty;
    }
    this.granuleCount = granules;
  }

  /** Loads page contents (recovery); `page` is undefined (zero), FULL_META_PAGE or a copy. */
  loadPage(pi: number, page: Uint32Array | undefined): void {
    const base = pi * META_PAGE_WORDS;
    if (page === undefined) this.bits.fill(0, base, base + META_PAGE_WORDS);
    else this.bits.set(page, base);
    this.dirty[pi] = 1;
  }

  pageWords(pi: number): Uint32Array {
    return this.bits.subarray(pi * META_PAGE_WORDS, (pi + 1) * META_PAGE_WORDS);
  }

  isDirty(pi: number): boolean {
    return this.dirty[pi] === 1;
  }

  clearDirty(): void {
    this.dirty.fill(0);
  }

  residentBytes(): number {
    return this.bits.byteLength + this.dirty.byteLength;
  }
}

/** Takes frozen copies of MBM_P, sharing unchanged pages with the previous copy. */
export class MetaFreezer {
  private last: FrozenMeta | null = null;

  constructor(private readonly alloc: WordAllocator) {}

  /** Seeds page sharing after recovery (pages are then shared when their contents are equal). */
  seed(previous: FrozenMeta | null): void {
    this.last = previous;
  }

  freeze(meta: ProductionMeta): FrozenMeta {
    const last = this.last;
    const pages: (Uint32Array | undefined)[] = new Array(meta.pageCount);
    for (let pi = 0; pi < meta.pageCount; pi++) {
      const prev = last !== null && last.granuleShift === meta.granuleShift ? last.pages[pi] : undefined;
      const inPrev = last !== null && pi < last.pages.length && last.granuleShift === meta.granuleShift;
      if (inPrev && !meta.isDirty(pi)) {
        pages[pi] = prev;
        continue;
      }
      const words = meta.pageWords(pi);
      if (allZero(words)) pages[pi] = undefined;
      else if (allOnes(words)) pages[pi] = FULL_META_PAGE;
      else if (prev !== undefined && prev !== FULL_META_PAGE && equalWords(prev, words)) pages[pi] = prev;
      else {
        const copy = this.alloc.words(META_PAGE_WORDS);
        copy.set(words);
        pages[pi] = copy;
      }
    }
    meta.clearDirty();
    const frozen = new FrozenMeta(meta.granuleShift, meta.granules, pages);
    this.last = frozen;
    return frozen;
  }
}

function equalWords(a: Uint32Array, b: Uint32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
