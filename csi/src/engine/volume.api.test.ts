// SPDX-License-Identifier: Apache-2.0
// The public API's edge cases: stable error codes, EC-5 exhaustion, commit failure, group commit,
// concurrency, the shared-memory fast path, resize and discard semantics.
import { describe, expect, it } from 'vitest';
import { type BlockDevice, MemBlockDevice, MemMetaStore, type MetaStore } from './block-device.js';
import { engineError } from './errors.js';
import { CTL_GATE, enterDirectWrite, leaveDirectWrite, readRoute } from './shared-state.js';
import { checkVolume } from './testing/check.js';
import { pattern, VolumeModel } from './testing/model.js';
import { SnapshotVolume, type VolumeRuntimeOptions } from './volume.js';

const BS = 4096;

function devices() {
  return { clone: new MemBlockDevice(BS), save: new MemBlockDevice(BS), meta: new MemMetaStore() };
}

async function volume(blocks = 32, extra: Partial<Parameters<typeof SnapshotVolume.create>[1]> = {}) {
  const d = devices();
  const vol = await SnapshotVolume.create(d, { sizeBytes: blocks * BS, ...extra });
  return { vol, d };
}

const code = (c: string) => expect.objectContaining({ code: c });
const same = (a: Uint8Array, b: Uint8Array) => Buffer.compare(a, b) === 0;

class CountingMeta extends MemMetaStore {
  appends = 0;
  failing = false;
  override async appendJournal(frame: Uint8Array): Promise<void> {
    if (this.failing) throw engineError('ENGINE_DEVICE_IO', 'journal device gone');
    this.appends++;
    return super.appendJournal(frame);
  }
}

class FailingClone extends MemBlockDevice {
  failing = false;
  override async write(block: number, data: Uint8Array): Promise<void> {
    if (this.failing) throw engineError('ENGINE_DEVICE_IO', 'clone write failed');
    return super.write(block, data);
  }
}

class FullDevice extends MemBlockDevice {
  full = false;
  override async write(block: number, data: Uint8Array): Promise<void> {
    if (this.full) throw engineError('ENGINE_DEVICE_NO_SPACE', 'no space');
    return super.write(block, data);
  }
}

describe('SnapshotVolume API', () => {
  it('rejects bad ranges, unknown snapshots, RO writes, shrinking and use after close with stable codes', async () => {
    const { vol } = await volume(8);
    await expect(vol.write(8 * BS - 1, new Uint8Array(2))).rejects.toThrow(code('ENGINE_OUT_OF_RANGE'));
    await expect(vol.read(-1, 1)).rejects.toThrow(code('ENGINE_BAD_ARGUMENT'));
    await expect(vol.readSnapshot(42, 0, 1)).rejects.toThrow(code('ENGINE_UNKNOWN_SNAPSHOT'));
    await expect(vol.deleteSnapshot(42)).rejects.toThrow(code('ENGINE_UNKNOWN_SNAPSHOT'));
    const s = await vol.createSnapshot();
    await expect(vol.writeView({ kind: 'snapshot', id: s.id }, 0, new Uint8Array(1))).rejects.toThrow(
      code('ENGINE_READ_ONLY'),
    );
    await expect(vol.resize(4 * BS)).rejects.toThrow(code('ENGINE_SHRINK_UNSUPPORTED'));
    await expect(vol.resize(9 * BS + 1)).rejects.toThrow(code('ENGINE_BAD_ARGUMENT'));
    await expect(vol.createSnapshot({ method: 'clone' as never })).rejects.toThrow(code('ENGINE_BAD_ARGUMENT'));
    expect(() => vol.changedExtents(s.id, s.id)).toThrow(code('ENGINE_BAD_ARGUMENT'));
    await expect(SnapshotVolume.create(devices(), { sizeBytes: 3 * BS, blockSize: 3000 })).rejects.toThrow(
      code('ENGINE_BAD_ARGUMENT'),
    );
    await vol.close();
    await expect(vol.write(0, new Uint8Array(1))).rejects.toThrow(code('ENGINE_CLOSED'));
  });

  it('enforces the snapshot limit and pins (EC-6, EC-8), and finds snapshots by tag', async () => {
    const { vol } = await volume(8, { maxSnapshots: 2 });
    const a = await vol.createSnapshot({ tag: 'snap-a' });
    await vol.createSnapshot({ tag: 'snap-b', method: 'meta-bitmap' });
    await expect(vol.createSnapshot()).rejects.toThrow(code('ENGINE_SNAPSHOT_LIMIT'));
    expect(vol.findSnapshotByTag('snap-b')?.method).toBe('meta-bitmap');
    const release = vol.pinSnapshot(a.id);
    await expect(vol.deleteSnapshot(a.id)).rejects.toThrow(code('ENGINE_SNAPSHOT_BUSY'));
    release();
    await vol.deleteSnapshot(a.id);
    expect(vol.listSnapshots().map((s) => s.tag)).toEqual(['snap-b']);
  });

  it('EC-5: a full save pool never fails or corrupts production writes; needy snapshots turn invalid', async () => {
    const d = devices();
    const vol = await SnapshotVolume.create(d, { sizeBytes: 16 * BS, saveQuotaBytes: 2 * BS });
    const model = new VolumeModel(BS, 16, 1);
    const w = async (b: number, seed: number) => {
      const data = pattern(seed, BS);
      await vol.write(b * BS, data);
      model.write(b * BS, data);
    };
    for (let b = 0; b < 8; b++) await w(b, b + 1);
    const old = await vol.createSnapshot({ method: 'meta-bitmap' });
    model.snapshot(old.id, 'meta-bitmap');
    await w(12, 50); // invalid in the snapshot: no save
    const young = await vol.createSnapshot({ method: 'save-volume' });
    model.snapshot(young.id, 'save-volume');
    for (let b = 0; b < 4; b++) await w(b, 100 + b);
    expect(vol.getSnapshot(old.id).state).toBe('invalid');
    expect(vol.getSnapshot(young.id).state).toBe('invalid');
    expect(vol.stats().snapshotsInvalidatedTotal).toBe(2);
    await expect(vol.readSnapshot(young.id, 0, BS)).rejects.toThrow(code('ENGINE_SNAPSHOT_INVALID'));
    expect(() => vol.changedExtents(old.id, 'live')).toThrow(code('ENGINE_SNAPSHOT_INVALID'));
    expect(same(await vol.read(0, 16 * BS), model.contentOf('live'))).toBe(true);
    await vol.close();
    const again = await SnapshotVolume.open(d);
    expect(again.listSnapshots().map((s) => s.state)).toEqual(['invalid', 'invalid']);
    await again.deleteSnapshot(young.id);
    await again.deleteSnapshot(old.id);
    expect(again.stats().savePoolUsedBytes).toBe(0);
    await checkVolume(again, Object.assign(model, { snapshots: [] as never[] }) as VolumeModel);
  });

  it('EC-5 also applies when the save device runs out of space', async () => {
    const d = { clone: new MemBlockDevice(BS), save: new FullDevice(BS), meta: new MemMetaStore() };
    const vol = await SnapshotVolume.create(d, { sizeBytes: 8 * BS });
    await vol.write(0, pattern(1, 8 * BS));
    const s = await vol.createSnapshot();
    d.save.full = true;
    await vol.write(0, pattern(2, BS));
    expect(await vol.read(0, BS)).toEqual(pattern(2, BS));
    expect(vol.getSnapshot(s.id).state).toBe('invalid');
  });

  it('a failed metadata commit fails the volume without touching the clone block it protects', async () => {
    const meta = new CountingMeta();
    const d = { clone: new MemBlockDevice(BS), save: new MemBlockDevice(BS), meta };
    const vol = await SnapshotVolume.create(d, { sizeBytes: 8 * BS });
    await vol.write(0, pattern(1, BS));
    const s = await vol.createSnapshot();
    meta.failing = true;
    await expect(vol.write(0, pattern(2, BS))).rejects.toThrow(code('ENGINE_VOLUME_FAILED'));
    await expect(vol.read(0, BS)).rejects.toThrow(code('ENGINE_VOLUME_FAILED'));
    const raw = new Uint8Array(BS);
    await d.clone.read(0, raw);
    expect(raw).toEqual(pattern(1, BS));
    meta.failing = false;
    const again = await SnapshotVolume.open(d);
    expect(await again.readSnapshot(s.id, 0, BS)).toEqual(pattern(1, BS));
  });

  it('replay drops a last-frame entry whose before-image never reached the save device', async () => {
    for (const lost of [false, true]) {
      const clone = new FailingClone(BS);
      const d = { clone, save: new MemBlockDevice(BS), meta: new MemMetaStore() };
      const vol = await SnapshotVolume.create(d, { sizeBytes: 8 * BS });
      await vol.write(0, pattern(1, BS));
      const s = await vol.createSnapshot();
      clone.failing = true; // the crash hits after the barrier, before the clone overwrite
      await expect(vol.write(0, pattern(2, BS))).rejects.toThrow(code('ENGINE_DEVICE_IO'));
      expect(vol.getSnapshot(s.id).savedBlocks).toBe(1);
      if (lost) await d.save.write(0, new Uint8Array(BS).fill(0xee));
      clone.failing = false;
      const again = await SnapshotVolume.open(d);
      expect(again.getSnapshot(s.id).savedBlocks).toBe(lost ? 0 : 1);
      expect(same(await again.readSnapshot(s.id, 0, BS), pattern(1, BS))).toBe(true);
      again.verifyInvariants();
    }
  });

  it('group commit: 64 concurrent first writes after a snapshot share a couple of journal frames', async () => {
    const meta = new CountingMeta();
    const d = { clone: new MemBlockDevice(BS), save: new MemBlockDevice(BS), meta };
    const vol = await SnapshotVolume.create(d, { sizeBytes: 128 * BS });
    await vol.write(0, pattern(1, 128 * BS));
    const s = await vol.createSnapshot();
    const before = meta.appends;
    await Promise.all(Array.from({ length: 64 }, (_, i) => vol.write(i * 2 * BS, pattern(10 + i, BS))));
    expect(meta.appends - before).toBeLessThanOrEqual(2);
    expect(vol.stats().cowCopiesTotal).toBe(64);
    expect(same(await vol.readSnapshot(s.id, 0, 128 * BS), pattern(1, 128 * BS))).toBe(true);
  });

  it('overlapping concurrent writes apply in issue order, partial ones included (EC-2, EC-4)', async () => {
    const { vol } = await volume(4);
    await vol.createSnapshot();
    const a = pattern(1, BS);
    const b = pattern(2, 100);
    const c = pattern(3, 50);
    await Promise.all([vol.write(BS, a), vol.write(BS + 10, b), vol.write(BS + 3000, c)]);
    const want = a.slice();
    want.set(b, 10);
    want.set(c, 3000);
    expect(await vol.read(BS, BS)).toEqual(want);
  });

  it('discard has punch-hole semantics: whole granules drop their bit, partial ranges become zeros', async () => {
    const { vol } = await volume(16, { granuleBlocks: 4 });
    await vol.write(0, pattern(1, 16 * BS));
    await vol.discard(100, 9 * BS);
    const got = await vol.read(0, 16 * BS);
    const want = pattern(1, 16 * BS);
    want.fill(0, 100, 100 + 9 * BS);
    expect(same(got, want)).toBe(true);
    expect(vol.allocatedExtents('live')).toEqual([
      { offset: 0, length: 4 * BS },
      { offset: 8 * BS, length: 8 * BS },
    ]);
  });

  it('resize grows the live view; snapshots keep their size (EC-7)', async () => {
    const { vol } = await volume(4);
    await vol.write(0, pattern(1, 4 * BS));
    const s = await vol.createSnapshot();
    await vol.resize(6 * BS);
    expect(vol.sizeBytes).toBe(6 * BS);
    expect(await vol.read(4 * BS, 2 * BS)).toEqual(new Uint8Array(2 * BS));
    await vol.write(5 * BS, pattern(2, BS));
    await expect(vol.readSnapshot(s.id, 4 * BS, 1)).rejects.toThrow(code('ENGINE_OUT_OF_RANGE'));
    expect(vol.changedExtents(s.id, 'live')).toEqual([{ offset: 5 * BS, length: BS }]);
  });

  it('extent queries page with startingOffset and maxResults', async () => {
    const { vol } = await volume(32);
    for (const b of [1, 2, 5, 9, 10, 20]) await vol.write(b * BS, pattern(b, BS));
    expect(vol.allocatedExtents('live', { maxResults: 2 })).toEqual([
      { offset: BS, length: 2 * BS },
      { offset: 5 * BS, length: BS },
    ]);
    expect(vol.allocatedExtents('live', { startingOffset: 9 * BS + 7 })).toEqual([
      { offset: 9 * BS, length: 2 * BS },
      { offset: 20 * BS, length: BS },
    ]);
  });
});

describe('shared-memory fast path (contract of shared-state.ts)', () => {
  async function sharedVolume(opts: VolumeRuntimeOptions = {}) {
    const d = devices();
    return SnapshotVolume.create(d, { sizeBytes: 16 * BS, shared: true, ...opts });
  }

  it('publishes SharedArrayBuffers and settles blocks after their first engine write', async () => {
    const vol = await sharedVolume();
    const st = vol.sharedState();
    expect(st.settled.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(st.meta.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(st.control.buffer).toBeInstanceOf(SharedArrayBuffer);
    const dp = st;
    expect(readRoute(dp, 3)).toBe('zeros');
    expect(vol.needsEngine(3)).toBe(true);
    expect(enterDirectWrite(dp, 3, 3)).toBe(false);
    await vol.write(3 * BS, pattern(1, BS));
    expect(vol.needsEngine(3)).toBe(false);
    expect(readRoute(dp, 3)).toBe('clone');
    expect(enterDirectWrite(dp, 3, 3)).toBe(true);
    leaveDirectWrite(dp);
    await vol.createSnapshot();
    expect(enterDirectWrite(dp, 3, 3)).toBe(false);
    await vol.write(3 * BS, pattern(2, BS));
    expect(vol.getSnapshot(1).savedBlocks).toBe(1);
    expect(enterDirectWrite(dp, 3, 3)).toBe(true);
    leaveDirectWrite(dp);
  });

  it('snapshot creation closes the gate and waits for direct writes in flight (OP-1 quiesce)', async () => {
    const vol = await sharedVolume();
    await vol.write(0, pattern(1, BS));
    const st = vol.sharedState();
    const dp = st;
    expect(enterDirectWrite(dp, 0, 0)).toBe(true);
    let cut = false;
    const p = vol.createSnapshot().then(() => (cut = true));
    await new Promise((r) => setTimeout(r, 20));
    expect(Atomics.load(st.control, CTL_GATE)).toBe(1);
    expect(cut).toBe(false);
    expect(enterDirectWrite(st, 0, 0)).toBe(false);
    leaveDirectWrite(dp);
    await p;
    expect(cut).toBe(true);
    expect(Atomics.load(st.control, CTL_GATE)).toBe(0);
  });

  it('a resize bumps the generation so stale workers route to the engine', async () => {
    const vol = await sharedVolume();
    await vol.write(0, pattern(1, BS));
    const stale = vol.sharedState();
    await vol.resize(32 * BS);
    expect(enterDirectWrite(stale, 0, 0)).toBe(false);
    expect(readRoute(stale, 0)).toBe('engine');
    const fresh = vol.sharedState();
    expect(enterDirectWrite(fresh, 0, 0)).toBe(true);
    leaveDirectWrite(fresh);
  });

  it('requires shared: true', async () => {
    const { vol } = await volume(4);
    expect(() => vol.sharedState()).toThrow(code('ENGINE_BAD_ARGUMENT'));
  });
});

// Keep the BlockDevice/MetaStore imports honest: the test doubles implement the ports.
const _ports: [BlockDevice, MetaStore] = [new FullDevice(BS), new CountingMeta()];
void _ports;
