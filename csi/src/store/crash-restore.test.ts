// SPDX-License-Identifier: Apache-2.0
// Crash tests of RW snapshots, refresh and in-place restore on file-backed volumes (EC-3, EC-15, INV-13):
// random production and RW I/O, restore starts (RO and RW sources, both copy orders) and copier steps (some
// concurrent with foreground writes), refreshes onto new and named snapshots, RW creation, clones of the live
// volume and RW deletion, through the fault-injecting file layer that cuts power at a random write, truncate
// or sync. After a reopen with the real file layer:
//   - no acknowledged snapshot changed; every acknowledged RW snapshot and the live volume hold, per block, a
//     value acknowledged since their last durable point (an interrupted structural operation either happened
//     entirely or not at all, and when it happened its result is exact);
//   - the resumed restore completes without changing anything a reader can see (INV-13), a kept restore
//     point equals the source at the restore instant, and the volume keeps working against a rebuilt oracle.
// LOOPSNAP_LONG=1 runs 20x more crashes; LOOPSNAP_CRASH_SEED=<seed> (with LOOPSNAP_CRASH_MODE) replays one.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { RestoreOrder, SnapshotMethod } from '../engine/layout.js';
import { checkVolume } from '../engine/testing/check.js';
import { type ModelSnapshot, pattern, VolumeModel } from '../engine/testing/model.js';
import type { SnapshotVolume } from '../engine/volume.js';
import { CrashController, CrashFileIo, type CrashMode } from './crash-file-io.testing.js';
import { Candidates, equal, rng } from './crash-support.testing.js';
import { NodeFileIo } from './file-io.js';
import { VolumeStore } from './volume-store.js';

const LONG = process.env.LOOPSNAP_LONG === '1';
const ITERATIONS = Number(process.env.LOOPSNAP_CRASH_ITERATIONS ?? (LONG ? 12_000 : 600));
const MODES: CrashMode[] = ['drop', 'tear', 'subset'];
const MAX_SNAPS = 8;
const CRASH_WINDOW = Number(process.env.LOOPSNAP_CRASH_WINDOW ?? 150);

type InFlight =
  | { kind: 'none' }
  | { kind: 'restore'; source: { kind: 'snapshot' | 'rw'; id: number }; keep: boolean; x: Uint8Array[] }
  | { kind: 'refresh'; rw: number; oldBase: number; target: number | null }
  | { kind: 'create-rw'; base: number; blocks: number }
  | { kind: 'clone-live' }
  | { kind: 'delete-rw'; rw: number }
  | { kind: 'snap'; method: SnapshotMethod }
  | { kind: 'step' };

interface Tracker {
  model: VolumeModel;
  cands: Candidates;
  inflight: InFlight;
  /** Content of the restore source at the restore instant (for a kept restore point). */
  restoreX: Uint8Array[] | null;
}

const rwKey = (id: number) => `rw:${id}`;
const TRACE = process.env.LOOPSNAP_CRASH_TRACE === '1';
const trace = (...args: unknown[]): void => {
  if (TRACE) console.log(...args);
};

function durable(t: Tracker): void {
  t.cands.durable('live', t.model.blocks);
  for (const rw of t.model.rws.values()) t.cands.durable(rwKey(rw.id), rw.blocks);
}

function note(t: Tracker): void {
  t.cands.note('live', t.model.blocks);
  for (const rw of t.model.rws.values()) t.cands.note(rwKey(rw.id), rw.blocks);
}

const visible = (m: VolumeModel) => m.snapshots.filter((s) => s.autoDelete !== true && s.restoring !== true);
const rwsOf = (m: VolumeModel) => [...m.rws.values()];
const isSource = (m: VolumeModel, id: number) => m.restore?.source.kind === 'rw' && m.restore.source.id === id;
const pickOf = <T>(items: readonly T[], r: number): T | undefined =>
  items.length === 0 ? undefined : items[Math.floor(r * items.length)];

async function runOps(vol: SnapshotVolume, t: Tracker, rnd: () => number, count: number): Promise<void> {
  const m = t.model;
  const bs = m.blockSize;
  for (let i = 0; i < count; i++) {
    const r = rnd();
    const size = m.blockCount * bs;
    const restoring = m.restore !== null;
    if (r < 0.26) {
      const aligned = rnd() < 0.6;
      const off = aligned ? Math.floor(rnd() * m.blockCount) * bs : Math.floor(rnd() * size);
      const len = Math.min(size - off, aligned ? (1 + Math.floor(rnd() * 2)) * bs : 1 + Math.floor(rnd() * 2 * bs));
      const data = pattern(1 + Math.floor(rnd() * 2 ** 30), len);
      m.write(off, data);
      note(t);
      trace('write', off, len);
      await vol.write(off, data);
    } else if (r < 0.4) {
      const rw = pickOf(rwsOf(m), rnd());
      if (rw === undefined) continue;
      const rsize = rw.blockCount * bs;
      const off = Math.floor(rnd() * rsize);
      const len = Math.min(rsize - off, 1 + Math.floor(rnd() * 2 * bs));
      const data = pattern(1 + Math.floor(rnd() * 2 ** 30), len);
      m.rwWrite(rw.id, off, data);
      note(t);
      trace('rw-write', rw.id, off, len);
      await vol.writeRw(rw.id, off, data);
    } else if (r < 0.53) {
      if (!restoring) continue;
      t.inflight = { kind: 'step' };
      trace('step');
      if (rnd() < 0.4) {
        const b = Math.floor(rnd() * m.blockCount);
        const data = pattern(1 + Math.floor(rnd() * 2 ** 30), bs);
        m.write(b * bs, data);
        note(t);
        await Promise.all([vol.restoreStep(1 + Math.floor(rnd() * 6)), vol.write(b * bs, data)]);
      } else await vol.restoreStep(1 + Math.floor(rnd() * 8));
      t.inflight = { kind: 'none' };
      if (vol.restoreStatus() === null) m.restoreEnd();
    } else if (r < 0.61) {
      trace('flush');
      await vol.flush();
      durable(t);
      trace('flushed');
    } else if (r < 0.67) {
      if (restoring || m.snapshots.length >= MAX_SNAPS) continue;
      const useRw = rnd() < 0.5;
      const src = useRw
        ? pickOf(
            rwsOf(m).filter((x) => x.blockCount <= m.blockCount),
            rnd(),
          )
        : pickOf(visible(m), rnd());
      if (src === undefined) continue;
      const source = { kind: useRw ? ('rw' as const) : ('snapshot' as const), id: src.id };
      const x = m.sourceImage(source.kind, source.id).blocks.map((b) => b.slice());
      const order: RestoreOrder = rnd() < 0.5 ? 'old-then-new' : 'new-then-old';
      const keep = rnd() < 0.5;
      t.inflight = { kind: 'restore', source, keep, x };
      trace('restore', source, order, keep);
      const st = await vol.startRestore({ source, order, keepRestorePoint: keep, tag: 'rp' });
      m.restoreStart(source.kind, source.id, st.restorePointId, keep);
      t.restoreX = x;
      t.inflight = { kind: 'none' };
      durable(t);
    } else if (r < 0.73) {
      const rw = pickOf(
        rwsOf(m).filter((x) => !isSource(m, x.id)),
        rnd(),
      );
      if (rw === undefined) continue;
      const named = rnd() < 0.5 ? pickOf(visible(m), rnd()) : undefined;
      if (named === undefined && (restoring || m.snapshots.length >= MAX_SNAPS)) continue;
      t.inflight = { kind: 'refresh', rw: rw.id, oldBase: rw.base, target: named?.id ?? null };
      trace('refresh', t.inflight);
      const info = await vol.refreshRw(rw.id, named === undefined ? {} : { snapshotId: named.id });
      if (named === undefined) {
        m.snapshot(info.baseId, 'meta-bitmap');
        Object.assign(m.find(info.baseId), { hidden: true, autoDelete: true });
      }
      m.rwRefresh(rw.id, info.baseId);
      t.inflight = { kind: 'none' };
      t.cands.durable(rwKey(rw.id), m.rw(rw.id).blocks);
    } else if (r < 0.78) {
      const base = pickOf(visible(m), rnd());
      if (base === undefined) continue;
      const blocks = base.blockCount + Math.floor(rnd() * 3);
      t.inflight = { kind: 'create-rw', base: base.id, blocks };
      trace('create-rw', base.id);
      const info = await vol.createRw(base.id, { sizeBytes: blocks * bs, tag: `rw-on-${base.id}` });
      m.rwCreate(info.id, base.id, blocks, `rw-on-${base.id}`);
      t.inflight = { kind: 'none' };
      t.cands.durable(rwKey(info.id), m.rw(info.id).blocks);
    } else if (r < 0.82) {
      if (restoring || m.snapshots.length >= MAX_SNAPS) continue;
      t.inflight = { kind: 'clone-live' };
      trace('clone-live');
      const { snapshot, rw } = await vol.cloneLive({ tag: 'clone' });
      m.snapshot(snapshot.id, 'meta-bitmap');
      Object.assign(m.find(snapshot.id), { hidden: true, autoDelete: true });
      m.rwCreate(rw.id, snapshot.id, m.blockCount, 'clone');
      t.inflight = { kind: 'none' };
      durable(t);
    } else if (r < 0.86) {
      const rw = pickOf(
        rwsOf(m).filter((x) => !isSource(m, x.id)),
        rnd(),
      );
      if (rw === undefined) continue;
      t.inflight = { kind: 'delete-rw', rw: rw.id };
      trace('delete-rw', rw.id);
      await vol.deleteRw(rw.id);
      m.rwDelete(rw.id);
      t.cands.forget(rwKey(rw.id));
      t.inflight = { kind: 'none' };
    } else if (r < 0.9) {
      if (restoring || m.snapshots.length >= MAX_SNAPS) continue;
      const method: SnapshotMethod = rnd() < 0.5 ? 'save-volume' : 'meta-bitmap';
      t.inflight = { kind: 'snap', method };
      trace('snap');
      const s = await vol.createSnapshot({ method });
      m.snapshot(s.id, method);
      t.inflight = { kind: 'none' };
      durable(t);
    } else if (r < 0.95) {
      const off = Math.floor(rnd() * size);
      const len = Math.min(size - off, 1 + Math.floor(rnd() * 4 * bs));
      m.discard(off, len);
      note(t);
      trace('discard', off, len);
      await vol.discard(off, len);
    } else {
      const rw = pickOf(rwsOf(m), rnd());
      if (rw === undefined) continue;
      const rsize = rw.blockCount * bs;
      const off = Math.floor(rnd() * rsize);
      const len = Math.min(rsize - off, 1 + Math.floor(rnd() * 4 * bs));
      m.rwDiscard(rw.id, off, len);
      note(t);
      trace('rw-discard', rw.id, off, len);
      await vol.discardRw(rw.id, off, len);
    }
  }
}

async function readSnap(vol: SnapshotVolume, s: { id: number; blockCount: number }, bs: number) {
  return vol.readSnapshot(s.id, 0, s.blockCount * bs);
}

function toBlocks(bytes: Uint8Array, bs: number): Uint8Array[] {
  return Array.from({ length: bytes.length / bs }, (_, b) => bytes.slice(b * bs, (b + 1) * bs));
}

function validFrom(extents: { offset: number; length: number }[], granules: number, bs: number, g: number): boolean[] {
  const out = Array.from({ length: granules }, () => false);
  for (const e of extents)
    for (let b = e.offset / bs; b < (e.offset + e.length) / bs; b++) out[Math.floor(b / g)] = true;
  return out;
}

/**
 * Aligns the model with what survived (the interrupted operation happened or not), checks every view against
 * the acknowledged states, and returns a model rebuilt from the recovered volume for the rest of the run.
 */
async function verifyRecovered(vol: SnapshotVolume, t: Tracker): Promise<VolumeModel> {
  vol.verifyInvariants();
  const m = t.model;
  const bs = m.blockSize;
  const g = m.granuleBlocks;
  const f = t.inflight;
  const snaps = new Map(vol.listSnapshots().map((s) => [s.id, s]));
  const rws = new Map(vol.listRws().map((r) => [r.id, r]));
  const live = await vol.read(0, vol.sizeBytes);
  let exactLive = false;
  trace(
    'recovered: restore',
    vol.restoreStatus(),
    'rws',
    vol.listRws(),
    'snaps',
    vol.listSnapshots().map((s) => [s.id, s.hidden, s.savedBlocks]),
  );
  // 1. The interrupted operation.
  if (f.kind === 'restore' && vol.restoreStatus() !== null && m.restore === null) {
    const st = vol.restoreStatus()!;
    m.restoreStart(f.source.kind, f.source.id, st.restorePointId, f.keep);
    t.restoreX = f.x;
    exactLive = true; // its commit flushed everything before it
  }
  if (f.kind === 'step' && m.restore !== null && vol.restoreStatus() === null) m.restoreEnd();
  const newSnaps = [...snaps.keys()].filter((id) => !m.snapshots.some((s) => s.id === id));
  const newRws = [...rws.keys()].filter((id) => !m.rws.has(id));
  if (f.kind === 'snap' && newSnaps.length === 1) {
    // An unacknowledged cut that survived shows the volume as recovered and stays that way.
    m.snapshot(newSnaps[0]!, f.method);
    m.find(newSnaps[0]!).content = toBlocks(live.slice(0, m.blockCount * bs), bs);
  } else if (f.kind === 'clone-live' && newRws.length === 1) {
    const rw = rws.get(newRws[0]!)!;
    m.snapshot(rw.baseId, 'meta-bitmap');
    Object.assign(m.find(rw.baseId), { hidden: true, autoDelete: true });
    m.find(rw.baseId).content = toBlocks(live.slice(0, m.blockCount * bs), bs);
    m.rwCreate(rw.id, rw.baseId, m.blockCount, 'clone');
  } else if (f.kind === 'create-rw' && newRws.length === 1) {
    m.rwCreate(newRws[0]!, f.base, f.blocks, `rw-on-${f.base}`);
  } else if (f.kind === 'delete-rw' && !rws.has(f.rw)) {
    m.rwDelete(f.rw);
    t.cands.forget(rwKey(f.rw));
  } else if (f.kind === 'refresh' && rws.get(f.rw)?.baseId !== f.oldBase) {
    const base = rws.get(f.rw)!.baseId;
    if (f.target === null) {
      m.snapshot(base, 'meta-bitmap');
      Object.assign(m.find(base), { hidden: true, autoDelete: true });
      m.find(base).content = toBlocks(live.slice(0, m.blockCount * bs), bs);
    }
    m.rwRefresh(f.rw, base);
  }
  for (const id of newRws) if (m.rws.has(id)) t.cands.durable(rwKey(id), m.rw(id).blocks);
  if (f.kind === 'refresh' && m.rws.has(f.rw) && m.rw(f.rw).base !== f.oldBase) {
    t.cands.durable(rwKey(f.rw), m.rw(f.rw).blocks);
  }
  // 2. Lists.
  const ids = m.snapshots.map((s) => s.id).join(',');
  if ([...snaps.keys()].join(',') !== ids) throw new Error(`snapshots ${[...snaps.keys()]} != model ${ids}`);
  const rwIds = [...m.rws.keys()].sort((a, b) => a - b).join(',');
  if ([...rws.keys()].sort((a, b) => a - b).join(',') !== rwIds) throw new Error(`RW snapshots differ: ${rwIds}`);
  // 3. Content: snapshots exact (INV-1), RW snapshots and the live volume within their candidates.
  for (const s of m.snapshots) {
    if (s.restoring === true || s.invalid) continue;
    if (!equal(await readSnap(vol, s, bs), m.contentOf(s))) throw new Error(`INV-1 snapshot ${s.id} changed`);
  }
  for (const rw of m.rws.values()) {
    if (!rws.get(rw.id)!.valid) continue;
    t.cands.check(rwKey(rw.id), await vol.readRw(rw.id, 0, rw.blockCount * bs), bs);
  }
  if (exactLive) {
    if (!equal(live, m.contentOf('live'))) throw new Error('an interrupted restore that happened is not exact');
  } else t.cands.check('live', live, bs);
  // 4. Rebuild the oracle from the recovered volume.
  const next = new VolumeModel(bs, vol.blockCount, g);
  next.blocks = toBlocks(live, bs);
  next.valid = validFrom(vol.allocatedExtents('live'), next.valid.length, bs, g);
  for (const s of m.snapshots) {
    const info = snaps.get(s.id)!;
    const copy: ModelSnapshot = { ...s, periodWrites: new Set(Array.from({ length: next.blockCount }, (_, b) => b)) };
    copy.invalid = info.state === 'invalid';
    next.snapshots.push(copy);
  }
  for (const rw of m.rws.values()) {
    const info = rws.get(rw.id)!;
    const content = info.valid ? await vol.readRw(rw.id, 0, rw.blockCount * bs) : m.rwContent(rw.id);
    next.rws.set(rw.id, {
      ...rw,
      blocks: toBlocks(content, bs),
      valid: validFrom(vol.allocatedRwExtents(rw.id), Math.ceil(rw.blockCount / g), bs, g),
    });
  }
  next.restore = m.restore;
  return next;
}

async function crashIteration(root: string, seed: number, mode: CrashMode): Promise<boolean> {
  const rnd = rng(seed);
  const dir = join(root, `it-${seed}`);
  const bs = rnd() < 0.5 ? 512 : 4096;
  const granuleBlocks = rnd() < 0.7 ? 1 : 2;
  const blocks = 12 + Math.floor(rnd() * 20);
  const options = { checkpointJournalBytes: 4096, maxSnapshots: MAX_SNAPS + 2 };
  // Setup outside the crash window: data, two snapshots, an RW snapshot with data, maybe a running restore.
  const setupStore = new VolumeStore(dir, new NodeFileIo({ durable: false }), { journalPreallocateBytes: 16 * 1024 });
  const setup = await setupStore.create('vol', { sizeBytes: blocks * bs, blockSize: bs, granuleBlocks, ...options });
  const t: Tracker = {
    model: new VolumeModel(bs, blocks, granuleBlocks),
    cands: new Candidates(),
    inflight: { kind: 'none' },
    restoreX: null,
  };
  const m = t.model;
  const fill = pattern(seed, blocks * bs);
  await setup.write(0, fill);
  m.write(0, fill);
  const s1 = await setup.createSnapshot({ method: rnd() < 0.5 ? 'save-volume' : 'meta-bitmap' });
  m.snapshot(s1.id, s1.method);
  const rw = await setup.createRw(s1.id, { tag: 'setup' });
  m.rwCreate(rw.id, s1.id, blocks, 'setup');
  for (let i = 0; i < 4; i++) {
    const b = Math.floor(rnd() * blocks);
    const d = pattern(seed + 100 + i, bs);
    await setup.writeRw(rw.id, b * bs, d);
    m.rwWrite(rw.id, b * bs, d);
    const p = Math.floor(rnd() * blocks);
    const e = pattern(seed + 200 + i, bs);
    await setup.write(p * bs, e);
    m.write(p * bs, e);
  }
  const s2 = await setup.createSnapshot();
  m.snapshot(s2.id, 'save-volume');
  for (let i = 0; i < 3; i++) {
    const p = Math.floor(rnd() * blocks);
    await setup.write(p * bs, pattern(seed + 300 + i, bs));
    m.write(p * bs, pattern(seed + 300 + i, bs));
  }
  if (rnd() < 0.5) {
    const source = rnd() < 0.5 ? { kind: 'rw' as const, id: rw.id } : { kind: 'snapshot' as const, id: s1.id };
    t.restoreX = m.sourceImage(source.kind, source.id).blocks.map((b) => b.slice());
    const keep = rnd() < 0.5;
    const st = await setup.startRestore({
      source,
      keepRestorePoint: keep,
      order: rnd() < 0.5 ? 'old-then-new' : 'new-then-old',
    });
    m.restoreStart(source.kind, source.id, st.restorePointId, keep);
  }
  await setup.close();
  durable(t);
  // The crash window.
  const ctl = new CrashController(1 + Math.floor(rnd() * CRASH_WINDOW), rnd);
  let midRun = false;
  try {
    const vol = await new VolumeStore(dir, new CrashFileIo(ctl)).openVolume('vol', options);
    await runOps(vol, t, rnd, 30);
  } catch (err) {
    if (!ctl.hasCrashed) throw err;
    midRun = true;
  }
  if (!ctl.hasCrashed) ctl.crashNow();
  trace('crash', midRun, 'inflight', t.inflight.kind, 'restore', t.model.restore);
  ctl.settle(mode);
  ctl.closeFiles();
  const vol = await new VolumeStore(dir, new NodeFileIo({ durable: false })).openVolume('vol', options);
  try {
    const next = await verifyRecovered(vol, t);
    // INV-13: finishing the resumed restore changes nothing a reader sees.
    if (next.restore !== null) {
      const before = await vol.read(0, vol.sizeBytes);
      const rwBefore = new Map<number, Uint8Array>();
      for (const r of vol.listRws()) if (r.valid) rwBefore.set(r.id, await vol.readRw(r.id, 0, r.sizeBytes));
      const rp = next.restore.rpId;
      const keep = next.restore.keep;
      while (vol.restoreStatus() !== null) await vol.restoreStep(1 + Math.floor(rnd() * 5));
      next.restoreEnd();
      if (!equal(await vol.read(0, vol.sizeBytes), before))
        throw new Error('INV-13 completing the restore changed the volume');
      for (const [id, bytes] of rwBefore) {
        if (!equal(await vol.readRw(id, 0, bytes.length), bytes))
          throw new Error(`restore completion changed RW ${id}`);
      }
      if (keep && t.restoreX !== null) {
        const rpBytes = await vol.readSnapshot(rp, 0, vol.getSnapshot(rp).sizeBytes);
        const want = next.find(rp);
        if (!equal(rpBytes, next.contentOf(want))) throw new Error('kept restore point differs from the source');
      }
    }
    await checkVolume(vol, next, { tight: false });
    const follow: Tracker = { model: next, cands: new Candidates(), inflight: { kind: 'none' }, restoreX: null };
    durable(follow);
    await runOps(vol, follow, rnd, 10);
    while (vol.restoreStatus() !== null) await vol.restoreStep(8);
    if (next.restore !== null) next.restoreEnd();
    await checkVolume(vol, next, { tight: false });
  } finally {
    await vol.close();
    rmSync(dir, { recursive: true, force: true });
  }
  return midRun;
}

const ONE_SEED = process.env.LOOPSNAP_CRASH_SEED;

describe('crash safety of RW snapshots, refresh and in-place restore on file-backed volumes', () => {
  const root = mkdtempSync(join(tmpdir(), 'loopsnap-crash-restore-'));
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it.each(MODES)(
    `%s: ${ITERATIONS / 3} injected crashes lose nothing acknowledged and the restore resumes`,
    async (mode) => {
      let midRun = 0;
      const base = MODES.indexOf(mode) * 1_000_000 + 5_000_017;
      const seeds = ONE_SEED
        ? mode === (process.env.LOOPSNAP_CRASH_MODE ?? mode)
          ? [Number(ONE_SEED)]
          : []
        : Array.from({ length: ITERATIONS / 3 }, (_, i) => base + i);
      for (const seed of seeds) {
        try {
          if (await crashIteration(root, seed, mode)) midRun++;
        } catch (err) {
          throw new Error(`crash iteration failed (mode ${mode}, seed ${seed}): ${(err as Error).message}`, {
            cause: err,
          });
        }
      }
      if (!ONE_SEED) expect(midRun).toBeGreaterThan(ITERATIONS / 3 / 2);
    },
    600_000,
  );
});
