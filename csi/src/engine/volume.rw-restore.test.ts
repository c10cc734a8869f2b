// SPDX-License-Identifier: Apache-2.0
// Named tests of RW snapshots, refresh and in-place restore: the spec §6 edge cases that apply (EC-2, EC-3,
// EC-4, EC-5, EC-7, EC-8, EC-14, EC-15), golden scenario 4, OP-13's hazard, the copy orders of claims 14/15,
// stable error codes, and the shared-memory routing of production reads during a restore.
import { describe, expect, it } from 'vitest';
import { MemBlockDevice, MemMetaStore } from './block-device.js';
import { engineError } from './errors.js';
import { CTL_FLAGS, enterDirectWrite, readRoute, FLAG_READS_VIA_ENGINE } from './shared-state.js';
import { checkVolume } from './testing/check.js';
import { pattern, VolumeModel } from './testing/model.js';
import { SnapshotVolume } from './volume.js';

const BS = 4096;
const code = (c: string) => expect.objectContaining({ code: c });
const same = (a: Uint8Array, b: Uint8Array) => Buffer.compare(a, b) === 0;

function devices() {
  return { clone: new MemBlockDevice(BS), save: new MemBlockDevice(BS), meta: new MemMetaStore() };
}

async function setup(blocks = 16, extra: Partial<Parameters<typeof SnapshotVolume.create>[1]> = {}) {
  const d = devices();
  const vol = await SnapshotVolume.create(d, { sizeBytes: blocks * BS, ...extra });
  const model = new VolumeModel(BS, blocks, extra.granuleBlocks ?? 1);
  const w = async (b: number, seed: number, n = 1) => {
    const data = pattern(seed, n * BS);
    await vol.write(b * BS, data);
    model.write(b * BS, data);
  };
  const snap = async (method: 'save-volume' | 'meta-bitmap' = 'save-volume') => {
    const s = await vol.createSnapshot({ method });
    model.snapshot(s.id, method);
    return s.id;
  };
  return { d, vol, model, w, snap };
}

async function finish(vol: SnapshotVolume, model: VolumeModel): Promise<void> {
  while (vol.restoreStatus() !== null) await vol.restoreStep(3);
  if (model.restore !== null) model.restoreEnd();
}

describe('RW snapshots (OP-7..OP-12)', () => {
  it('OP-8/OP-9, INV-3: an RW write changes only that RW snapshot; siblings on one base stay apart', async () => {
    const { vol, model, w, snap } = await setup();
    await w(0, 1, 16);
    const base = await snap();
    const a = await vol.createRw(base, { tag: 'a' });
    const b = await vol.createRw(base, { tag: 'b' });
    model.rwCreate(a.id, base, 16, 'a');
    model.rwCreate(b.id, base, 16, 'b');
    const data = pattern(9, BS);
    await vol.writeRw(a.id, 3 * BS, data);
    model.rwWrite(a.id, 3 * BS, data);
    await w(3, 10); // production overwrites the base's block: the RW snapshots keep reading the base
    expect(same(await vol.readRw(a.id, 3 * BS, BS), data)).toBe(true);
    expect(same(await vol.readRw(b.id, 3 * BS, BS), pattern(1, 16 * BS).subarray(3 * BS, 4 * BS))).toBe(true);
    await checkVolume(vol, model);
    expect(vol.getRw(a.id)).toMatchObject({ baseId: base, tag: 'a', savedBlocks: 1, valid: true });
  });

  it('EC-4: a partial RW write of a block without data merges onto the base; later partial writes go in place', async () => {
    const { vol, model, w, snap } = await setup(4);
    await w(0, 1, 4);
    const base = await snap();
    const rw = await vol.createRw(base);
    model.rwCreate(rw.id, base, 4);
    for (const [off, seed, len] of [
      [BS + 100, 2, 50],
      [BS + 4000, 3, 200],
      [0, 4, 3],
    ] as const) {
      const data = pattern(seed, len);
      await vol.writeRw(rw.id, off, data);
      model.rwWrite(rw.id, off, data);
    }
    await checkVolume(vol, model);
    expect(vol.getRw(rw.id).savedBlocks).toBe(3);
  });

  it('EC-2: concurrent writes to one new RW block allocate one slot and apply in issue order', async () => {
    const { vol, snap } = await setup(4);
    const base = await snap();
    const rw = await vol.createRw(base);
    await Promise.all([
      vol.writeRw(rw.id, 0, pattern(1, BS)),
      vol.writeRw(rw.id, 10, pattern(2, 10)),
      vol.writeRw(rw.id, 0, pattern(3, 5)),
    ]);
    const want = pattern(1, BS);
    want.set(pattern(2, 10), 10);
    want.set(pattern(3, 5), 0);
    expect(same(await vol.readRw(rw.id, 0, BS), want)).toBe(true);
    expect(vol.getRw(rw.id).savedBlocks).toBe(1);
    vol.verifyInvariants();
  });

  it('discard of whole granules gives RW slots back; the granule reads zeros even where the base has data', async () => {
    const { vol, model, w, snap } = await setup(16, { granuleBlocks: 4 });
    await w(0, 1, 16);
    const base = await snap();
    const rw = await vol.createRw(base);
    model.rwCreate(rw.id, base, 16);
    const data = pattern(5, 8 * BS);
    await vol.writeRw(rw.id, 0, data);
    model.rwWrite(rw.id, 0, data);
    expect(vol.getRw(rw.id).savedBlocks).toBe(8);
    await vol.discardRw(rw.id, 100, 8 * BS);
    model.rwDiscard(rw.id, 100, 8 * BS);
    await checkVolume(vol, model);
    expect(vol.getRw(rw.id).savedBlocks).toBe(5);
    expect(vol.allocatedRwExtents(rw.id)).toEqual([
      { offset: 0, length: 4 * BS },
      { offset: 8 * BS, length: 8 * BS },
    ]);
    // Revalidating a discarded granule reads zeros around the write, not the base's stale bytes.
    const one = pattern(6, 10);
    await vol.writeRw(rw.id, 5 * BS, one);
    model.rwWrite(rw.id, 5 * BS, one);
    await checkVolume(vol, model);
  });

  it('EC-8: a base is pinned; deleting it is refused with its dependants, or deferred until the last goes', async () => {
    const { vol, model, w, snap } = await setup();
    await w(0, 1, 4);
    const base = await snap();
    const rw = await vol.createRw(base, { tag: 'clone' });
    model.rwCreate(rw.id, base, 16, 'clone');
    await expect(vol.deleteSnapshot(base)).rejects.toThrow(code('ENGINE_SNAPSHOT_BUSY'));
    await expect(vol.deleteSnapshot(base)).rejects.toThrow(/RW snapshot\(s\) 1 are based on it/);
    expect(await vol.deleteSnapshot(base, { whenUnpinned: true })).toEqual({ deferred: true });
    model.deleteWhenUnpinned(base);
    expect(vol.getSnapshot(base)).toMatchObject({ hidden: true, autoDelete: true, rwChildren: [rw.id] });
    await expect(vol.createRw(base)).rejects.toThrow(code('ENGINE_UNKNOWN_SNAPSHOT'));
    await w(1, 2); // the RW snapshot keeps reading through the hidden base
    await checkVolume(vol, model);
    await vol.deleteRw(rw.id);
    expect(model.rwDelete(rw.id)).toEqual([base]);
    await checkVolume(vol, model);
    expect(vol.stats().savePoolUsedBytes).toBe(0);
  });

  it('a clone of the live volume is one commit; its hidden base goes with the clone, reopen included', async () => {
    const { d, vol, w } = await setup(8);
    await w(0, 1, 8);
    const { snapshot, rw } = await vol.cloneLive({ tag: 'pvc-clone', sizeBytes: 12 * BS });
    expect(snapshot).toMatchObject({ hidden: true, autoDelete: true, method: 'meta-bitmap' });
    expect(rw).toMatchObject({ baseId: snapshot.id, sizeBytes: 12 * BS, tag: 'pvc-clone' });
    await vol.writeRw(rw.id, 10 * BS, pattern(2, BS));
    await vol.flush();
    await vol.close();
    const again = await SnapshotVolume.open(d);
    expect(same(await again.readRw(rw.id, 0, 8 * BS), pattern(1, 8 * BS))).toBe(true);
    expect(same(await again.readRw(rw.id, 10 * BS, BS), pattern(2, BS))).toBe(true);
    expect(again.findRwByTag('pvc-clone')?.id).toBe(rw.id);
    await again.deleteRw(rw.id);
    expect(again.listSnapshots()).toEqual([]);
    again.verifyInvariants();
  });

  it('EC-5: RW data is not bounded by the save quota; a production write its base needs fails with ENOSPC', async () => {
    const { vol, w, snap } = await setup(8, { saveQuotaBytes: 2 * BS });
    await w(0, 1, 8);
    const base = await snap();
    const rw = await vol.createRw(base);
    await vol.writeRw(rw.id, 0, pattern(2, 2 * BS));
    await vol.writeRw(rw.id, 4 * BS, pattern(3, 2 * BS)); // past the quota: a PVC's own data
    await vol.writeRw(rw.id, 100, pattern(4, 10)); // in place: no new slot needed
    await w(5, 9);
    await w(6, 9);
    // The quota is full of before-images and the base has a dependant: the third save fails the write.
    const refused = vol.write(7 * BS, pattern(9, BS));
    await expect(refused).rejects.toThrow(code('ENGINE_SAVE_POOL_FULL'));
    await expect(refused.catch((e: { errno?: number }) => e.errno)).resolves.toBe(28);
    expect(vol.stats().writesRefusedTotal).toBe(1);
    expect(vol.getSnapshot(base).state).toBe('valid');
    const want = pattern(2, 2 * BS);
    want.set(pattern(4, 10), 100);
    expect(same(await vol.readRw(rw.id, 0, 2 * BS), want)).toBe(true);
    expect(same(await vol.readRw(rw.id, 4 * BS, 2 * BS), pattern(3, 2 * BS))).toBe(true);
    expect(same(await vol.read(5 * BS, BS), pattern(9, BS))).toBe(true);
    expect(same(await vol.readRw(rw.id, 7 * BS, BS), pattern(1, 8 * BS).subarray(7 * BS))).toBe(true);
    vol.verifyInvariants();
  });

  it('refresh (OP-10, INV-14) keeps id and tag, frees the old data, and deletes the old hidden base', async () => {
    const { vol, model, w } = await setup(8);
    await w(0, 1, 8);
    const { snapshot, rw } = await vol.cloneLive({ tag: 'dev' });
    model.snapshot(snapshot.id, 'meta-bitmap');
    Object.assign(model.find(snapshot.id), { hidden: true, autoDelete: true });
    model.rwCreate(rw.id, snapshot.id, 8, 'dev');
    await vol.writeRw(rw.id, 0, pattern(2, 3 * BS));
    model.rwWrite(rw.id, 0, pattern(2, 3 * BS));
    await w(4, 3);
    const refreshed = await vol.refreshRw(rw.id);
    expect(refreshed).toMatchObject({ id: rw.id, tag: 'dev', savedBlocks: 0 });
    expect(refreshed.baseId).not.toBe(snapshot.id);
    model.snapshot(refreshed.baseId, 'meta-bitmap');
    Object.assign(model.find(refreshed.baseId), { hidden: true, autoDelete: true });
    expect(model.rwRefresh(rw.id, refreshed.baseId)).toEqual([snapshot.id]);
    await checkVolume(vol, model);
    expect(same(await vol.readRw(rw.id, 0, 8 * BS), await vol.read(0, 8 * BS))).toBe(true);
    // Onto a named snapshot.
    const named = await vol.createSnapshot();
    model.snapshot(named.id, 'save-volume');
    await w(0, 4);
    await vol.refreshRw(rw.id, { snapshotId: named.id });
    model.rwRefresh(rw.id, named.id);
    await checkVolume(vol, model);
  });

  it('EC-15: refresh is one journal frame, so a failed commit leaves the old state after reopen', async () => {
    class FailingMeta extends MemMetaStore {
      failing = false;
      override async appendJournal(frame: Uint8Array): Promise<void> {
        if (this.failing) throw engineError('ENGINE_DEVICE_IO', 'journal gone');
        return super.appendJournal(frame);
      }
    }
    const meta = new FailingMeta();
    const d = { clone: new MemBlockDevice(BS), save: new MemBlockDevice(BS), meta };
    const vol = await SnapshotVolume.create(d, { sizeBytes: 8 * BS });
    await vol.write(0, pattern(1, 8 * BS));
    const { rw } = await vol.cloneLive({ tag: 'dev' });
    await vol.writeRw(rw.id, 0, pattern(2, BS));
    await vol.flush();
    await vol.write(0, pattern(3, BS));
    meta.failing = true;
    await expect(vol.refreshRw(rw.id)).rejects.toThrow(code('ENGINE_VOLUME_FAILED'));
    meta.failing = false;
    const again = await SnapshotVolume.open(d);
    expect(again.listRws()).toHaveLength(1);
    expect(same(await again.readRw(rw.id, 0, BS), pattern(2, BS))).toBe(true);
    expect(again.listSnapshots()).toHaveLength(1);
    again.verifyInvariants();
  });

  it('EC-7: an RW snapshot larger than its base reads zeros past the base and can grow', async () => {
    const { vol, w, snap } = await setup(4);
    await w(0, 1, 4);
    const base = await snap();
    const rw = await vol.createRw(base, { sizeBytes: 6 * BS });
    expect(same(await vol.readRw(rw.id, 4 * BS, 2 * BS), new Uint8Array(2 * BS))).toBe(true);
    await vol.resizeRw(rw.id, 8 * BS);
    await vol.writeRw(rw.id, 7 * BS, pattern(2, BS));
    expect(same(await vol.readRw(rw.id, 7 * BS, BS), pattern(2, BS))).toBe(true);
    await expect(vol.resizeRw(rw.id, 4 * BS)).rejects.toThrow(code('ENGINE_SHRINK_UNSUPPORTED'));
    await expect(vol.createRw(base, { sizeBytes: 2 * BS })).rejects.toThrow(code('ENGINE_BAD_ARGUMENT'));
    await expect(vol.readRw(99, 0, 1)).rejects.toThrow(code('ENGINE_UNKNOWN_RW'));
  });
});

describe('in-place restore (OP-13)', () => {
  it('reads see the source at once, writes go on, the copier finishes; INV-12 and a kept restore point', async () => {
    const { vol, model, w, snap } = await setup();
    await w(0, 1, 16);
    const s1 = await snap();
    await w(2, 2, 6);
    const st = await vol.startRestore({ source: { kind: 'snapshot', id: s1 }, keepRestorePoint: true, tag: 'rp' });
    model.restoreStart('snapshot', s1, st.restorePointId, true);
    expect(st).toMatchObject({ totalBlocks: 6, doneBlocks: 0, source: { kind: 'snapshot', id: s1 } });
    expect(same(await vol.read(0, 16 * BS), pattern(1, 16 * BS))).toBe(true);
    await expect(vol.readSnapshot(st.restorePointId, 0, BS)).rejects.toThrow(code('ENGINE_SNAPSHOT_NOT_READY'));
    await expect(vol.createSnapshot()).rejects.toThrow(code('ENGINE_RESTORE_IN_PROGRESS'));
    await w(3, 7); // restore-before-write
    const partial = pattern(8, 100);
    await vol.write(5 * BS + 50, partial); // EC-4: merged onto the restored block, not the stale clone
    model.write(5 * BS + 50, partial);
    await checkVolume(vol, model);
    expect(vol.restoreStatus()?.doneBlocks).toBe(2);
    await finish(vol, model);
    await checkVolume(vol, model);
    expect(vol.getSnapshot(st.restorePointId)).toMatchObject({ hidden: false, restoring: false, tag: 'rp' });
    expect(same(await vol.readSnapshot(st.restorePointId, 0, 16 * BS), pattern(1, 16 * BS))).toBe(true);
  });

  it('the OP-13 hazard: snapshots younger than the source and RW snapshots of other bases keep their content (EC-14)', async () => {
    const { vol, model, w, snap } = await setup();
    await w(0, 1, 16);
    const s1 = await snap('meta-bitmap');
    await w(0, 2, 4);
    const s2 = await snap(); // reads blocks 4..15 from the clone
    const rw2 = await vol.createRw(s2);
    model.rwCreate(rw2.id, s2, 16);
    await w(0, 3, 2);
    const st = await vol.startRestore({ source: { kind: 'snapshot', id: s1 } });
    model.restoreStart('snapshot', s1, st.restorePointId, false);
    await finish(vol, model);
    await checkVolume(vol, model);
    expect(vol.listSnapshots().map((s) => s.id)).toEqual([s1, s2]);
  });

  it.each(['old-then-new', 'new-then-old'] as const)(
    'golden 4: restore from an RW snapshot while a younger RO snapshot exists, %s, killed at every step',
    async (order) => {
      for (let killAt = 0; killAt < 12; killAt++) {
        const { d, vol, model, w, snap } = await setup(12);
        await w(0, 1, 12);
        const base = await snap();
        const rw = await vol.createRw(base);
        model.rwCreate(rw.id, base, 12);
        for (const b of [1, 4, 5, 9]) {
          await vol.writeRw(rw.id, b * BS, pattern(20 + b, BS));
          model.rwWrite(rw.id, b * BS, pattern(20 + b, BS));
        }
        await w(4, 2, 4);
        await snap(); // the younger RO snapshot
        await w(0, 3, 2);
        const st = await vol.startRestore({ source: { kind: 'rw', id: rw.id }, order });
        model.restoreStart('rw', rw.id, st.restorePointId, false);
        let current = vol;
        for (let step = 0; vol.restoreStatus() !== null; step++) {
          if (step === killAt) {
            // A crash: the volume is reopened from what the devices hold (nothing unflushed was acknowledged).
            await w(10, 50 + step);
            await current.flush();
            current = await SnapshotVolume.open(d);
            break;
          }
          await current.restoreStep(1);
          if (step % 3 === 1) {
            await current.write(7 * BS, pattern(60 + step, BS));
            model.write(7 * BS, pattern(60 + step, BS));
          }
        }
        while (current.restoreStatus() !== null) await current.restoreStep(2);
        if (model.restore !== null) model.restoreEnd();
        await checkVolume(current, model, { tight: false });
      }
    },
  );

  it('claims 14 and 15: both copy orders reach the same content; cl.14 passes blocks of both kinds twice', async () => {
    const results: Uint8Array[] = [];
    for (const order of ['old-then-new', 'new-then-old'] as const) {
      const { vol, w, snap } = await setup(8);
      await w(0, 1, 8);
      const base = await snap();
      const rw = await vol.createRw(base);
      await vol.writeRw(rw.id, 0, pattern(2, 2 * BS)); // new data on blocks 0, 1
      await w(1, 3, 2); // old data of blocks 1, 2 saved in the base
      await vol.startRestore({ source: { kind: 'rw', id: rw.id }, order });
      const passes: string[] = [];
      while (vol.restoreStatus() !== null) {
        passes.push(vol.restoreStatus()!.pass);
        await vol.restoreStep(1);
      }
      expect(passes[0]).toBe('first');
      expect(passes.length).toBe(order === 'old-then-new' ? 4 : 3);
      results.push(await vol.read(0, 8 * BS));
    }
    expect(same(results[0]!, results[1]!)).toBe(true);
  });

  it('an RW source written during its own restore: the restored content is the one at the restore instant', async () => {
    const { vol, model, w, snap } = await setup(8);
    await w(0, 1, 8);
    const base = await snap();
    const rw = await vol.createRw(base);
    model.rwCreate(rw.id, base, 8);
    await vol.writeRw(rw.id, 0, pattern(2, 4 * BS));
    model.rwWrite(rw.id, 0, pattern(2, 4 * BS));
    const st = await vol.startRestore({ source: { kind: 'rw', id: rw.id } });
    model.restoreStart('rw', rw.id, st.restorePointId, false);
    await vol.writeRw(rw.id, BS, pattern(3, 2 * BS));
    model.rwWrite(rw.id, BS, pattern(3, 2 * BS));
    await vol.discardRw(rw.id, 3 * BS, BS);
    model.rwDiscard(rw.id, 3 * BS, BS);
    await expect(vol.deleteRw(rw.id)).rejects.toThrow(code('ENGINE_RW_BUSY'));
    await checkVolume(vol, model);
    await finish(vol, model);
    await checkVolume(vol, model);
  });

  it('EC-7: a restore from a smaller snapshot keeps the size; blocks past it read zeros', async () => {
    const { vol, model, w, snap } = await setup(6, { granuleBlocks: 4 });
    await w(0, 1, 6);
    const small = await snap();
    await vol.resize(12 * BS);
    model.grow(12);
    await w(5, 2, 7);
    const st = await vol.startRestore({ source: { kind: 'snapshot', id: small } });
    model.restoreStart('snapshot', small, st.restorePointId, false);
    expect(vol.sizeBytes).toBe(12 * BS);
    await checkVolume(vol, model);
    await finish(vol, model);
    await checkVolume(vol, model);
  });

  it('routes data-path reads to the engine during a restore and not after (shared flag)', async () => {
    const d = devices();
    const vol = await SnapshotVolume.create(d, { sizeBytes: 8 * BS, shared: true });
    await vol.write(0, pattern(1, 8 * BS));
    const s = await vol.createSnapshot();
    await vol.write(0, pattern(2, BS));
    const dp = vol.sharedState();
    expect(readRoute(dp, 0)).toBe('clone');
    await vol.startRestore({ source: { kind: 'snapshot', id: s.id } });
    expect(Atomics.load(vol.sharedState().control, CTL_FLAGS) & FLAG_READS_VIA_ENGINE).toBe(FLAG_READS_VIA_ENGINE);
    expect(readRoute(dp, 0)).toBe('engine');
    expect(enterDirectWrite(dp, 0, 0)).toBe(false);
    while (vol.restoreStatus() !== null) await vol.restoreStep();
    expect(readRoute(dp, 0)).toBe('clone');
    expect(same(await vol.read(0, BS), pattern(1, BS))).toBe(true);
  });

  it('refuses bad restores with stable codes and leaves nothing behind', async () => {
    const { vol, w, snap } = await setup(4);
    await w(0, 1, 4);
    const s = await snap();
    const big = await vol.createRw(s, { sizeBytes: 8 * BS });
    await expect(vol.startRestore({ source: { kind: 'rw', id: big.id } })).rejects.toThrow(code('ENGINE_BAD_ARGUMENT'));
    await expect(vol.startRestore({ source: { kind: 'snapshot', id: 42 } })).rejects.toThrow(
      code('ENGINE_UNKNOWN_SNAPSHOT'),
    );
    await expect(vol.startRestore({ source: { kind: 'rw', id: 42 } })).rejects.toThrow(code('ENGINE_UNKNOWN_RW'));
    await expect(
      vol.startRestore({ source: { kind: 'snapshot', id: s.valueOf() }, order: 'sideways' as never }),
    ).rejects.toThrow(code('ENGINE_BAD_ARGUMENT'));
    expect(vol.restoreStatus()).toBeNull();
    expect(await vol.restoreStep()).toBeNull();
    await vol.startRestore({ source: { kind: 'snapshot', id: s } });
    await expect(vol.startRestore({ source: { kind: 'snapshot', id: s } })).rejects.toThrow(
      code('ENGINE_RESTORE_IN_PROGRESS'),
    );
    await expect(vol.resize(8 * BS)).rejects.toThrow(code('ENGINE_RESTORE_IN_PROGRESS'));
    await expect(vol.deleteSnapshot(s)).rejects.toThrow(code('ENGINE_SNAPSHOT_BUSY'));
    vol.verifyInvariants();
  });
});
