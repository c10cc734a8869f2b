// SPDX-License-Identifier: Apache-2.0
// Block-range arithmetic for copy plans. A range list is sorted, non-overlapping and non-adjacent
// ([start, end) in blocks); every function returns a list with the same properties.

export interface BlockRange {
  readonly start: number;
  readonly end: number;
}

/** Byte extents (block-aligned or not) to the block ranges that cover them, normalised. */
export function toBlockRanges(
  extents: ReadonlyArray<{ readonly offset: number; readonly length: number }>,
  blockSize: number,
): BlockRange[] {
  return normalise(
    extents
      .filter((e) => e.length > 0)
      .map((e) => ({
        start: Math.floor(e.offset / blockSize),
        end: Math.ceil((e.offset + e.length) / blockSize),
      })),
  );
}

/** Sorts and merges overlapping or adjacent ranges; drops empty ones. */
export function normalise(ranges: readonly BlockRange[]): BlockRange[] {
  const sorted = ranges.filter((r) => r.end > r.start).sort((a, b) => a.start - b.start);
  const out: BlockRange[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.start <= last.end) out[out.length - 1] = { start: last.start, end: Math.max(last.end, r.end) };
    else out.push({ start: r.start, end: r.end });
  }
  return out;
}

/** Blocks in `a` and not in `b`. */
export function subtract(a: readonly BlockRange[], b: readonly BlockRange[]): BlockRange[] {
  const out: BlockRange[] = [];
  let j = 0;
  for (const r of a) {
    let start = r.start;
    while (j < b.length && (b[j] as BlockRange).end <= start) j++;
    let k = j;
    while (k < b.length && (b[k] as BlockRange).start < r.end) {
      const cut = b[k] as BlockRange;
      if (cut.start > start) out.push({ start, end: cut.start });
      start = Math.max(start, cut.end);
      k++;
    }
    if (start < r.end) out.push({ start, end: r.end });
  }
  return out;
}

/** Ranges clipped to [0, limit). */
export function clip(a: readonly BlockRange[], limit: number): BlockRange[] {
  return a.filter((r) => r.start < limit).map((r) => ({ start: r.start, end: Math.min(r.end, limit) }));
}

export function countBlocks(a: readonly BlockRange[]): number {
  return a.reduce((n, r) => n + (r.end - r.start), 0);
}

/** Splits ranges into pieces of at most `maxBlocks`. */
export function* chunks(a: readonly BlockRange[], maxBlocks: number): Generator<BlockRange> {
  for (const r of a) {
    for (let s = r.start; s < r.end; s += maxBlocks) yield { start: s, end: Math.min(r.end, s + maxBlocks) };
  }
}
