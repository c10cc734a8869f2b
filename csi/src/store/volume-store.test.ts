// SPDX-License-Identifier: Apache-2.0
// File-backed volumes under a state dir, with real fsync: layout, lifecycle errors, durability across a
// clean close and across an abandoned (never closed) instance, leftovers of interrupted create/delete.
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { pattern } from '../engine/testing/model.js';
import { VolumeStore } from './volume-store.js';

const BS = 4096;
const code = (c: string) => expect.objectContaining({ code: c });
const same = (a: Uint8Array, b: Uint8Array) => Buffer.compare(a, b) === 0;

describe('VolumeStore on real files', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'loopsnap-store-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('lays out clone.img, save.img and meta/ and keeps data, snapshots and differentials across reopen', async () => {
    const store = new VolumeStore(dir);
    const vol = await store.create('pvc-1', { sizeBytes: 64 * BS, granuleBlocks: 2 });
    for (const f of ['clone.img', 'save.img', 'meta/checkpoint-0', 'meta/checkpoint-1', 'meta/journal']) {
      expect(existsSync(join(dir, 'volumes/pvc-1', f)), f).toBe(true);
    }
    expect(statSync(join(dir, 'volumes/pvc-1/clone.img')).size).toBe(64 * BS);
    await vol.write(0, pattern(1, 16 * BS));
    const s = await vol.createSnapshot({ method: 'meta-bitmap', tag: 'snap-x' });
    await vol.write(4 * BS, pattern(2, 2 * BS));
    await vol.close();
    const again = await new VolumeStore(dir).openVolume('pvc-1');
    expect(same(await again.readSnapshot(s.id, 0, 16 * BS), pattern(1, 16 * BS))).toBe(true);
    expect(same(await again.read(4 * BS, 2 * BS), pattern(2, 2 * BS))).toBe(true);
    expect(again.changedExtents(s.id, 'live')).toEqual([{ offset: 4 * BS, length: 2 * BS }]);
    expect(again.findSnapshotByTag('snap-x')?.id).toBe(s.id);
    expect(again.granuleBlocks).toBe(2);
    await again.close();
  });

  it('replays the journal of an instance that was never closed', async () => {
    const store = new VolumeStore(dir);
    const vol = await store.create('v', { sizeBytes: 32 * BS });
    await vol.write(0, pattern(3, 8 * BS));
    const s = await vol.createSnapshot();
    await vol.write(0, pattern(4, 2 * BS));
    await vol.discard(6 * BS, 2 * BS);
    await vol.flush();
    expect(vol.stats().journalBytes).toBeGreaterThan(0);
    // No close(): a second store (another process after a crash) opens the same files.
    const again = await new VolumeStore(dir).openVolume('v');
    expect(same(await again.readSnapshot(s.id, 0, 8 * BS), pattern(3, 8 * BS))).toBe(true);
    const live = pattern(3, 8 * BS);
    live.set(pattern(4, 2 * BS));
    live.fill(0, 6 * BS);
    expect(same(await again.read(0, 8 * BS), live)).toBe(true);
    expect(again.stats().journalBytes).toBe(0);
    await again.close();
  });

  it('reports lifecycle errors with stable codes', async () => {
    const store = new VolumeStore(dir);
    expect(() => store.volumeDir('../etc')).toThrow(code('STORE_BAD_ID'));
    expect(() => store.volumeDir('a/b')).toThrow(code('STORE_BAD_ID'));
    await expect(store.openVolume('nope')).rejects.toThrow(code('STORE_VOLUME_NOT_FOUND'));
    const vol = await store.create('v', { sizeBytes: 8 * BS });
    await expect(store.create('v', { sizeBytes: 8 * BS })).rejects.toThrow(code('STORE_VOLUME_EXISTS'));
    await expect(store.openVolume('v')).rejects.toThrow(code('STORE_VOLUME_BUSY'));
    await expect(store.delete('v')).rejects.toThrow(code('STORE_VOLUME_BUSY'));
    await expect(store.create('w', { sizeBytes: 1000 })).rejects.toThrow(code('ENGINE_BAD_ARGUMENT'));
    expect(store.list()).toEqual(['v']);
    await vol.close();
    await store.delete('v');
    await store.delete('v');
    expect(store.list()).toEqual([]);
  });

  it('recover() removes half-created and half-deleted volume directories', async () => {
    const store = new VolumeStore(dir);
    mkdirSync(join(dir, 'volumes/.tmp-x-1-0/meta'), { recursive: true });
    mkdirSync(join(dir, 'volumes/.deleting-y-1-0'));
    writeFileSync(join(dir, 'volumes/.deleting-y-1-0/clone.img'), 'x');
    expect(store.recover().sort()).toEqual(['.deleting-y-1-0', '.tmp-x-1-0']);
    expect(store.list()).toEqual([]);
  });

  it('refuses metadata of another format version or a foreign file', async () => {
    const store = new VolumeStore(dir);
    await (await store.create('v', { sizeBytes: 8 * BS })).close();
    for (const f of ['checkpoint-0', 'checkpoint-1'])
      writeFileSync(join(dir, 'volumes/v/meta', f), 'not a checkpoint!!!!!!!!!!!!!!!!!!!!!');
    await expect(new VolumeStore(dir).openVolume('v')).rejects.toThrow(code('ENGINE_CORRUPT_METADATA'));
  });

  it('shrinks save.img when snapshots are deleted (pool trimmed at checkpoint)', async () => {
    const store = new VolumeStore(dir);
    const vol = await store.create('v', { sizeBytes: 64 * BS });
    await vol.write(0, pattern(1, 64 * BS));
    const s = await vol.createSnapshot();
    await vol.write(0, pattern(2, 64 * BS));
    await vol.flush();
    expect(statSync(join(dir, 'volumes/v/save.img')).size).toBe(64 * BS);
    await vol.deleteSnapshot(s.id);
    await vol.checkpoint();
    expect(statSync(join(dir, 'volumes/v/save.img')).size).toBe(0);
    expect(vol.stats().savePoolUsedBytes).toBe(0);
    await vol.close();
  });
});
