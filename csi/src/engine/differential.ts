// SPDX-License-Identifier: Apache-2.0
// Snapshot differential (OP-14/OP-16) and allocated extents (OP-18), computed one bit-map page (32768
// blocks) at a time without reading any data. For a pair L < M (M may be the live volume), block b is
// reported iff b is valid in M and, for some entry I with L <= I < M, BM_I[b] = 1 or b is not valid in I
// (FIG. 40 steps 665-671; blocks past N_I count as not valid, EC-7). Output is ascending and coalesced into
// extents. It may over-include (a rewrite with equal bytes) but never omits a block that differs in M
// (INV-9), and it never reports a block that M does not use.

import { lowMask, nextClearBit, nextSetBit } from './bits.js';
import { MAP_PAGE_BLOCKS } from './block-map.js';
import { FULL_META_PAGE, type FrozenMeta, META_PAGE_GRANULES, type ProductionMeta } from './meta-bitmap.js';
import type { RwMeta } from './rw-snapshot.js';
import type { SnapshotEntry } from './snapshot-queue.js';

const PAGE_WORDS = MAP_PAGE_BLOCKS >>> 5;

export interface BlockExtent {
  block: number;
  count: number;
}

/** The validity side of a view: a frozen snapshot map or the production map, with its size in blocks. */
export interface ValiditySource {
  readonly meta: FrozenMeta | ProductionMeta | RwMeta;
  readonly blockCount: number;
}

export interface ExtentQuery {
  /** First block to consider. */
  startBlock?: number;
  /** Stop after this many extents. */
  maxExtents?: number;
}

function metaPage(meta: FrozenMeta | ProductionMeta | RwMeta, gpi: number): Uint32Array | undefined {
  if ('pages' in meta) return meta.pages[gpi];
  return gpi < meta.pageCount ? meta.pageWords(gpi) : undefined;
}

/**
 * Writes into `out` the validity of blocks [p * 32768, (p + 1) * 32768) (bits past `blockCount` clear).
 * Returns 0 when none is valid, 2 when all are valid, 1 otherwise.
 */
export function validityPage(src: ValiditySource, shift: number, p: number, out: Uint32Array): 0 | 1 | 2 {
  const first = p * MAP_PAGE_BLOCKS;
  if (first >= src.blockCount) return 0;
  const perGranule = 2 ** shift;
  const g0 = Math.floor(first / perGranule);
  const page = metaPage(src.meta, Math.floor(g0 / META_PAGE_GRANULES));
  const granuleLimit = src.meta.granules;
  if (page === undefined) return 0;
  const end = Math.min(MAP_PAGE_BLOCKS, src.blockCount - first);
  if (page === FULL_META_PAGE) {
    out.fill(0xffffffff);
  } else {
    const goff = g0 % META_PAGE_GRANULES;
    if (shift === 0) out.set(page.subarray(goff >>> 5, (goff >>> 5) + PAGE_WORDS));
    else expand(page, goff, shift, out);
  }
  if (g0 + Math.ceil(end / perGranule) > granuleLimit) clipFrom(out, (granuleLimit - g0) * perGranule);
  if (end < MAP_PAGE_BLOCKS) clipFrom(out, end);
  let any = 0;
  let all = -1;
  for (let w = 0; w < PAGE_WORDS; w++) {
    any |= out[w]!;
    all &= out[w]!;
  }
  if (any === 0) return 0;
  return all === -1 ? 2 : 1;
}

function expand(page: Uint32Array, goff: number, shift: number, out: Uint32Array): void {
  const perWord = shift >= 5 ? 1 : 32 >>> shift;
  const bitsPer = shift >= 5 ? 32 : 1 << shift;
  const mask = lowMask(bitsPer);
  for (let w = 0; w < PAGE_WORDS; w++) {
    const g = goff + Math.floor((w * 32) / 2 ** shift);
    let word = 0;
    for (let j = 0; j < perWord; j++) {
      const gj = g + j;
      if ((page[gj >>> 5]! >>> (gj & 31)) & 1) word |= mask << (j * bitsPer);
    }
    out[w] = word;
  }
}

function clipFrom(words: Uint32Array, fromBit: number): void {
  if (fromBit >= MAP_PAGE_BLOCKS) return;
  const w = Math.max(0, fromBit) >>> 5;
  if (fromBit > 0) words[w]! &= lowMask(fromBit & 31);
  words.fill(0, fromBit > 0 ? w + 1 : 0);
}

class ExtentSink {
  readonly extents: BlockExtent[] = [];
  private start = -1;
  private end = -1;
  constructor(private readonly max: number) {}

  get full(): boolean {
    return this.extents.length >= this.max;
  }

  add(block: number, count: number): void {
    if (block === this.end) {
      this.end += count;
      return;
    }
    this.close();
    this.start = block;
    this.end = block + count;
  }

  close(): void {
    if (this.start >= 0 && this.extents.length < this.max) {
      this.extents.push({ block: this.start, count: this.end - this.start });
    }
    this.start = -1;
    this.end = -1;
  }

  /** Emits the set bits of one page as runs. */
  addPage(words: Uint32Array, base: number, from: number): void {
    let i = nextSetBit(words, from, MAP_PAGE_BLOCKS);
    while (i >= 0 && !this.full) {
      const stop = nextClearBit(words, i, MAP_PAGE_BLOCKS);
      const end = stop < 0 ? MAP_PAGE_BLOCKS : stop;
      this.add(base + i, end - i);
      if (stop < 0) break;
      i = nextSetBit(words, stop, MAP_PAGE_BLOCKS);
    }
  }
}

/**
 * OP-16 differential between the entries `between` (all I with L <= I < M, oldest first) and the view `m`.
 * `alsoChanged` (a bit per block) adds blocks that may differ for another reason: during an in-place
 * restore, the live view's blocks still pending hold the restored content, not what the maps describe.
 */
export function changedBlocks(
  between: readonly SnapshotEntry[],
  m: ValiditySource,
  shift: number,
  query: ExtentQuery = {},
  alsoChanged?: Uint32Array,
): BlockExtent[] {
  const sink = new ExtentSink(query.maxExtents ?? Number.POSITIVE_INFINITY);
  const start = query.startBlock ?? 0;
  const valid = new Uint32Array(PAGE_WORDS);
  const changed = new Uint32Array(PAGE_WORDS);
  const scratch = new Uint32Array(PAGE_WORDS);
  const pages = Math.ceil(m.blockCount / MAP_PAGE_BLOCKS);
  for (let p = Math.floor(start / MAP_PAGE_BLOCKS); p < pages && !sink.full; p++) {
    if (validityPage(m, shift, p, valid) === 0) continue;
    changed.fill(0);
    if (alsoChanged !== undefined) {
      const base = p * PAGE_WORDS;
      for (let w = 0; w < PAGE_WORDS && base + w < alsoChanged.length; w++) changed[w] = alsoChanged[base + w]!;
    }
    for (const e of between) {
      const bits = e.map.pageBits(p);
      if (bits !== undefined) for (let w = 0; w < PAGE_WORDS; w++) changed[w]! |= bits[w]!;
      if (validityPage(e, shift, p, scratch) !== 2) {
        for (let w = 0; w < PAGE_WORDS; w++) changed[w]! |= ~scratch[w]!;
      }
    }
    let any = 0;
    for (let w = 0; w < PAGE_WORDS; w++) {
      changed[w]! &= valid[w]!;
      any |= changed[w]!;
    }
    const base = p * MAP_PAGE_BLOCKS;
    if (any !== 0) sink.addPage(changed, base, Math.max(0, start - base));
  }
  sink.close();
  return sink.extents;
}

/** OP-18: extents of blocks valid in the view (everything else reads as zeros). */
export function allocatedBlocks(m: ValiditySource, shift: number, query: ExtentQuery = {}): BlockExtent[] {
  const sink = new ExtentSink(query.maxExtents ?? Number.POSITIVE_INFINITY);
  const start = query.startBlock ?? 0;
  const valid = new Uint32Array(PAGE_WORDS);
  const pages = Math.ceil(m.blockCount / MAP_PAGE_BLOCKS);
  for (let p = Math.floor(start / MAP_PAGE_BLOCKS); p < pages && !sink.full; p++) {
    if (validityPage(m, shift, p, valid) === 0) continue;
    const base = p * MAP_PAGE_BLOCKS;
    sink.addPage(valid, base, Math.max(0, start - base));
  }
  sink.close();
  return sink.extents;
}
