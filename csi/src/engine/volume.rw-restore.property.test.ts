// SPDX-License-Identifier: Apache-2.0
// Model-based property test of the writable and restorative half of the engine (spec §5): random sequences
// mixing production I/O and snapshots with RW snapshots (create, clone of the live volume, write, discard,
// resize, refresh onto a new or a named snapshot, delete), deferred and refused snapshot deletion, and
// in-place restores from RO and RW snapshots in both copy orders, whose background copy advances in random
// steps interleaved with (and concurrent to) foreground reads and writes, reopens included. Every applicable
// invariant is checked after every step: INV-1..INV-12 and INV-14 against the oracle, structure in verify.ts.
// LOOPSNAP_LONG=1 runs 20x more sequences.
import fc from 'fast-check';
import { describe, it } from 'vitest';
import { MemBlockDevice, MemMetaStore } from './block-device.js';
import { isEngineError } from './errors.js';
import type { RestoreOrder, SnapshotMethod } from './layout.js';
import { checkVolume } from './testing/check.js';
import { pattern, VolumeModel } from './testing/model.js';
import { SnapshotVolume } from './volume.js';

const LONG = process.env.LOOPSNAP_LONG === '1';
const RUNS = Number(process.env.LOOPSNAP_PROPERTY_RUNS ?? (LONG ? 20_000 : 600));
const MAX_SNAPSHOTS = 8;

interface Config {
  blockSize: number;
  granuleBlocks: number;
  blocks: number;
}

type Op =
  | { kind: 'write'; at: number; len: number; seed: number; aligned: boolean }
  | { kind: 'discard'; at: number; len: number; aligned: boolean }
  | { kind: 'snap'; method: SnapshotMethod }
  | { kind: 'delete'; pick: number; deferred: boolean }
  | { kind: 'rw-create'; pick: number; extra: number }
  | { kind: 'clone-live'; extra: number }
  | { kind: 'rw-write'; pick: number; at: number; len: number; seed: number; aligned: boolean }
  | { kind: 'rw-discard'; pick: number; at: number; len: number; aligned: boolean }
  | { kind: 'rw-resize'; pick: number; add: number }
  | { kind: 'rw-delete'; pick: number }
  | { kind: 'rw-refresh'; pick: number; target: number | null }
  | { kind: 'restore'; fromRw: boolean; pick: number; order: RestoreOrder; keep: boolean }
  | { kind: 'step'; blocks: number; withWrite: { at: number; seed: number } | null }
  | { kind: 'reopen' }
  | { kind: 'resize'; add: number }
  | { kind: 'flush' }
  | { kind: 'checkpoint' };

const configArb: fc.Arbitrary<Config> = fc.record({
  blockSize: fc.constantFrom(512, 4096),
  granuleBlocks: fc.constantFrom(1, 1, 2, 4),
  blocks: fc.integer({ min: 8, max: 40 }),
});

const io = { at: fc.nat(), len: fc.integer({ min: 1, max: 3 }), aligned: fc.boolean() };
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 8, arbitrary: fc.record({ kind: fc.constant('write' as const), ...io, seed: fc.integer({ min: 1 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('discard' as const), ...io }) },
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant('snap' as const),
      method: fc.constantFrom<SnapshotMethod>('save-volume', 'meta-bitmap'),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({ kind: fc.constant('delete' as const), pick: fc.nat(), deferred: fc.boolean() }),
  },
  {
    weight: 3,
    arbitrary: fc.record({ kind: fc.constant('rw-create' as const), pick: fc.nat(), extra: fc.nat({ max: 3 }) }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('clone-live' as const), extra: fc.nat({ max: 2 }) }) },
  {
    weight: 8,
    arbitrary: fc.record({
      kind: fc.constant('rw-write' as const),
      pick: fc.nat(),
      ...io,
      seed: fc.integer({ min: 1 }),
    }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('rw-discard' as const), pick: fc.nat(), ...io }) },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('rw-resize' as const),
      pick: fc.nat(),
      add: fc.integer({ min: 1, max: 4 }),
    }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('rw-delete' as const), pick: fc.nat() }) },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('rw-refresh' as const),
      pick: fc.nat(),
      target: fc.option(fc.nat(), { freq: 2 }),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant('restore' as const),
      fromRw: fc.boolean(),
      pick: fc.nat(),
      order: fc.constantFrom<RestoreOrder>('old-then-new', 'new-then-old'),
      keep: fc.boolean(),
    }),
  },
  {
    weight: 6,
    arbitrary: fc.record({
      kind: fc.constant('step' as const),
      blocks: fc.integer({ min: 1, max: 4 }),
      withWrite: fc.option(fc.record({ at: fc.nat(), seed: fc.integer({ min: 1 }) }), { freq: 2 }),
    }),
  },
  { weight: 1, arbitrary: fc.constant({ kind: 'reopen' as const }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('resize' as const), add: fc.integer({ min: 1, max: 6 }) }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'flush' as const }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'checkpoint' as const }) },
);

/** Expects `p` to fail with `code`. */
async function refused(p: Promise<unknown>, code: string): Promise<void> {
  try {
    await p;
  } catch (err) {
    if (isEngineError(err) && err.code === code) return;
    throw err;
  }
  throw new Error(`expected ${code}`);
}

function pick<T>(items: readonly T[], n: number): T | undefined {
  return items.length === 0 ? undefined : items[n % items.length];
}

async function runSequence(cfg: Config, ops: Op[]): Promise<void> {
  const bs = cfg.blockSize;
  const devices = { clone: new MemBlockDevice(bs), save: new MemBlockDevice(bs), meta: new MemMetaStore() };
  const options = { checkpointJournalBytes: 4096, maxSnapshots: MAX_SNAPSHOTS };
  let vol = await SnapshotVolume.create(devices, {
    ...options,
    sizeBytes: cfg.blocks * bs,
    blockSize: bs,
    granuleBlocks: cfg.granuleBlocks,
  });
  const model = new VolumeModel(bs, cfg.blocks, cfg.granuleBlocks);
  const range = (size: number, at: number, len: number, aligned: boolean): [number, number] => {
    const blocks = size / bs;
    let off = aligned ? (at % blocks) * bs : at % size;
    let n = aligned ? len * bs : Math.max(1, len * bs - (at % 777));
    if (off + n > size) n = size - off;
    if (n <= 0) off = 0;
    return [off, Math.max(n, 1)];
  };
  const visible = () => model.snapshots.filter((s) => s.autoDelete !== true && s.restoring !== true);
  const afterStep = async () => {
    if (model.restore !== null && vol.restoreStatus() === null) model.restoreEnd();
  };
  try {
    for (const op of ops) {
      switch (op.kind) {
        case 'write': {
          const [off, n] = range(model.blockCount * bs, op.at, op.len, op.aligned);
          const data = pattern(op.seed, n);
          await vol.write(off, data);
          model.write(off, data);
          break;
        }
        case 'discard': {
          const [off, n] = range(model.blockCount * bs, op.at, op.len, op.aligned);
          await vol.discard(off, n);
          model.discard(off, n);
          break;
        }
        case 'snap': {
          if (model.snapshots.length >= MAX_SNAPSHOTS - 1) break;
          if (model.restore !== null) {
            await refused(vol.createSnapshot({ method: op.method }), 'ENGINE_RESTORE_IN_PROGRESS');
            break;
          }
          const s = await vol.createSnapshot({ method: op.method });
          model.snapshot(s.id, op.method);
          break;
        }
        case 'delete': {
          const s = pick(visible(), op.pick);
          if (s === undefined) break;
          if (!model.pinned(s.id)) {
            const r = await vol.deleteSnapshot(s.id, { whenUnpinned: op.deferred });
            if (r.deferred) throw new Error('deferred an unpinned delete');
            model.delete(s.id);
          } else if (op.deferred) {
            const r = await vol.deleteSnapshot(s.id, { whenUnpinned: true });
            if (!r.deferred) throw new Error('a pinned delete was not deferred');
            model.deleteWhenUnpinned(s.id);
          } else {
            await refused(vol.deleteSnapshot(s.id), 'ENGINE_SNAPSHOT_BUSY');
          }
          break;
        }
        case 'rw-create': {
          const s = pick(visible(), op.pick);
          if (s === undefined) break;
          const rw = await vol.createRw(s.id, { tag: `rw-${s.id}`, sizeBytes: (s.blockCount + op.extra) * bs });
          model.rwCreate(rw.id, s.id, s.blockCount + op.extra, `rw-${s.id}`);
          break;
        }
        case 'clone-live': {
          if (model.snapshots.length >= MAX_SNAPSHOTS - 1) break;
          if (model.restore !== null) {
            await refused(vol.cloneLive(), 'ENGINE_RESTORE_IN_PROGRESS');
            break;
          }
          const { snapshot, rw } = await vol.cloneLive({
            tag: 'clone',
            sizeBytes: (model.blockCount + op.extra) * bs,
          });
          model.snapshot(snapshot.id, 'meta-bitmap');
          Object.assign(model.find(snapshot.id), { hidden: true, autoDelete: true });
          model.rwCreate(rw.id, snapshot.id, model.blockCount + op.extra, 'clone');
          break;
        }
        case 'rw-write': {
          const rw = pick([...model.rws.values()], op.pick);
          if (rw === undefined) break;
          const [off, n] = range(rw.blockCount * bs, op.at, op.len, op.aligned);
          const data = pattern(op.seed, n);
          await vol.writeRw(rw.id, off, data);
          model.rwWrite(rw.id, off, data);
          break;
        }
        case 'rw-discard': {
          const rw = pick([...model.rws.values()], op.pick);
          if (rw === undefined) break;
          const [off, n] = range(rw.blockCount * bs, op.at, op.len, op.aligned);
          await vol.discardRw(rw.id, off, n);
          model.rwDiscard(rw.id, off, n);
          break;
        }
        case 'rw-resize': {
          const rw = pick([...model.rws.values()], op.pick);
          if (rw === undefined) break;
          if (isSource(model, rw.id)) {
            await refused(vol.resizeRw(rw.id, (rw.blockCount + op.add) * bs), 'ENGINE_RW_BUSY');
            break;
          }
          await vol.resizeRw(rw.id, (rw.blockCount + op.add) * bs);
          model.rwResize(rw.id, rw.blockCount + op.add);
          break;
        }
        case 'rw-delete': {
          const rw = pick([...model.rws.values()], op.pick);
          if (rw === undefined) break;
          if (isSource(model, rw.id)) {
            await refused(vol.deleteRw(rw.id), 'ENGINE_RW_BUSY');
            break;
          }
          await vol.deleteRw(rw.id);
          model.rwDelete(rw.id);
          break;
        }
        case 'rw-refresh': {
          const rw = pick([...model.rws.values()], op.pick);
          if (rw === undefined) break;
          if (isSource(model, rw.id)) {
            await refused(vol.refreshRw(rw.id), 'ENGINE_RW_BUSY');
            break;
          }
          if (op.target !== null) {
            const s = pick(visible(), op.target);
            if (s === undefined) break;
            await vol.refreshRw(rw.id, { snapshotId: s.id });
            model.rwRefresh(rw.id, s.id);
            break;
          }
          if (model.snapshots.length >= MAX_SNAPSHOTS - 1) break;
          if (model.restore !== null) {
            await refused(vol.refreshRw(rw.id), 'ENGINE_RESTORE_IN_PROGRESS');
            break;
          }
          const info = await vol.refreshRw(rw.id);
          model.snapshot(info.baseId, 'meta-bitmap');
          Object.assign(model.find(info.baseId), { hidden: true, autoDelete: true });
          model.rwRefresh(rw.id, info.baseId);
          break;
        }
        case 'restore': {
          const src = op.fromRw
            ? pick(
                [...model.rws.values()].map((r) => ({ kind: 'rw' as const, id: r.id, blocks: r.blockCount })),
                op.pick,
              )
            : pick(
                visible().map((s) => ({ kind: 'snapshot' as const, id: s.id, blocks: s.blockCount })),
                op.pick,
              );
          if (src === undefined || model.snapshots.length >= MAX_SNAPSHOTS) break;
          const start = vol.startRestore({
            source: { kind: src.kind, id: src.id },
            order: op.order,
            keepRestorePoint: op.keep,
          });
          if (model.restore !== null) {
            await refused(start, 'ENGINE_RESTORE_IN_PROGRESS');
            break;
          }
          if (src.blocks > model.blockCount) {
            await refused(start, 'ENGINE_BAD_ARGUMENT');
            break;
          }
          const st = await start;
          model.restoreStart(src.kind, src.id, st.restorePointId, op.keep);
          break;
        }
        case 'step': {
          if (op.withWrite === null) await vol.restoreStep(op.blocks);
          else {
            // A foreground write racing the copier: both run at once, the write was issued last.
            const [off] = range(model.blockCount * bs, op.withWrite.at, 1, true);
            const data = pattern(op.withWrite.seed, bs);
            await Promise.all([vol.restoreStep(op.blocks), vol.write(off, data)]);
            model.write(off, data);
          }
          await afterStep();
          break;
        }
        case 'reopen':
          await vol.close();
          vol = await SnapshotVolume.open(devices, options);
          break;
        case 'resize':
          if (model.restore !== null) {
            await refused(vol.resize((model.blockCount + op.add) * bs), 'ENGINE_RESTORE_IN_PROGRESS');
            break;
          }
          await vol.resize((model.blockCount + op.add) * bs);
          model.grow(model.blockCount + op.add);
          break;
        case 'flush':
          await vol.flush();
          break;
        case 'checkpoint':
          await vol.checkpoint();
          break;
      }
      await checkVolume(vol, model);
    }
    // Finish any restore, then take everything down: the pool must end empty (INV-7).
    while (vol.restoreStatus() !== null) await vol.restoreStep(64);
    if (model.restore !== null) model.restoreEnd();
    await checkVolume(vol, model);
    for (const id of [...model.rws.keys()]) {
      await vol.deleteRw(id);
      model.rwDelete(id);
    }
    for (const s of [...model.snapshots]) {
      await vol.deleteSnapshot(s.id);
      model.delete(s.id);
    }
    await checkVolume(vol, model);
    if (vol.stats().savePoolUsedBytes !== 0) throw new Error('INV-7 save pool not empty at the end');
  } finally {
    await vol.close();
  }
}

function isSource(model: VolumeModel, rwId: number): boolean {
  return model.restore?.source.kind === 'rw' && model.restore.source.id === rwId;
}

describe('RW snapshots, refresh and in-place restore against the array oracle', () => {
  it(`${RUNS} random sequences keep INV-1..INV-12 and INV-14 after every step`, async () => {
    await fc.assert(
      fc.asyncProperty(configArb, fc.array(opArb, { minLength: 20, maxLength: LONG ? 90 : 45 }), runSequence),
      { numRuns: RUNS },
    );
  }, 600_000);
});
