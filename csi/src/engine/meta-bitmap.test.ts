// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from 'vitest';
import { heapWords, sharedWords } from './bits.js';
import { FULL_META_PAGE, META_PAGE_GRANULES, MetaFreezer, ProductionMeta } from './meta-bitmap.js';

describe('meta bit maps', () => {
  it('sets and clears granule ranges, never past the last granule (INV-18)', () => {
    const m = ProductionMeta.create(1, 100, heapWords);
    expect(m.setRange(10, 20)).toBe(true);
    expect(m.setRange(12, 14)).toBe(false);
    expect(m.setRange(95, 200)).toBe(true);
    expect(m.test(99)).toBe(true);
    expect(m.test(100)).toBe(false);
    expect(m.clearRange(0, 15)).toBe(true);
    expect([m.test(14), m.test(15), m.test(19), m.test(20)]).toEqual([false, true, true, false]);
  });

  it('freezes in O(changed pages): unchanged pages are shared, zero and full pages cost nothing', () => {
    const granules = 4 * META_PAGE_GRANULES;
    const m = ProductionMeta.create(0, granules, heapWords);
    const f = new MetaFreezer(heapWords);
    m.setRange(0, META_PAGE_GRANULES); // page 0 all valid
    m.setRange(META_PAGE_GRANULES + 5, META_PAGE_GRANULES + 9); // page 1 mixed
    const a = f.freeze(m);
    expect(a.pages[0]).toBe(FULL_META_PAGE);
    expect(a.pages[2]).toBeUndefined();
    expect(a.ownPages()).toHaveLength(1);
    m.setRange(3 * META_PAGE_GRANULES, 3 * META_PAGE_GRANULES + 1);
    const b = f.freeze(m);
    expect(b.pages[1]).toBe(a.pages[1]);
    expect(b.pages[3]).not.toBe(a.pages[3]);
    expect(a.test(3 * META_PAGE_GRANULES)).toBe(false);
    expect(b.test(3 * META_PAGE_GRANULES)).toBe(true);
    // A frozen copy never changes afterwards.
    m.clearRange(0, granules);
    expect(a.test(7)).toBe(true);
    expect(b.test(META_PAGE_GRANULES + 6)).toBe(true);
  });

  it('grows with new granules invalid and keeps the live words shareable', () => {
    const m = ProductionMeta.create(0, 10, sharedWords);
    m.setRange(0, 10);
    m.grow(2 * META_PAGE_GRANULES, sharedWords);
    expect(m.words.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(m.test(9)).toBe(true);
    expect(m.test(10)).toBe(false);
    expect(m.test(META_PAGE_GRANULES + 1)).toBe(false);
  });
});
