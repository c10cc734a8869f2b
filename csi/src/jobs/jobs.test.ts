// SPDX-License-Identifier: Apache-2.0
// The background-work layer over in-memory engine volumes: the scheduler (rate limit, foreground priority,
// round robin, failures, cancel), the extent copier (clone-method images: exact, sparse, resumable from its
// stored cursor, independent of the source), hydration through the hydrating view with foreground I/O at
// random points against an oracle, and the restore job.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MemBlockDevice, MemMetaStore } from '../engine/block-device.js';
import { pattern } from '../engine/testing/model.js';
import { SnapshotVolume } from '../engine/volume.js';
import { rwSource, snapshotSource } from './copy-source.js';
import { ExtentCopyJob } from './extent-copy.js';
import { HydrateView } from './hydrate-view.js';
import { RestoreJob } from './restore-job.js';
import { type BackgroundJob, JobScheduler } from './scheduler.js';

const BS = 4096;
const same = (a: Uint8Array, b: Uint8Array) => Buffer.compare(a, b) === 0;

function devices() {
  return { clone: new MemBlockDevice(BS), save: new MemBlockDevice(BS), meta: new MemMetaStore() };
}

async function volume(blocks: number, granuleBlocks = 1, d = devices()) {
  return { d, vol: await SnapshotVolume.create(d, { sizeBytes: blocks * BS, granuleBlocks }) };
}

class CountingJob implements BackgroundJob {
  done = 0;
  steps = 0;
  constructor(
    readonly kind: string,
    readonly id: string,
    private readonly total: number,
    private readonly fail = false,
  ) {}
  progress() {
    return { doneBytes: this.done, totalBytes: this.total };
  }
  async step(budget: number): Promise<boolean> {
    this.steps++;
    if (this.fail) throw new Error('disk on fire');
    this.done = Math.min(this.total, this.done + budget);
    return this.done >= this.total;
  }
}

describe('JobScheduler', () => {
  it('holds the copy rate with a token bucket and runs jobs round robin', async () => {
    let now = 0;
    const slept: number[] = [];
    const s = new JobScheduler({
      rateBytesPerSecond: 1000,
      stepBytes: 100,
      now: () => now,
      sleep: async (ms) => {
        slept.push(ms);
        now += ms;
      },
    });
    const a = new CountingJob('clone', 'a', 1000);
    const b = new CountingJob('hydrate', 'b', 500);
    const order: string[] = [];
    const stepA = a.step.bind(a);
    const stepB = b.step.bind(b);
    a.step = (n) => (order.push('a'), stepA(n));
    b.step = (n) => (order.push('b'), stepB(n));
    await Promise.all([s.submit(a), s.submit(b)]);
    expect(order.slice(0, 6)).toEqual(['a', 'b', 'a', 'b', 'a', 'b']);
    // 1500 bytes at 1000 B/s, minus the initial burst of one step: about 1.4 s of virtual time.
    expect(now).toBeGreaterThanOrEqual(1300);
    expect(now).toBeLessThanOrEqual(1600);
    expect(s.jobs()).toEqual([]);
  });

  it('lets foreground I/O go first, but never starves a job', async () => {
    let busy = 5;
    let waits = 0;
    const s = new JobScheduler({
      rateBytesPerSecond: 0,
      foregroundBusy: () => busy-- > 0,
      sleep: async () => {
        waits++;
      },
      maxBusyWaits: 3,
    });
    await s.submit(new CountingJob('restore', 'r', 10));
    expect(waits).toBe(3);
  });

  it('reports failures to the owner, removes the job, and keeps the others running; cancel stops a job', async () => {
    const errors: string[] = [];
    const s = new JobScheduler({ rateBytesPerSecond: 0, stepBytes: 1, onError: (j) => errors.push(j.id) });
    const bad = s.submit(new CountingJob('clone', 'bad', 10, true));
    const good = s.submit(new CountingJob('clone', 'good', 20));
    await expect(bad).rejects.toThrow('disk on fire');
    await good;
    expect(errors).toEqual(['bad']);
    const slow = new CountingJob('hydrate', 'slow', 1e9);
    const p = s.submit(slow);
    expect(s.submit(slow)).toBe(p);
    expect(s.has('hydrate', 'slow')).toBe(true);
    await s.cancel('hydrate', 'slow');
    await expect(p).rejects.toThrow(/cancelled/);
    expect(s.jobs()).toEqual([]);
    await s.close();
    await expect(s.submit(new CountingJob('clone', 'late', 1))).rejects.toThrow(/closed/);
  });
});

describe('ExtentCopyJob (clone-method images)', () => {
  it('copies only allocated extents, exactly, and the image outlives its source', async () => {
    const src = await volume(64);
    for (const b of [0, 1, 2, 10, 40, 63]) await src.vol.write(b * BS, pattern(b + 1, BS));
    await src.vol.write(20 * BS, new Uint8Array(BS)); // allocated but zero: not written to the image
    const snap = await src.vol.createSnapshot({ method: 'meta-bitmap' });
    await src.vol.write(0, pattern(99, 8 * BS)); // after the cut: not in the image
    const img = await volume(64);
    const job = ExtentCopyJob.open({
      kind: 'clone',
      id: 'snap-1',
      source: snapshotSource(src.vol, snap.id),
      target: img.vol,
      chunkBytes: 2 * BS,
    });
    expect(job.progress()).toEqual({ doneBytes: 0, totalBytes: 7 * BS });
    while (!(await job.step(3 * BS)));
    expect(job.progress().doneBytes).toBe(7 * BS);
    expect(img.d.clone.storedBlocks()).toBe(6);
    const want = await src.vol.readSnapshot(snap.id, 0, 64 * BS);
    await src.vol.close();
    expect(same(await img.vol.read(0, 64 * BS), want)).toBe(true);
    expect(img.vol.getAttribute('copy.cursor')).toBe('done');
    expect(ExtentCopyJob.open({ kind: 'clone', id: 'x', source: fakeSource(64), target: img.vol }).complete).toBe(true);
  });

  it('resumes at the stored cursor after a reopen of the image', async () => {
    const src = await volume(256);
    await src.vol.write(0, pattern(1, 256 * BS));
    const snap = await src.vol.createSnapshot();
    const img = await volume(256);
    const open = () =>
      ExtentCopyJob.open({
        kind: 'clone',
        id: 's',
        source: snapshotSource(src.vol, snap.id),
        target: img.vol,
        chunkBytes: 8 * BS,
        checkpointBytes: 32 * BS,
      });
    const first = open();
    for (let i = 0; i < 5; i++) await first.step(16 * BS);
    expect(img.vol.getAttribute('copy.cursor')).toBe(String(64 * BS));
    await img.vol.close();
    img.vol = await SnapshotVolume.open(img.d);
    const again = open();
    expect(again.progress().doneBytes).toBe(64 * BS);
    while (!(await again.step(64 * BS)));
    expect(same(await img.vol.read(0, 256 * BS), pattern(1, 256 * BS))).toBe(true);
    expect(src.vol.getSnapshot(snap.id).pins).toBe(2); // both jobs' sources still pin it until released
  });
});

describe('ExtentCopyJob against concurrent source writes', () => {
  it('an image copied while the source volume keeps changing equals the snapshot at the cut', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(1, 2),
        fc.array(
          fc.oneof(
            fc.record({ k: fc.constant('step' as const), n: fc.integer({ min: 1, max: 5 }) }),
            fc.record({ k: fc.constant('write' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 3 * BS }) }),
            fc.record({ k: fc.constant('discard' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 4 * BS }) }),
            fc.record({ k: fc.constant('snap' as const) }),
          ),
          { minLength: 5, maxLength: 30 },
        ),
        async (granule, ops) => {
          const blocks = 32;
          const size = blocks * BS;
          const src = await volume(blocks, granule);
          await src.vol.write(0, pattern(1, size));
          await src.vol.discard(12 * BS, 6 * BS);
          const cut = await src.vol.createSnapshot({ method: 'meta-bitmap' });
          const want = await src.vol.readSnapshot(cut.id, 0, size);
          const img = await volume(blocks, granule);
          const job = ExtentCopyJob.open({
            kind: 'clone',
            id: 'img',
            source: snapshotSource(src.vol, cut.id),
            target: img.vol,
            chunkBytes: granule * BS,
            checkpointBytes: 3 * BS,
          });
          let seed = 5;
          for (const op of ops) {
            if (op.k === 'step') await job.step(op.n * BS);
            else if (op.k === 'snap') await src.vol.createSnapshot();
            else {
              const off = op.at % size;
              const len = Math.min(op.len, size - off);
              // Concurrent with a copier step, as the scheduler would interleave them.
              if (op.k === 'write') await Promise.all([src.vol.write(off, pattern(seed++, len)), job.step(BS)]);
              else await Promise.all([src.vol.discard(off, len), job.step(BS)]);
            }
          }
          while (!(await job.step(8 * BS)));
          expect(same(await img.vol.read(0, size), want)).toBe(true);
          src.vol.verifyInvariants();
          img.vol.verifyInvariants();
        },
      ),
      { numRuns: 150 },
    );
  });
});

function fakeSource(blocks: number) {
  return {
    blockSize: BS,
    sizeBytes: blocks * BS,
    allocatedExtents: () => [],
    read: async () => undefined,
    release: () => undefined,
  };
}

describe('hydration through the hydrating view', () => {
  it('reads, writes and discards at random points while the copier runs keep the oracle; the target alone ends equal', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(1, 2, 4),
        fc.array(
          fc.oneof(
            fc.record({ k: fc.constant('step' as const), n: fc.integer({ min: 1, max: 6 }) }),
            fc.record({ k: fc.constant('write' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 3 * BS }) }),
            fc.record({ k: fc.constant('discard' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 3 * BS }) }),
            fc.record({ k: fc.constant('reopen' as const) }),
          ),
          { minLength: 5, maxLength: 30 },
        ),
        async (granule, ops) => {
          const blocks = 32;
          const size = blocks * BS;
          const src = await volume(blocks, granule);
          await src.vol.write(0, pattern(1, size));
          await src.vol.discard(8 * BS, 4 * BS);
          const base = await src.vol.createSnapshot({ method: 'meta-bitmap' });
          const rw = await src.vol.createRw(base.id);
          await src.vol.writeRw(rw.id, 5 * BS + 7, pattern(2, 3 * BS));
          const oracle = await src.vol.readRw(rw.id, 0, size);
          const tgt = await volume(blocks, granule);
          let view = new HydrateView(rwSource(src.vol, rw.id), tgt.vol);
          const newJob = () =>
            ExtentCopyJob.open({
              kind: 'hydrate',
              id: 'h',
              source: rwSource(src.vol, rw.id),
              target: view.target,
              lock: view.lock,
              chunkBytes: 2 * granule * BS,
              checkpointBytes: 4 * BS,
            });
          let job = newJob();
          let seed = 10;
          const readAll = async () => {
            const buf = new Uint8Array(size);
            await view.read(0, buf);
            return buf;
          };
          for (const op of ops) {
            if (op.k === 'step') await job.step(op.n * BS);
            else if (op.k === 'reopen') {
              await view.flush();
              await view.target.close();
              const reopened = await SnapshotVolume.open(tgt.d);
              view = new HydrateView(rwSource(src.vol, rw.id), reopened);
              job = newJob();
            } else {
              const off = op.at % size;
              const len = Math.min(op.len, size - off);
              if (op.k === 'write') {
                const data = pattern(seed++, len);
                // A write racing a copier step on the same granules.
                await Promise.all([view.write(off, data), job.step(BS)]);
                oracle.set(data, off);
              } else {
                await view.discard(off, len);
                oracle.fill(0, off, off + len);
              }
            }
            expect(same(await readAll(), oracle)).toBe(true);
          }
          while (!(await job.step(8 * BS)));
          view.switchToTarget();
          expect(same(await view.target.read(0, size), oracle)).toBe(true);
          await src.vol.close();
          expect(same(await readAll(), oracle)).toBe(true);
        },
      ),
      { numRuns: 150 },
    );
  });
});

describe('RestoreJob', () => {
  it('drives an in-place restore to completion and reports progress in bytes', async () => {
    const { vol } = await volume(64);
    await vol.write(0, pattern(1, 64 * BS));
    const s = await vol.createSnapshot();
    await vol.write(0, pattern(2, 32 * BS));
    await vol.startRestore({ source: { kind: 'snapshot', id: s.id } });
    const job = new RestoreJob(vol, 'vol-a', 8 * BS);
    expect(job.progress()).toEqual({ doneBytes: 0, totalBytes: 32 * BS });
    const sched = new JobScheduler({ rateBytesPerSecond: 0, stepBytes: 4 * BS });
    await sched.submit(job);
    expect(job.progress()).toEqual({ doneBytes: 32 * BS, totalBytes: 32 * BS });
    expect(vol.restoreStatus()).toBeNull();
    expect(same(await vol.read(0, 64 * BS), pattern(1, 64 * BS))).toBe(true);
  });
});
