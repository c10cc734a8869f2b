// SPDX-License-Identifier: Apache-2.0
// The golden scenarios of spec §5 (1, 2, 3, 5, 6) on the in-memory devices.
import { describe, expect, it } from 'vitest';
import { MemBlockDevice, MemMetaStore } from './block-device.js';
import type { SnapshotMethod } from './layout.js';
import { checkVolume } from './testing/check.js';
import { pattern, VolumeModel } from './testing/model.js';
import { SnapshotVolume } from './volume.js';

const BS = 512;

async function memVolume(blocks: number, granuleBlocks = 1) {
  const devices = { clone: new MemBlockDevice(BS), save: new MemBlockDevice(BS), meta: new MemMetaStore() };
  const vol = await SnapshotVolume.create(devices, { sizeBytes: blocks * BS, blockSize: BS, granuleBlocks });
  return { vol, devices, model: new VolumeModel(BS, blocks, granuleBlocks) };
}

const block = (tag: string) => {
  const b = new Uint8Array(BS);
  b.set(new TextEncoder().encode(tag));
  return b;
};
const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes.subarray(0, bytes.indexOf(0)));

describe('golden scenarios (spec §5)', () => {
  it('1 - FIG. 25 worked example: clone a1 b1 c0..h0, save a0 b0, snapshot reads a0..h0', async () => {
    const { vol, devices } = await memVolume(8);
    const names = 'abcdefgh';
    for (let i = 0; i < 8; i++) await vol.write(i * BS, block(`${names[i]}0`));
    const snap = await vol.createSnapshot({ method: 'save-volume' });
    await vol.write(0, block('a1'));
    await vol.write(BS, block('b1'));
    const clone: string[] = [];
    for (let i = 0; i < 8; i++) {
      const b = new Uint8Array(BS);
      await devices.clone.read(i, b);
      clone.push(text(b));
    }
    expect(clone).toEqual(['a1', 'b1', 'c0', 'd0', 'e0', 'f0', 'g0', 'h0']);
    expect(devices.save.storedBlocks()).toBe(2);
    const saved: string[] = [];
    for (let s = 0; s < 2; s++) {
      const b = new Uint8Array(BS);
      await devices.save.read(s, b);
      saved.push(text(b));
    }
    expect(saved.sort()).toEqual(['a0', 'b0']);
    const snapRead: string[] = [];
    for (let i = 0; i < 8; i++) snapRead.push(text(await vol.readSnapshot(snap.id, i * BS, BS)));
    expect(snapRead).toEqual(['a0', 'b0', 'c0', 'd0', 'e0', 'f0', 'g0', 'h0']);
    expect(vol.getSnapshot(snap.id).savedBlocks).toBe(2);
    expect(vol.changedExtents(snap.id, 'live')).toEqual([{ offset: 0, length: 2 * BS }]);
  });

  it.each<SnapshotMethod>(['save-volume', 'meta-bitmap'])(
    '2 - three %s snapshots with interleaved writes: every read and every differential pair match the oracle',
    async (method) => {
      const { vol, model } = await memVolume(24);
      let seed = 1;
      const write = async (b: number, n = 1) => {
        const data = pattern(seed++, n * BS);
        await vol.write(b * BS, data);
        model.write(b * BS, data);
      };
      for (let b = 0; b < 24; b += 2) await write(b);
      for (let i = 0; i < 3; i++) {
        const s = await vol.createSnapshot({ method });
        model.snapshot(s.id, method);
        await write(i * 3, 2);
        await write(10 + i);
        await write(20 - i * 2, 3);
        await checkVolume(vol, model);
      }
      await write(0, 24);
      await checkVolume(vol, model);
      const [s1, s2, s3] = vol.listSnapshots();
      expect(vol.changedExtents(s1!.id, s2!.id).length).toBeGreaterThan(0);
      expect(() => vol.changedExtents(s3!.id, s1!.id)).toThrow(/not younger/);
    },
  );

  it('3 - meta-bitmap on a fresh volume: the first write after a snapshot costs no save space', async () => {
    const { vol, model } = await memVolume(64);
    const s = await vol.createSnapshot({ method: 'meta-bitmap' });
    model.snapshot(s.id, 'meta-bitmap');
    const data = pattern(7, 16 * BS);
    await vol.write(8 * BS, data);
    model.write(8 * BS, data);
    expect(vol.stats().savePoolUsedBytes).toBe(0);
    expect(vol.stats().cowCopiesTotal).toBe(0);
    await checkVolume(vol, model);
    // A save-volume snapshot of the same state does copy (every block counts as valid).
    const plain = await vol.createSnapshot({ method: 'save-volume' });
    model.snapshot(plain.id, 'save-volume');
    await vol.write(40 * BS, data.subarray(0, BS));
    model.write(40 * BS, data.subarray(0, BS));
    expect(vol.stats().cowCopiesTotal).toBe(1);
    await checkVolume(vol, model);
  });

  const orders = [
    [0, 1, 2],
    [0, 2, 1],
    [1, 0, 2],
    [1, 2, 0],
    [2, 0, 1],
    [2, 1, 0],
  ];
  it.each(orders.flatMap((o) => (['save-volume', 'meta-bitmap', 'mixed'] as const).map((m) => ({ o, m }))))(
    '5 - delete head, middle and tail in order $o ($m): INV-1 and INV-9 hold after each delete',
    async ({ o, m }) => {
      const { vol, model } = await memVolume(32);
      let seed = 100;
      const write = async (b: number, n: number) => {
        const data = pattern(seed++, n * BS);
        await vol.write(b * BS, data);
        model.write(b * BS, data);
      };
      await write(0, 20);
      const ids: number[] = [];
      for (let i = 0; i < 3; i++) {
        const method: SnapshotMethod = m === 'mixed' ? (i % 2 === 0 ? 'meta-bitmap' : 'save-volume') : m;
        const s = await vol.createSnapshot({ method });
        model.snapshot(s.id, method);
        ids.push(s.id);
        await write(i * 4, 6);
        await write(24 + i, 2);
        await vol.discard((16 + i) * BS, BS);
        model.discard((16 + i) * BS, BS);
      }
      await checkVolume(vol, model);
      for (const idx of o) {
        await vol.deleteSnapshot(ids[idx]!);
        model.delete(ids[idx]!);
        await checkVolume(vol, model);
        await write(idx * 5, 3);
        await checkVolume(vol, model);
      }
      expect(vol.stats().savePoolUsedBytes).toBe(0);
    },
  );

  it('6 - granule of 2 blocks gives the same reads and covering differentials as granule 1', async () => {
    const a = await memVolume(40, 1);
    const b = await memVolume(40, 2);
    let seed = 9;
    const both = async (fn: (v: SnapshotVolume, m: VolumeModel) => Promise<void>) => {
      await fn(a.vol, a.model);
      await fn(b.vol, b.model);
    };
    const ops: ((v: SnapshotVolume, m: VolumeModel) => Promise<void>)[] = [];
    for (let i = 0; i < 12; i++) {
      const s = seed++;
      const off = ((s * 7919) % 39) * BS + (s % 3) * 100;
      const data = pattern(s, BS + (s % 2) * 300);
      ops.push(async (v, m) => {
        await v.write(off, data);
        m.write(off, data);
      });
      if (i % 3 === 1) {
        ops.push(async (v, m) => {
          const snap = await v.createSnapshot({ method: 'meta-bitmap' });
          m.snapshot(snap.id, 'meta-bitmap');
        });
      }
      if (i % 4 === 2) {
        const doff = ((s * 31) % 30) * BS;
        ops.push(async (v, m) => {
          await v.discard(doff, 5 * BS);
          m.discard(doff, 5 * BS);
        });
      }
    }
    for (const op of ops) await both(op);
    await checkVolume(a.vol, a.model);
    await checkVolume(b.vol, b.model);
    expect(Buffer.compare(await a.vol.read(0, a.vol.sizeBytes), await b.vol.read(0, b.vol.sizeBytes))).toBe(0);
    for (const [sa, sb] of a.vol.listSnapshots().map((s, i) => [s, b.vol.listSnapshots()[i]!] as const)) {
      expect(await a.vol.readSnapshot(sa.id, 0, sa.sizeBytes)).toEqual(
        await b.vol.readSnapshot(sb.id, 0, sb.sizeBytes),
      );
    }
  });
});
