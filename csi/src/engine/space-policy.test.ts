// SPDX-License-Identifier: Apache-2.0
// The space policy (space-policy.ts, ADR 0012): snapshots with dependants are never invalidated to make
// room; unpinned ones are sacrificed oldest first and give their slots back; when only pinned ones are left
// the production write fails with ENOSPC; the same on a full disk; sacrifices survive a reopen (replay and
// checkpoint). Cases are numbered as in the finding 1.
import { describe, expect, it } from 'vitest';
import { type BlockDevice, MemBlockDevice, MemMetaStore } from './block-device.js';
import { engineError } from './errors.js';
import { checkVolume } from './testing/check.js';
import { pattern, VolumeModel } from './testing/model.js';
import { SnapshotVolume } from './volume.js';

const BS = 4096;
const code = (c: string) => expect.objectContaining({ code: c });
const same = (a: Uint8Array, b: Uint8Array) => Buffer.compare(a, b) === 0;

/** A save device on a disk with room for `limit` blocks: writes past it fail as ENOSPC does. */
class FullDisk implements BlockDevice {
  limit = Number.POSITIVE_INFINITY;
  constructor(private readonly inner: MemBlockDevice) {}
  get blockSize(): number {
    return this.inner.blockSize;
  }
  blockCount(): number {
    return this.inner.blockCount();
  }
  read(block: number, into: Uint8Array): Promise<void> {
    return this.inner.read(block, into);
  }
  async write(block: number, data: Uint8Array): Promise<void> {
    if (block + data.length / BS > this.limit) throw engineError('ENGINE_DEVICE_NO_SPACE', `block ${block}: no space`);
    await this.inner.write(block, data);
  }
  writePartial(block: number, offset: number, data: Uint8Array): Promise<void> {
    return this.inner.writePartial(block, offset, data);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  discard(block: number, count: number): Promise<void> {
    return this.inner.discard(block, count);
  }
  resize(blockCount: number): Promise<void> {
    return this.inner.resize(blockCount);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

async function setup(blocks: number, saveQuotaBytes: number | null) {
  const disk = new FullDisk(new MemBlockDevice(BS));
  const d = { clone: new MemBlockDevice(BS), save: disk, meta: new MemMetaStore() };
  const vol = await SnapshotVolume.create(d, { sizeBytes: blocks * BS, saveQuotaBytes });
  const model = new VolumeModel(BS, blocks, 1);
  const w = async (b: number, seed: number, n = 1) => {
    const data = pattern(seed, n * BS);
    await vol.write(b * BS, data);
    model.write(b * BS, data);
  };
  const snap = async () => {
    const s = await vol.createSnapshot({ method: 'save-volume' });
    model.snapshot(s.id, 'save-volume');
    return s.id;
  };
  return { d, disk, vol, model, w, snap };
}

describe('space policy: dependants are never sacrificed (issue 15, finding 1)', () => {
  it('1-1 - a snapshot with an RW clone stays valid; the source write gets ENOSPC; the clone reads and writes on', async () => {
    const { vol, model, w, snap } = await setup(16, 2 * BS);
    await w(0, 1, 16);
    const s1 = await snap();
    const rw = await vol.createRw(s1, { tag: 'restored' });
    model.rwCreate(rw.id, s1, 16, 'restored');
    await vol.writeRw(rw.id, 0, pattern(2, 4 * BS));
    model.rwWrite(rw.id, 0, pattern(2, 4 * BS));
    await w(4, 3, 2); // two before-images: the quota is full
    await expect(vol.write(8 * BS, pattern(4, BS))).rejects.toThrow(code('ENGINE_SAVE_POOL_FULL'));
    expect(vol.getSnapshot(s1).state).toBe('valid');
    expect(vol.stats()).toMatchObject({ writesRefusedTotal: 1, snapshotsInvalidatedTotal: 0 });
    // The clone's own data is not bounded by the quota; it reads its data and its base as before.
    await vol.writeRw(rw.id, 10 * BS, pattern(5, 2 * BS));
    model.rwWrite(rw.id, 10 * BS, pattern(5, 2 * BS));
    await checkVolume(vol, model);
    // Blocks that need no before-image (already saved) are written as usual.
    await w(4, 6, 2);
    await checkVolume(vol, model);
  });

  it('1-2 - unpinned snapshots go first, oldest first, and give their slots back', async () => {
    const { vol, model, w, snap } = await setup(16, 3 * BS);
    await w(0, 1, 16);
    const old = await snap();
    await w(0, 2, 2); // `old` holds 2 before-images
    const pinnedSnap = await snap();
    const rw = await vol.createRw(pinnedSnap);
    model.rwCreate(rw.id, pinnedSnap, 16, '');
    await w(2, 3, 1); // 3rd slot: quota full
    const young = await snap();
    await w(3, 4, 1); // no slot: `old` (oldest, unpinned) is sacrificed, its 2 slots come back
    expect(vol.getSnapshot(old)).toMatchObject({ state: 'invalid', savedBlocks: 0 });
    expect(vol.getSnapshot(pinnedSnap).state).toBe('valid');
    expect(vol.getSnapshot(young).state).toBe('valid');
    await checkVolume(vol, model);
    await w(5, 5, 1); // uses the second freed slot
    // No slot, and the pinned snapshot needs block 6 too: `young` would give nothing back (its saves move to
    // the pinned one), so it is kept and the write fails.
    await expect(vol.write(6 * BS, pattern(6, BS))).rejects.toThrow(code('ENGINE_SAVE_POOL_FULL'));
    expect(vol.getSnapshot(young).state).toBe('valid');
    expect(vol.getSnapshot(pinnedSnap).state).toBe('valid');
    await checkVolume(vol, model);
    expect(vol.stats()).toMatchObject({ snapshotsSacrificedTotal: 1, writesRefusedTotal: 1 });
  });

  it('1-3 - a pinned copy source (clone-method copy, reader) is not sacrificed; released, it is', async () => {
    const { vol, model, w, snap } = await setup(8, BS);
    await w(0, 1, 8);
    const s = await snap();
    const release = vol.pinSnapshot(s);
    await w(0, 2);
    await expect(vol.write(BS, pattern(3, BS))).rejects.toThrow(code('ENGINE_SAVE_POOL_FULL'));
    expect(vol.getSnapshot(s).state).toBe('valid');
    release();
    await w(1, 3);
    expect(vol.getSnapshot(s)).toMatchObject({ state: 'invalid', savedBlocks: 0 });
    await checkVolume(vol, model);
  });

  it('1-4 - a full disk: unpinned snapshots make room, then writes its pinned snapshot needs get ENOSPC', async () => {
    const { vol, disk, model, w, snap } = await setup(16, null);
    await w(0, 1, 16);
    const a = await snap();
    await w(0, 2, 3);
    const b = await snap();
    const rw = await vol.createRw(b);
    model.rwCreate(rw.id, b, 16, '');
    disk.limit = 3; // the disk holds exactly the three slots of `a`
    await w(3, 3, 2); // `a` goes; its slots hold b's before-images now
    expect(vol.getSnapshot(a)).toMatchObject({ state: 'invalid', savedBlocks: 0 });
    await w(5, 4, 1);
    await expect(vol.write(6 * BS, pattern(5, BS))).rejects.toThrow(code('ENGINE_SAVE_POOL_FULL'));
    await expect(vol.writeRw(rw.id, 9 * BS, pattern(6, BS))).rejects.toThrow(code('ENGINE_SAVE_POOL_FULL'));
    expect(vol.getSnapshot(b).state).toBe('valid');
    await checkVolume(vol, model);
  });

  it('1-5 - sacrifices and refusals survive a reopen (journal replay, then a checkpoint)', async () => {
    const { d, vol, model, w, snap } = await setup(16, 3 * BS);
    await w(0, 1, 16);
    const old = await snap();
    await w(0, 2, 2);
    const kept = await snap();
    const rw = await vol.createRw(kept);
    model.rwCreate(rw.id, kept, 16, '');
    await w(2, 3, 1);
    await w(3, 4, 2);
    await vol.writeRw(rw.id, 12 * BS, pattern(7, BS));
    model.rwWrite(rw.id, 12 * BS, pattern(7, BS));
    await vol.flush();
    await vol.close();
    for (const step of ['replay', 'checkpoint'] as const) {
      const again = await SnapshotVolume.open(d);
      expect(again.getSnapshot(old)).toMatchObject({ state: 'invalid', savedBlocks: 0 });
      expect(again.getSnapshot(kept).state).toBe('valid');
      await checkVolume(again, model);
      expect(same(await again.readSnapshot(kept, 0, 16 * BS), model.contentOf(model.find(kept)))).toBe(true);
      if (step === 'replay') await again.checkpoint();
      await again.close();
    }
  });
});
