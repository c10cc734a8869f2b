// SPDX-License-Identifier: Apache-2.0
// INV-17: the paged bit map + rank-indexed block map behaves exactly like a flat map, absent pages cost
// nothing, merges keep the older entry, and iteration is ascending.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { heapWords, nextClearBit, nextSetBit, popcount32, setRange, sharedWords } from './bits.js';
import { BlockMap, MAP_PAGE_BLOCKS } from './block-map.js';

const entriesOf = (m: BlockMap) => {
  const out: [number, number][] = [];
  m.forEach((b, s) => out.push([b, s]));
  return out;
};

describe('bits', () => {
  it('popcount, ranges and scans agree with a boolean array', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat(300), fc.nat(40)), { maxLength: 12 }), fc.nat(340), (ranges, from) => {
        const words = new Uint32Array(11);
        const ref = new Array<boolean>(352).fill(false);
        for (const [a, n] of ranges) {
          setRange(words, a, Math.min(a + n, 352));
          for (let i = a; i < Math.min(a + n, 352); i++) ref[i] = true;
        }
        expect(words.reduce((t, w) => t + popcount32(w), 0)).toBe(ref.filter(Boolean).length);
        expect(nextSetBit(words, from, 352)).toBe(ref.indexOf(true, from));
        expect(nextClearBit(words, from, 352)).toBe(ref.indexOf(false, from));
      }),
    );
  });
});

describe('BlockMap', () => {
  it('matches a reference Map under random inserts, in any order (INV-17)', () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.nat(3 * MAP_PAGE_BLOCKS), { maxLength: 400 }), (blocks) => {
        const m = new BlockMap(heapWords);
        const ref = new Map<number, number>();
        blocks.forEach((b, i) => {
          m.set(b, i);
          ref.set(b, i);
        });
        expect(m.size).toBe(ref.size);
        for (const b of blocks) expect(m.get(b)).toBe(ref.get(b));
        expect(m.get(3 * MAP_PAGE_BLOCKS + 1)).toBe(-1);
        expect(entriesOf(m)).toEqual([...ref.entries()].sort((a, b) => a[0] - b[0]));
      }),
    );
  });

  it('materialises only pages that hold entries (FIG. 43: absent pages cost nothing)', () => {
    const m = new BlockMap(heapWords);
    const empty = m.residentBytes();
    m.set(5, 1);
    m.set(10 * MAP_PAGE_BLOCKS + 7, 2);
    expect(m.presentPages()).toBe(2);
    expect(m.pageBits(3)).toBeUndefined();
    expect(m.residentBytes() - empty).toBeLessThan(2 * 6000);
    expect(() => m.set(5, 9)).toThrow(/already holds/);
  });

  it('puts bit pages on SharedArrayBuffers with the shared allocator', () => {
    const m = new BlockMap(sharedWords);
    m.set(1, 1);
    expect(m.pageBits(0)!.buffer).toBeInstanceOf(SharedArrayBuffer);
  });

  it('merges into an older map keeping its entries and freeing the younger duplicates (OP-11)', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.nat(2 * MAP_PAGE_BLOCKS), { maxLength: 200 }),
        fc.uniqueArray(fc.nat(2 * MAP_PAGE_BLOCKS), { maxLength: 200 }),
        (olderBlocks, youngerBlocks) => {
          const older = new BlockMap(heapWords);
          const younger = new BlockMap(heapWords);
          olderBlocks.forEach((b, i) => older.set(b, i));
          youngerBlocks.forEach((b, i) => younger.set(b, 10_000 + i));
          const expected = new Map<number, number>();
          youngerBlocks.forEach((b, i) => expected.set(b, 10_000 + i));
          olderBlocks.forEach((b, i) => expected.set(b, i));
          const freed: number[] = [];
          younger.mergeInto(older, (s) => freed.push(s));
          expect(younger.size).toBe(0);
          expect(entriesOf(older)).toEqual([...expected.entries()].sort((a, b) => a[0] - b[0]));
          const dup = youngerBlocks.map((b, i) => (olderBlocks.includes(b) ? 10_000 + i : -1)).filter((s) => s >= 0);
          expect(freed.sort((a, b) => a - b)).toEqual(dup.sort((a, b) => a - b));
          for (const [b, s] of expected) expect(older.get(b)).toBe(s);
        },
      ),
    );
  });

  it('drops entries at and past a limit', () => {
    const m = new BlockMap(heapWords);
    const blocks = [1, 40, 41, 100, MAP_PAGE_BLOCKS + 3, 2 * MAP_PAGE_BLOCKS];
    blocks.forEach((b, i) => m.set(b, i));
    const freed: number[] = [];
    m.dropFrom(41, (s) => freed.push(s));
    expect(entriesOf(m)).toEqual([
      [1, 0],
      [40, 1],
    ]);
    expect(freed).toEqual([2, 3, 4, 5]);
    m.set(50, 9);
    expect(m.get(50)).toBe(9);
  });
});
