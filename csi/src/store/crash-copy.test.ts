// SPDX-License-Identifier: Apache-2.0
// Crash tests of the background copies on file-backed volumes: the fill of a clone-method image from a
// snapshot, and the hydration of an RW clone with user writes and discards through the hydrating view. Source
// and target volumes sit under one fault-injecting file layer that cuts power at a random write, truncate or
// sync. After a reopen with the real file layer the job resumes from its stored cursor and must finish with:
//   image:   exactly the snapshot's content, the source untouched;
//   hydrate: the view's content unchanged by the resumption and equal, per block, to a value acknowledged
//            since the last flush; the target alone equal to it at the end.
// LOOPSNAP_LONG=1 runs 20x more crashes.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { pattern } from '../engine/testing/model.js';
import type { SnapshotVolume } from '../engine/volume.js';
import { rwSource, snapshotSource } from '../jobs/copy-source.js';
import { ExtentCopyJob } from '../jobs/extent-copy.js';
import { HydrateView } from '../jobs/hydrate-view.js';
import { CrashController, CrashFileIo, type CrashMode } from './crash-file-io.testing.js';
import { Candidates, equal, rng } from './crash-support.testing.js';
import { NodeFileIo } from './file-io.js';
import { VolumeStore } from './volume-store.js';

const LONG = process.env.LOOPSNAP_LONG === '1';
const ITERATIONS = Number(process.env.LOOPSNAP_CRASH_COPY_ITERATIONS ?? (LONG ? 12_000 : 600));
const MODES: CrashMode[] = ['drop', 'tear', 'subset'];

interface Setup {
  bs: number;
  size: number;
  snapId: number;
  rwId: number;
  /** Content of the snapshot (image source) and of the RW snapshot (hydration source). */
  snap: Uint8Array;
  rw: Uint8Array;
}

async function setup(dir: string, rnd: () => number): Promise<Setup> {
  const bs = rnd() < 0.5 ? 512 : 4096;
  const granuleBlocks = rnd() < 0.6 ? 1 : 2;
  const blocks = 16 + Math.floor(rnd() * 48);
  const size = blocks * bs;
  const store = new VolumeStore(dir, new NodeFileIo({ durable: false }), { journalPreallocateBytes: 16 * 1024 });
  const src = await store.create('src', { sizeBytes: size, blockSize: bs, granuleBlocks });
  for (let i = 0; i < blocks / 2; i++) {
    const b = Math.floor(rnd() * blocks);
    await src.write(
      b * bs,
      pattern(1 + Math.floor(rnd() * 1e9), bs * (1 + Math.floor(rnd() * 3))).subarray(
        0,
        Math.min(3 * bs, size - b * bs),
      ),
    );
  }
  const snap = await src.createSnapshot({ method: rnd() < 0.5 ? 'meta-bitmap' : 'save-volume' });
  const rw = await src.createRw(snap.id);
  for (let i = 0; i < 6; i++) {
    const off = Math.floor(rnd() * size);
    await src.writeRw(
      rw.id,
      off,
      pattern(1 + Math.floor(rnd() * 1e9), Math.min(size - off, 1 + Math.floor(rnd() * 2 * bs))),
    );
  }
  await src.write(0, pattern(7, Math.min(size, 4 * bs))); // after the cut
  const result = {
    bs,
    size,
    snapId: snap.id,
    rwId: rw.id,
    snap: await src.readSnapshot(snap.id, 0, size),
    rw: await src.readRw(rw.id, 0, size),
  };
  await src.close();
  const tgt = await store.create('tgt', { sizeBytes: size, blockSize: bs, granuleBlocks });
  await tgt.close();
  return result;
}

function open(dir: string, io: NodeFileIo | CrashFileIo) {
  const store = new VolumeStore(dir, io);
  return Promise.all([store.openVolume('src'), store.openVolume('tgt')]);
}

async function readView(view: HydrateView, size: number): Promise<Uint8Array> {
  const buf = new Uint8Array(size);
  await view.read(0, buf);
  return buf;
}

function toBlocks(bytes: Uint8Array, bs: number): Uint8Array[] {
  return Array.from({ length: bytes.length / bs }, (_, b) => bytes.slice(b * bs, (b + 1) * bs));
}

async function crashIteration(
  root: string,
  seed: number,
  mode: CrashMode,
  kind: 'clone' | 'hydrate',
): Promise<boolean> {
  const rnd = rng(seed);
  const dir = join(root, `it-${seed}`);
  const s = await setup(dir, rnd);
  const jobOf = (src: SnapshotVolume, tgt: SnapshotVolume, view?: HydrateView) =>
    ExtentCopyJob.open({
      kind,
      id: 'job',
      source: kind === 'clone' ? snapshotSource(src, s.snapId) : rwSource(src, s.rwId),
      target: tgt,
      chunkBytes: s.bs * (1 + Math.floor(rnd() * 8)),
      checkpointBytes: s.bs * (2 + Math.floor(rnd() * 16)),
      ...(view === undefined ? {} : { lock: view.lock }),
    });
  // What the view may show after the crash, per block.
  const cands = new Candidates();
  const content = (kind === 'clone' ? s.snap : s.rw).slice();
  cands.durable('view', toBlocks(content, s.bs));
  const ctl = new CrashController(1 + Math.floor(rnd() * 45), rnd);
  let midRun = false;
  try {
    const [src, tgt] = await open(dir, new CrashFileIo(ctl));
    const view = kind === 'hydrate' ? new HydrateView(rwSource(src, s.rwId), tgt) : undefined;
    const job = jobOf(src, tgt, view);
    for (let i = 0; i < 60 && !job.complete; i++) {
      const r = rnd();
      if (view === undefined || r < 0.5) await job.step(s.bs * (1 + Math.floor(rnd() * 3)));
      else if (r < 0.8) {
        const off = Math.floor(rnd() * s.size);
        const data = pattern(1 + Math.floor(rnd() * 1e9), Math.min(s.size - off, 1 + Math.floor(rnd() * 3 * s.bs)));
        content.set(data, off);
        cands.note('view', toBlocks(content, s.bs));
        await view.write(off, data);
      } else if (r < 0.9) {
        const off = Math.floor(rnd() * s.size);
        const len = Math.min(s.size - off, 1 + Math.floor(rnd() * 3 * s.bs));
        content.fill(0, off, off + len);
        cands.note('view', toBlocks(content, s.bs));
        await view.discard(off, len);
      } else {
        await view.flush();
        cands.durable('view', toBlocks(content, s.bs));
      }
    }
  } catch (err) {
    if (!ctl.hasCrashed) throw err;
    midRun = true;
  }
  if (!ctl.hasCrashed) ctl.crashNow();
  ctl.settle(mode);
  ctl.closeFiles();
  const [src, tgt] = await open(dir, new NodeFileIo({ durable: false }));
  try {
    src.verifyInvariants();
    tgt.verifyInvariants();
    // The source never changes.
    expect(equal(await src.readSnapshot(s.snapId, 0, s.size), s.snap)).toBe(true);
    expect(equal(await src.readRw(s.rwId, 0, s.size), s.rw)).toBe(true);
    if (kind === 'clone') {
      const job = jobOf(src, tgt);
      while (!(await job.step(8 * s.bs)));
      if (!equal(await tgt.read(0, s.size), s.snap)) throw new Error('the resumed image differs from the snapshot');
    } else {
      const view = new HydrateView(rwSource(src, s.rwId), tgt);
      const recovered = await readView(view, s.size);
      cands.check('view', recovered, s.bs);
      const job = jobOf(src, tgt, view);
      while (!(await job.step(8 * s.bs)));
      if (!equal(await readView(view, s.size), recovered)) throw new Error('resuming the hydration changed the view');
      view.switchToTarget();
      if (!equal(await tgt.read(0, s.size), recovered)) throw new Error('the hydrated volume differs from the view');
    }
    tgt.verifyInvariants();
  } finally {
    await src.close();
    await tgt.close();
    rmSync(dir, { recursive: true, force: true });
  }
  return midRun;
}

describe('crash safety of the background copies (clone-method images, hydration)', () => {
  const root = mkdtempSync(join(tmpdir(), 'loopsnap-crash-copy-'));
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it.each(MODES.flatMap((mode) => (['clone', 'hydrate'] as const).map((kind) => ({ mode, kind }))))(
    `$kind, $mode: ${ITERATIONS / 6} injected crashes, then the copy resumes from its cursor and ends exact`,
    async ({ mode, kind }) => {
      let midRun = 0;
      const base = 9_000_000 + MODES.indexOf(mode) * 100_000 + (kind === 'clone' ? 0 : 50_000);
      for (let i = 0; i < ITERATIONS / 6; i++) {
        try {
          if (await crashIteration(root, base + i, mode, kind)) midRun++;
        } catch (err) {
          throw new Error(`crash iteration failed (${kind}, ${mode}, seed ${base + i}): ${(err as Error).message}`, {
            cause: err,
          });
        }
      }
      expect(midRun).toBeGreaterThan(ITERATIONS / 6 / 2);
    },
    600_000,
  );
});
