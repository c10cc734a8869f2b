// SPDX-License-Identifier: Apache-2.0
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { RangeLock } from './range-lock.js';

const tick = () => new Promise<void>((r) => setImmediate(r));

describe('RangeLock', () => {
  it('1-1 shared holders overlap; exclusive waits for them and blocks later shared ones (FIFO)', async () => {
    const l = new RangeLock();
    const order: string[] = [];
    const r1 = await l.acquire(0, 10, 'shared');
    const r2 = await l.acquire(5, 15, 'shared');
    const ex = l.acquire(8, 9, 'exclusive').then((rel) => {
      order.push('ex');
      return rel;
    });
    const sh = l.acquire(9, 9, 'shared').then((rel) => {
      order.push('sh');
      return rel;
    });
    await tick();
    expect(order).toEqual([]);
    r1();
    await tick();
    expect(order).toEqual([]);
    r2();
    await tick();
    expect(order).toEqual(['ex']);
    (await ex)();
    await tick();
    expect(order).toEqual(['ex', 'sh']);
    (await sh)();
    expect(l.holders).toBe(0);
  });

  it('1-2 disjoint exclusive ranges are granted together', async () => {
    const l = new RangeLock();
    const a = await l.acquire(0, 3, 'exclusive');
    const b = await l.acquire(4, 7, 'exclusive');
    expect(l.holders).toBe(2);
    a();
    b();
  });

  it('2-1 property: no two conflicting holders at any time, and every request is eventually granted', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.nat(20), fc.nat(5), fc.boolean(), fc.nat(3)), { minLength: 1, maxLength: 30 }),
        async (reqs) => {
          const l = new RangeLock();
          const active: Array<{ first: number; last: number; ex: boolean }> = [];
          await Promise.all(
            reqs.map(async ([first, len, ex, hold]) => {
              const last = first + len;
              await l.with(first, last, ex ? 'exclusive' : 'shared', async () => {
                for (const o of active) {
                  if (ex || o.ex) expect(o.first > last || first > o.last).toBe(true);
                }
                const me = { first, last, ex };
                active.push(me);
                for (let i = 0; i < hold; i++) await tick();
                active.splice(active.indexOf(me), 1);
              });
            }),
          );
          expect(l.holders).toBe(0);
          expect(l.waiters).toBe(0);
        },
      ),
      { numRuns: 200 },
    );
  });
});
