// SPDX-License-Identifier: Apache-2.0
// Per-snapshot bit map BM_i and block map MAP_i (spec §3.5-§3.8) in one paged structure.
//
// Invariant (INV-4, INV-17): BM[b] = 1 <=> b in dom(MAP). Both are stored per page of 32768 blocks:
//
//   page table: pages[b >>> 15]  -> undefined (all bits 0, costs nothing: FIG. 43) | MapPage
//   MapPage:    bits[1024 words]      one bit per block of the page (the FIG. 43 bit page, 4 KiB)
//               before[128]           set bits in words [0, 8g): the rank directory
//               slots[count]          save-pool slot of the r-th set bit, in block order
//
//   MAP(b) = slots[rank(b)], rank(b) = before[w >>> 3] + popcount(bits[8(w>>>3) .. w-1]) + low bits of bits[w]
//
// This replaces FIG. 44's hash lists (see docs/adr): a lookup is one bit test plus at most 8 popcounts,
// an entry costs 4 bytes instead of (b, S, next), and the map iterates in ascending block order for free,
// which the differential and the OP-11 merge need. Inserting shifts the tail of one page's slot array.

import { clearRange as clearBits, lowMask, lowestBit, popcount32, type WordAllocator } from './bits.js';

export const MAP_PAGE_SHIFT = 15;
export const MAP_PAGE_BLOCKS = 1 << MAP_PAGE_SHIFT;
const PAGE_WORDS = MAP_PAGE_BLOCKS >>> 5;
const GROUP_SHIFT = 3;
const GROUPS = PAGE_WORDS >>> GROUP_SHIFT;
const PAGE_OVERHEAD_BYTES = 160; // estimated V8 object + typed-array headers per page

class MapPage {
  readonly bits: Uint32Array;
  readonly before = new Uint16Array(GROUPS);
  slots: Uint32Array;
  count = 0;

  constructor(bits: Uint32Array, capacity = 8) {
    this.bits = bits;
    this.slots = new Uint32Array(capacity);
  }

  rank(off: number): number {
    const w = off >>> 5;
    const g = w >>> GROUP_SHIFT;
    let r = this.before[g]!;
    for (let i = g << GROUP_SHIFT; i < w; i++) r += popcount32(this.bits[i]!);
    return r + popcount32(this.bits[w]! & lowMask(off & 31));
  }

  has(off: number): boolean {
    return ((this.bits[off >>> 5]! >>> (off & 31)) & 1) === 1;
  }

  insert(off: number, slot: number): void {
    const r = this.rank(off);
    if (this.count === this.slots.length) {
      const grown = new Uint32Array(Math.min(MAP_PAGE_BLOCKS, Math.max(8, Math.ceil(this.slots.length * 1.5))));
      grown.set(this.slots.subarray(0, this.count));
      this.slots = grown;
    }
    if (r < this.count) this.slots.copyWithin(r + 1, r, this.count);
    this.slots[r] = slot;
    this.count++;
    this.bits[off >>> 5]! |= 1 << (off & 31);
    for (let g = ((off >>> 5) >>> GROUP_SHIFT) + 1; g < GROUPS; g++) this.before[g]!++;
  }

  rebuildRanks(): void {
    let r = 0;
    for (let g = 0; g < GROUPS; g++) {
      this.before[g] = r;
      for (let i = g << GROUP_SHIFT; i < (g + 1) << GROUP_SHIFT; i++) r += popcount32(this.bits[i]!);
    }
    this.count = r;
  }

  bytes(): number {
    return this.bits.byteLength + this.before.byteLength + this.slots.byteLength + PAGE_OVERHEAD_BYTES;
  }
}

export class BlockMap {
  private pages: (MapPage | undefined)[] = [];
  private entries = 0;

  constructor(private readonly alloc: WordAllocator) {}

  /** Number of entries (= set bits). */
  get size(): number {
    return this.entries;
  }

  has(b: number): boolean {
    const page = this.pages[Math.floor(b / MAP_PAGE_BLOCKS)];
    return page !== undefined && page.has(b % MAP_PAGE_BLOCKS);
  }

  /** Save-pool slot of `b`, or -1 when `b` has no entry. */
  get(b: number): number {
    const page = this.pages[Math.floor(b / MAP_PAGE_BLOCKS)];
    if (page === undefined) return -1;
    const off = b % MAP_PAGE_BLOCKS;
    return page.has(off) ? page.slots[page.rank(off)]! : -1;
  }

  /** Inserts MAP(b) = slot and sets BM(b). `b` must not have an entry yet. */
  set(b: number, slot: number): void {
    const pi = Math.floor(b / MAP_PAGE_BLOCKS);
    let page = this.pages[pi];
    if (page === undefined) {
      page = new MapPage(this.alloc.words(PAGE_WORDS));
      this.pages[pi] = page;
    }
    const off = b % MAP_PAGE_BLOCKS;
    if (page.has(off)) throw new Error(`block map already holds block ${b}`);
    page.insert(off, slot);
    this.entries++;
  }

  /** Calls `fn(b, slot)` for every entry in ascending block order. */
  forEach(fn: (b: number, slot: number) => void): void {
    for (let pi = 0; pi < this.pages.length; pi++) {
      const page = this.pages[pi];
      if (page === undefined) continue;
      const base = pi * MAP_PAGE_BLOCKS;
      let r = 0;
      for (let w = 0; w < PAGE_WORDS; w++) {
        let word = page.bits[w]!;
        while (word !== 0) {
          const bit = lowestBit(word);
          word &= word - 1;
          fn(base + w * 32 + bit, page.slots[r++]!);
        }
      }
    }
  }

  /** The bit words of page `pi` (32768 blocks from pi * 32768), or undefined when the page is all zero. */
  pageBits(pi: number): Uint32Array | undefined {
    return this.pages[pi]?.bits;
  }

  /** Length of the page table (pages beyond it are absent). */
  get pageTableLength(): number {
    return this.pages.length;
  }

  /**
   * OP-11 step 2: moves every entry of this map into `dst`. Where `dst` already has the block, `dst` keeps
   * its entry and `onDuplicate` receives this map's slot (now unreferenced). Leaves this map empty.
   * A page that `dst` lacks moves as a whole (O(1)); otherwise the two pages merge in one linear pass.
   */
  mergeInto(dst: BlockMap, onDuplicate: (slot: number) => void): void {
    for (let pi = 0; pi < this.pages.length; pi++) {
      const src = this.pages[pi];
      if (src === undefined) continue;
      const target = dst.pages[pi];
      if (target === undefined) {
        dst.pages[pi] = src;
        dst.entries += src.count;
        continue;
      }
      dst.entries += mergePages(target, src, onDuplicate);
    }
    this.pages = [];
    this.entries = 0;
  }

  /** Removes every entry with block >= `limit`, passing its slot to `onFree`. */
  dropFrom(limit: number, onFree: (slot: number) => void): void {
    const first = Math.floor(limit / MAP_PAGE_BLOCKS);
    for (let pi = first; pi < this.pages.length; pi++) {
      const page = this.pages[pi];
      if (page === undefined) continue;
      const from = pi === first ? limit % MAP_PAGE_BLOCKS : 0;
      const keep = from === 0 ? 0 : page.rank(from);
      for (let r = keep; r < page.count; r++) onFree(page.slots[r]!);
      this.entries -= page.count - keep;
      if (keep === 0) {
        this.pages[pi] = undefined;
        continue;
      }
      const w = from >>> 5;
      page.bits[w]! &= lowMask(from & 31);
      page.bits.fill(0, w + 1);
      page.slots = page.slots.slice(0, keep);
      page.rebuildRanks();
    }
  }

  /** Removes every entry with `from` <= block < `to`, passing its slot to `onFree` (ascending block order). */
  removeRange(from: number, to: number, onFree: (slot: number) => void): void {
    if (to <= from) return;
    const p0 = Math.floor(from / MAP_PAGE_BLOCKS);
    const p1 = Math.floor((to - 1) / MAP_PAGE_BLOCKS);
    for (let pi = p0; pi <= p1 && pi < this.pages.length; pi++) {
      const page = this.pages[pi];
      if (page === undefined) continue;
      const lo = pi === p0 ? from % MAP_PAGE_BLOCKS : 0;
      const hi = pi === p1 ? ((to - 1) % MAP_PAGE_BLOCKS) + 1 : MAP_PAGE_BLOCKS;
      const r0 = page.rank(lo);
      const r1 = hi === MAP_PAGE_BLOCKS ? page.count : page.rank(hi);
      if (r1 === r0) continue;
      for (let r = r0; r < r1; r++) onFree(page.slots[r]!);
      this.entries -= r1 - r0;
      if (r1 - r0 === page.count) {
        this.pages[pi] = undefined;
        continue;
      }
      page.slots.copyWithin(r0, r1, page.count);
      clearBits(page.bits, lo, hi);
      page.rebuildRanks();
    }
  }

  /** Removes every entry, passing its slot to `onFree`. */
  clear(onFree: (slot: number) => void): void {
    this.forEach((_b, slot) => onFree(slot));
    this.pages = [];
    this.entries = 0;
  }

  /** Resident bytes of this map (bit pages, rank directories, slot arrays, estimated headers). */
  residentBytes(): number {
    let total = 64 + this.pages.length * 8;
    for (const page of this.pages) if (page !== undefined) total += page.bytes();
    return total;
  }

  /** Number of materialised pages. */
  presentPages(): number {
    let n = 0;
    for (const page of this.pages) if (page !== undefined) n++;
    return n;
  }
}

/** Merges `src` into `dst` (dst wins on duplicates); returns the number of entries added to dst. */
function mergePages(dst: MapPage, src: MapPage, onDuplicate: (slot: number) => void): number {
  const merged = new Uint32Array(dst.count + src.count);
  let n = 0;
  let rd = 0;
  let rs = 0;
  let added = 0;
  for (let w = 0; w < PAGE_WORDS; w++) {
    const d = dst.bits[w]!;
    const s = src.bits[w]!;
    let union = d | s;
    while (union !== 0) {
      const bit = lowestBit(union);
      const m = 1 << bit;
      union &= union - 1;
      if ((d & m) !== 0) {
        merged[n++] = dst.slots[rd++]!;
        if ((s & m) !== 0) onDuplicate(src.slots[rs++]!);
      } else {
        merged[n++] = src.slots[rs++]!;
        added++;
      }
    }
    dst.bits[w] = d | s;
  }
  dst.slots = merged.length === n ? merged : merged.slice(0, n);
  dst.rebuildRanks();
  return added;
}
