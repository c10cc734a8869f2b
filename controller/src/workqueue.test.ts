// SPDX-License-Identifier: Apache-2.0
import { KeyedMutex } from './csi-client/node-client.js';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { RetryGate, WorkQueue } from './workqueue.js';

const q = (start = 10, max = 80) => new WorkQueue({ retryIntervalStartMs: start, retryIntervalMaxMs: max });

describe('WorkQueue', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('1-1 - de-duplicates keys that are queued', async () => {
    const wq = q();
    wq.add('a');
    wq.add('b');
    wq.add('a');
    expect(wq.depth).toBe(2);
    expect(await wq.get()).toBe('a');
    expect(await wq.get()).toBe('b');
    expect(wq.depth).toBe(0);
  });

  it('1-2 - never hands one key to two workers; a key re-added while processed comes back after done()', async () => {
    const wq = q();
    wq.add('a');
    const k = await wq.get();
    expect(k).toBe('a');
    wq.add('a');
    expect(wq.depth).toBe(0);
    let second: string | undefined;
    const p = wq.get().then((v) => {
      second = v;
    });
    // Every callback the queue could have scheduled has run by the next macrotask turn.
    await new Promise((r) => setImmediate(r));
    expect(second).toBeUndefined();
    wq.done('a');
    await p;
    expect(second).toBe('a');
  });

  it('1-3 - backs off exponentially per key, capped, and forget() resets', () => {
    const wq = q(10, 80);
    expect([1, 2, 3, 4, 5].map(() => wq.addRateLimited('k'))).toEqual([10, 20, 40, 80, 80]);
    expect(wq.numRequeues('k')).toBe(5);
    wq.forget('k');
    expect(wq.addRateLimited('k')).toBe(10);
    expect(wq.addRateLimited('other')).toBe(10);
    wq.shutDown();
  });

  it('1-4 - addAfter keeps the earliest of several delays and then queues the key once', async () => {
    // Fake clock: the delays are checked exactly, whatever the load of the machine.
    vi.useFakeTimers();
    const wq = q();
    wq.addAfter('k', 200);
    wq.addAfter('k', 20);
    wq.addAfter('k', 100);
    let got: string | undefined;
    const p = wq.get().then((v) => {
      got = v;
    });
    await vi.advanceTimersByTimeAsync(19);
    expect(got).toBeUndefined();
    await vi.advanceTimersByTimeAsync(1);
    await p;
    expect(got).toBe('k');
    wq.done('k');
    await vi.advanceTimersByTimeAsync(300);
    expect(wq.depth).toBe(0);
  });

  it('1-5 - shutDown releases waiting workers and refuses new keys', async () => {
    const wq = q();
    const p = wq.get();
    wq.shutDown();
    expect(await p).toBeUndefined();
    wq.add('x');
    expect(wq.depth).toBe(0);
  });
});

describe('RetryGate', () => {
  it('1-6 - gates attempts per key with exponential, capped delays; success resets; release opens the gate', () => {
    let now = 1000;
    const g = new RetryGate(100, 400, () => now);
    expect(g.waitMs('k')).toBe(0);
    expect(g.failed('k')).toBe(100);
    expect(g.waitMs('k')).toBe(100);
    now += 60;
    expect(g.waitMs('k')).toBe(40);
    expect(g.waitMs('other')).toBe(0);
    now += 40;
    expect(g.waitMs('k')).toBe(0);
    expect([g.failed('k'), g.failed('k'), g.failed('k')]).toEqual([200, 400, 400]);
    g.release();
    expect(g.waitMs('k')).toBe(0);
    expect(g.failed('k')).toBe(400);
    g.succeeded('k');
    expect(g.failed('k')).toBe(100);
  });
});

describe('KeyedMutex', () => {
  it('1-7 - runs functions one at a time per key, in order, keys independent, and survives rejections', async () => {
    const m = new KeyedMutex();
    const log: string[] = [];
    const step =
      (name: string, ms: number, fail = false) =>
      async () => {
        log.push(`start ${name}`);
        await new Promise((r) => setTimeout(r, ms));
        log.push(`end ${name}`);
        if (fail) throw new Error(name);
        return name;
      };
    const results = await Promise.allSettled([
      m.run('v1', step('a', 30, true)),
      m.run('v1', step('b', 5)),
      m.run('v2', step('c', 10)),
    ]);
    expect(results.map((r) => r.status)).toEqual(['rejected', 'fulfilled', 'fulfilled']);
    expect(log.indexOf('start b')).toBeGreaterThan(log.indexOf('end a'));
    expect(log.indexOf('start c')).toBeLessThan(log.indexOf('end a'));
    expect(m.size).toBe(0);
  });
});
