// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from 'vitest';
import { SavePool } from './save-pool.js';

describe('save pool allocator', () => {
  it('bumps, reuses only committed frees, honours the quota and trims its free tail', () => {
    const p = new SavePool(4);
    expect([p.alloc(), p.alloc(), p.alloc()]).toEqual([0, 1, 2]);
    p.freeLater(1);
    expect(p.usedSlots).toBe(2);
    expect(p.alloc()).toBe(3); // slot 1 is quarantined until its frame is durable
    expect(p.alloc()).toBe(-1); // quota of 4 slots reached
    p.commitFrees();
    expect(p.alloc()).toBe(1);
    p.freeLater(3);
    p.freeLater(2);
    p.commitFrees();
    expect(p.trimTail()).toBe(2);
    expect(p.sizeSlots).toBe(2);
    expect(() => p.freeLater(3)).toThrow(/not allocated/);
  });

  it('rebuilds from referenced slots and rejects double references', () => {
    const p = new SavePool(null);
    expect(p.markReferenced(5)).toBe(true);
    expect(p.markReferenced(2)).toBe(true);
    expect(p.markReferenced(5)).toBe(false);
    p.finishRebuild(8);
    expect(p.usedSlots).toBe(2);
    const got = new Set([p.alloc(), p.alloc(), p.alloc(), p.alloc(), p.alloc(), p.alloc()]);
    expect(got).toEqual(new Set([0, 1, 3, 4, 6, 7]));
    expect(p.alloc()).toBe(8);
  });
});
