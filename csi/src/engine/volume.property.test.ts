// SPDX-License-Identifier: Apache-2.0
// Model-based property test (spec §5): random sequences of full and partial writes, discards, snapshot
// create (both methods mixed) and delete at any position, resizes, flushes, checkpoints, quota exhaustion
// and reopen, run against the array oracle; every applicable invariant is checked after every step.
// LOOPSNAP_LONG=1 runs 25x more sequences.
import fc from 'fast-check';
import { describe, it } from 'vitest';
import { MemBlockDevice, MemMetaStore } from './block-device.js';
import type { SnapshotMethod } from './layout.js';
import { checkVolume } from './testing/check.js';
import { pattern, VolumeModel } from './testing/model.js';
import { SnapshotVolume } from './volume.js';

const LONG = process.env.LOOPSNAP_LONG === '1';
const RUNS = LONG ? 50_000 : 2_000;

interface Config {
  blockSize: number;
  granuleBlocks: number;
  blocks: number;
  quotaSlots: number | null;
}

type Op =
  | { kind: 'write'; at: number; len: number; seed: number; aligned: boolean }
  | { kind: 'discard'; at: number; len: number; aligned: boolean }
  | { kind: 'snap'; method: SnapshotMethod }
  | { kind: 'delete'; pick: number }
  | { kind: 'reopen' }
  | { kind: 'resize'; add: number }
  | { kind: 'flush' }
  | { kind: 'checkpoint' }
  | { kind: 'burst'; seeds: number[] };

const configArb: fc.Arbitrary<Config> = fc.record({
  blockSize: fc.constantFrom(512, 1024, 4096),
  granuleBlocks: fc.constantFrom(1, 1, 2, 4),
  blocks: fc.integer({ min: 8, max: 48 }),
  quotaSlots: fc.option(fc.integer({ min: 2, max: 24 }), { freq: 4 }),
});

const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 12,
    arbitrary: fc.record({
      kind: fc.constant('write' as const),
      at: fc.nat(),
      len: fc.integer({ min: 1, max: 3 }),
      seed: fc.integer({ min: 1, max: 2 ** 30 }),
      aligned: fc.boolean(),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant('discard' as const),
      at: fc.nat(),
      len: fc.integer({ min: 1, max: 8 }),
      aligned: fc.boolean(),
    }),
  },
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant('snap' as const),
      method: fc.constantFrom<SnapshotMethod>('save-volume', 'meta-bitmap'),
    }),
  },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('delete' as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'reopen' as const }) },
  {
    weight: 1,
    arbitrary: fc.record({ kind: fc.constant('resize' as const), add: fc.integer({ min: 1, max: 12 }) }),
  },
  { weight: 1, arbitrary: fc.constant({ kind: 'flush' as const }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'checkpoint' as const }) },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('burst' as const),
      seeds: fc.array(fc.integer({ min: 1, max: 2 ** 30 }), { minLength: 2, maxLength: 6 }),
    }),
  },
);

async function runSequence(cfg: Config, ops: Op[]): Promise<void> {
  const bs = cfg.blockSize;
  const devices = { clone: new MemBlockDevice(bs), save: new MemBlockDevice(bs), meta: new MemMetaStore() };
  const options = { checkpointJournalBytes: 4096 };
  let vol = await SnapshotVolume.create(devices, {
    ...options,
    sizeBytes: cfg.blocks * bs,
    blockSize: bs,
    granuleBlocks: cfg.granuleBlocks,
    saveQuotaBytes: cfg.quotaSlots === null ? null : cfg.quotaSlots * bs,
  });
  const model = new VolumeModel(bs, cfg.blocks, cfg.granuleBlocks);
  const range = (at: number, len: number, aligned: boolean): [number, number] => {
    const size = model.blockCount * bs;
    let off = aligned ? (at % model.blockCount) * bs : at % size;
    let n = aligned ? len * bs : Math.max(1, len * bs - (at % 777));
    if (off + n > size) n = size - off;
    if (n <= 0) off = 0;
    return [off, Math.max(n, 1)];
  };
  try {
    for (const op of ops) {
      switch (op.kind) {
        case 'write': {
          const [off, n] = range(op.at, op.len, op.aligned);
          const data = pattern(op.seed, n);
          // INV-6: a write whose blocks every snapshot treats as unused allocates no save block.
          const noSave = model.touched(off, n).every((b) => !model.anySnapshotValidFor(b));
          const used = vol.stats().savePoolUsedBytes;
          await vol.write(off, data);
          model.write(off, data);
          if (noSave && vol.stats().savePoolUsedBytes !== used) throw new Error('INV-6 write to unused blocks saved');
          break;
        }
        case 'burst': {
          // Concurrent writes to distinct blocks: one group commit covers their before-images.
          const blocks = [...new Set(op.seeds.map((s) => s % model.blockCount))];
          const datas = blocks.map((b, i) => pattern(op.seeds[i]!, bs));
          await Promise.all(blocks.map((b, i) => vol.write(b * bs, datas[i]!)));
          blocks.forEach((b, i) => model.write(b * bs, datas[i]!));
          break;
        }
        case 'discard': {
          const [off, n] = range(op.at, op.len, op.aligned);
          await vol.discard(off, n);
          model.discard(off, n);
          break;
        }
        case 'snap': {
          if (model.snapshots.length >= 6) break;
          const s = await vol.createSnapshot({ method: op.method });
          model.snapshot(s.id, op.method);
          break;
        }
        case 'delete': {
          if (model.snapshots.length === 0) break;
          const id = model.snapshots[op.pick % model.snapshots.length]!.id;
          await vol.deleteSnapshot(id);
          model.delete(id);
          break;
        }
        case 'reopen':
          await vol.close();
          vol = await SnapshotVolume.open(devices, options);
          break;
        case 'resize':
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
    for (const s of [...model.snapshots]) {
      await vol.deleteSnapshot(s.id);
      model.delete(s.id);
    }
    await checkVolume(vol, model);
  } finally {
    await vol.close();
  }
}

describe('snapshot engine against the array oracle', () => {
  it(`${RUNS} random sequences keep INV-1/2/4/5/6/7/8/9/10/18 and OP-18 after every step`, async () => {
    await fc.assert(
      fc.asyncProperty(configArb, fc.array(opArb, { minLength: 1, maxLength: LONG ? 80 : 40 }), runSequence),
      { numRuns: RUNS },
    );
  }, 600_000);
});
