// SPDX-License-Identifier: Apache-2.0
// Copy plans and the copier over an in-memory content port (pure logic; the real engine path is covered by
// test/controller/restore.test.ts): extent arithmetic against a bit-set oracle, the copy result equal to the
// source whatever the start state, idempotency after an interruption, and no writes for equal blocks.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { ByteExtent, ExtentQuery } from '../driver/backend.js';
import type { ContentPort } from './content-port.js';
import { planCopy, runCopy } from './copier.js';
import { type BlockRange, chunks, clip, countBlocks, normalise, subtract, toBlockRanges } from './extents.js';

const BS = 512;

function toSet(r: readonly BlockRange[]): Set<number> {
  const s = new Set<number>();
  for (const x of r) for (let b = x.start; b < x.end; b++) s.add(b);
  return s;
}

const ranges = fc
  .array(fc.tuple(fc.nat(200), fc.nat(20)), { maxLength: 12 })
  .map((a) => normalise(a.map(([s, l]) => ({ start: s, end: s + l }))));

describe('extents', () => {
  it('subtract, clip and chunks agree with set arithmetic', () => {
    fc.assert(
      fc.property(ranges, ranges, fc.integer({ min: 1, max: 250 }), fc.integer({ min: 1, max: 9 }), (a, b, lim, n) => {
        const d = subtract(a, b);
        const sa = toSet(a);
        const sb = toSet(b);
        expect(toSet(d)).toEqual(new Set([...sa].filter((x) => !sb.has(x))));
        expect(countBlocks(d)).toBe(toSet(d).size);
        expect(toSet(clip(a, lim))).toEqual(new Set([...sa].filter((x) => x < lim)));
        const pieces = [...chunks(a, n)];
        expect(pieces.every((p) => p.end - p.start <= n && p.end > p.start)).toBe(true);
        expect(toSet(pieces)).toEqual(sa);
      }),
    );
  });

  it('turns byte extents into covering block ranges', () => {
    expect(
      toBlockRanges(
        [
          { offset: 0, length: 512 },
          { offset: 512, length: 10 },
          { offset: 4096, length: 0 },
          { offset: 5000, length: 100 },
        ],
        512,
      ),
    ).toEqual([
      { start: 0, end: 2 },
      { start: 9, end: 10 },
    ]);
  });
});

/** A volume as blocks (undefined = never written: reads zeros, not allocated) plus frozen snapshots. */
class MemoryPort implements ContentPort {
  readonly live: Array<Uint8Array | undefined>;
  readonly snaps = new Map<number, Array<Uint8Array | undefined>>();
  writes = 0;
  discards = 0;
  failAfterWrites = Infinity;

  constructor(readonly blocks: number) {
    this.live = new Array<Uint8Array | undefined>(blocks).fill(undefined);
  }

  blockSize(): number {
    return BS;
  }
  volumeSizeBytes(): number {
    return this.blocks * BS;
  }
  private extents(of: Array<Uint8Array | undefined>, q: ExtentQuery): ByteExtent[] {
    const out: ByteExtent[] = [];
    for (let b = Math.floor(q.startingOffset / BS); b < of.length && out.length < q.maxResults; b++) {
      if (of[b]) out.push({ offset: b * BS, length: BS });
    }
    return out;
  }
  liveAllocatedExtents(_v: string, q: ExtentQuery): ByteExtent[] {
    return this.extents(this.live, q);
  }
  allocatedExtents(_v: string, id: number, q: ExtentQuery): ByteExtent[] {
    return this.extents(this.snaps.get(id) ?? [], q);
  }
  private read(of: Array<Uint8Array | undefined>, offset: number, into: Uint8Array): void {
    for (let i = 0; i < into.length; i += BS) into.set(of[(offset + i) / BS] ?? new Uint8Array(BS), i);
  }
  async readSnapshot(_v: string, id: number, offset: number, into: Uint8Array): Promise<void> {
    this.read(this.snaps.get(id) ?? [], offset, into);
  }
  async readLive(_v: string, offset: number, into: Uint8Array): Promise<void> {
    this.read(this.live, offset, into);
  }
  async writeLive(_v: string, offset: number, data: Uint8Array): Promise<void> {
    if (this.writes >= this.failAfterWrites) throw new Error('injected I/O error');
    this.writes++;
    for (let i = 0; i < data.length; i += BS) this.live[(offset + i) / BS] = data.slice(i, i + BS);
  }
  async discardLive(_v: string, offset: number, length: number): Promise<void> {
    this.discards++;
    for (let b = offset / BS; b < (offset + length) / BS; b++) this.live[b] = undefined;
  }
  async flushLive(): Promise<void> {}
  snapshot(id: number): void {
    this.snaps.set(id, [...this.live]);
  }
  contentOf(of: Array<Uint8Array | undefined>): string {
    return of.map((b) => (b ? Buffer.from(b).toString('hex').slice(0, 4) : '....')).join('|');
  }
}

const block = (v: number): Uint8Array => new Uint8Array(BS).fill(v);
const ops = fc.array(fc.tuple(fc.nat(63), fc.integer({ min: 0, max: 4 })), { maxLength: 60 });

function apply(p: MemoryPort, list: Array<[number, number]>): void {
  for (const [b, v] of list) p.live[b] = v === 0 ? undefined : block(v);
}

describe('copier', () => {
  it('leaves the live volume equal to the snapshot, whatever happened in between', async () => {
    await fc.assert(
      fc.asyncProperty(ops, ops, async (before, after) => {
        const p = new MemoryPort(64);
        apply(p, before);
        p.snapshot(1);
        apply(p, after);
        const src = { volumeId: 'v', engineSnapshotId: 1, sizeBytes: 64 * BS };
        const plan = planCopy(p, src, 'v');
        let last = 0;
        await runCopy(p, src, 'v', plan, { onProgress: (n) => (last = n) });
        expect(p.contentOf(p.live)).toBe(p.contentOf(p.snaps.get(1) ?? []));
        expect(last).toBe(plan.totalBlocks);
      }),
    );
  });

  it('is idempotent after an interruption, and writes nothing for blocks that are already equal', async () => {
    const p = new MemoryPort(64);
    apply(p, [
      [1, 1],
      [2, 2],
      [3, 3],
      [40, 4],
    ]);
    p.snapshot(7);
    apply(p, [
      [1, 4],
      [2, 4],
      [3, 0],
      [40, 1],
      [50, 1],
    ]);
    const src = { volumeId: 'v', engineSnapshotId: 7, sizeBytes: 64 * BS };
    p.failAfterWrites = 1;
    await expect(runCopy(p, src, 'v', planCopy(p, src, 'v'))).rejects.toThrow('injected');
    p.failAfterWrites = Infinity;
    const second = await runCopy(p, src, 'v', planCopy(p, src, 'v'));
    expect(p.contentOf(p.live)).toBe(p.contentOf(p.snaps.get(7) ?? []));
    const third = await runCopy(p, src, 'v', planCopy(p, src, 'v'));
    expect(third.blocksWritten).toBe(0);
    expect(third.blocksZeroed).toBe(0);
    expect(second.blocksWritten + second.blocksEqual).toBeGreaterThan(0);
  });

  it('zeroes blocks past a smaller snapshot and stops between chunks when aborted', async () => {
    const p = new MemoryPort(64);
    apply(p, [[2, 1]]);
    p.snapshot(1);
    apply(p, [[60, 2]]);
    const src = { volumeId: 'v', engineSnapshotId: 1, sizeBytes: 32 * BS };
    await runCopy(p, src, 'v', planCopy(p, src, 'v'));
    expect(p.live[60]).toBeUndefined();
    expect(p.live[2]).toEqual(block(1));
    const ac = new AbortController();
    ac.abort(new Error('stop'));
    apply(p, [[2, 3]]);
    await expect(runCopy(p, src, 'v', planCopy(p, src, 'v'), { signal: ac.signal })).rejects.toThrow('stop');
    expect(p.live[2]).toEqual(block(3));
  });
});
