// SPDX-License-Identifier: Apache-2.0
// Restore and clone content through the real node plugin: data written and fsync'd through NodePublish
// (files on ext4, or raw bytes on the block device), a snapshot, a new volume from that snapshot (and a
// clone of the live volume), staged and published again: the same checksums.
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { call, cleanupDir, leftoversUnder, isRoot, MiB, PluginProcess } from './plugin.js';
import {
  checksumFiles,
  createSnapshot,
  createVolume,
  type CsiVolumeResponse,
  capability,
  type Published,
  readAt,
  sha256,
  stageAndPublish,
  unpublishAndUnstage,
  writeDurable,
  writeFiles,
} from './volumes.js';

describe('restore and clone content (root: loop devices, FUSE, mounts)', () => {
  let plugin: PluginProcess | undefined;

  afterEach(async () => {
    if (!plugin) return;
    const dir = plugin.dir;
    await plugin.stop();
    plugin = undefined;
    await cleanupDir(dir);
  });

  it.skipIf(!isRoot)(
    '1-1 mount: files of a snapshot come back in a volume restored from it, and in a clone',
    async () => {
      plugin = await PluginProcess.start();
      const p = plugin;
      const volA = await createVolume(p, 'restore-src', 'mount', 32 * MiB);
      const a = await stageAndPublish(p, volA, 'mount');
      const before = await writeFiles(a.targetPath, [1 * MiB, 4096, 300_000]);
      const snap = await createSnapshot(p, 'restore-snap', volA);
      expect(snap.ready_to_use).toBe(true);
      expect(Number(snap.size_bytes)).toBe(32 * MiB);

      // Change the source after the cut: the snapshot (and the restore) must not see it.
      const after = await writeFiles(a.targetPath, [1 * MiB, 4096, 300_000]);
      expect(after).not.toEqual(before);

      const restored = await call<CsiVolumeResponse>(p.clients.controller, 'CreateVolume', {
        name: 'restored',
        capacity_range: { required_bytes: String(32 * MiB) },
        volume_capabilities: [capability('mount')],
        volume_content_source: { snapshot: { snapshot_id: snap.snapshot_id } },
      });
      expect(restored.volume.content_source).toMatchObject({ snapshot: { snapshot_id: snap.snapshot_id } });
      const b = await stageAndPublish(p, restored.volume.volume_id, 'mount');
      expect(await checksumFiles(b.targetPath, Object.keys(before))).toEqual(before);

      const clone = await call<CsiVolumeResponse>(p.clients.controller, 'CreateVolume', {
        name: 'cloned',
        capacity_range: { required_bytes: String(32 * MiB) },
        volume_capabilities: [capability('mount')],
        volume_content_source: { volume: { volume_id: volA } },
      });
      const c = await stageAndPublish(p, clone.volume.volume_id, 'mount');
      expect(await checksumFiles(c.targetPath, Object.keys(after))).toEqual(after);
      // The clone is independent: writing to it leaves the source alone.
      await writeFiles(c.targetPath, [8192]);
      expect(await checksumFiles(a.targetPath, Object.keys(after))).toEqual(after);

      for (const v of [c, b, a]) await unpublishAndUnstage(p, v);
      for (const v of [clone.volume.volume_id, restored.volume.volume_id]) {
        await call(p.clients.controller, 'DeleteVolume', { volume_id: v });
      }
      await call(p.clients.controller, 'DeleteSnapshot', { snapshot_id: snap.snapshot_id });
      await call(p.clients.controller, 'DeleteVolume', { volume_id: volA });
      expect(await leftoversUnder(p.dir)).toEqual([expect.stringContaining('/state/fuse')]);
    },
  );

  it.skipIf(!isRoot)(
    '1-2 block: bytes of a snapshot come back in a restored volume, a larger one included',
    async () => {
      plugin = await PluginProcess.start();
      const p = plugin;
      const volA = await createVolume(p, 'blk-src', 'block', 16 * MiB);
      const a = await stageAndPublish(p, volA, 'block');
      const pattern = [
        { offset: 0, data: randomBytes(64 * 1024) },
        { offset: 5 * MiB + 512, data: randomBytes(3000) },
        { offset: 16 * MiB - 4096, data: randomBytes(4096) },
      ];
      for (const w of pattern) await writeDurable(a.targetPath, w.offset, w.data);
      const snap = await createSnapshot(p, 'blk-snap', volA, { method: 'meta-bitmap' });
      await writeDurable(a.targetPath, 0, randomBytes(128 * 1024));

      const restored: Published[] = [];
      for (const [i, size] of [16 * MiB, 24 * MiB].entries()) {
        const r = await call<CsiVolumeResponse>(p.clients.controller, 'CreateVolume', {
          name: `blk-restored-${i}`,
          capacity_range: { required_bytes: String(size) },
          volume_capabilities: [capability('block')],
          volume_content_source: { snapshot: { snapshot_id: snap.snapshot_id } },
        });
        expect(Number(r.volume.capacity_bytes)).toBe(size);
        const b = await stageAndPublish(p, r.volume.volume_id, 'block');
        restored.push(b);
        for (const w of pattern) {
          expect(sha256(await readAt(b.targetPath, w.offset, w.data.length))).toBe(sha256(w.data));
        }
        // Blocks never written read as zeros, also past the source's end in the larger volume.
        expect((await readAt(b.targetPath, 2 * MiB, 4096)).every((x) => x === 0)).toBe(true);
        if (size > 16 * MiB) expect((await readAt(b.targetPath, 20 * MiB, 4096)).every((x) => x === 0)).toBe(true);
      }
      // A restore smaller than the snapshot is refused with OUT_OF_RANGE.
      await expect(
        call(p.clients.controller, 'CreateVolume', {
          name: 'blk-too-small',
          capacity_range: { required_bytes: String(8 * MiB) },
          volume_capabilities: [capability('block')],
          volume_content_source: { snapshot: { snapshot_id: snap.snapshot_id } },
        }),
      ).rejects.toMatchObject({ code: 11 });
      // The source still has its own newer data.
      expect((await readAt(a.targetPath, 0, 64 * 1024)).equals(pattern[0]!.data)).toBe(false);

      for (const v of [...restored.reverse(), a]) await unpublishAndUnstage(p, v);
      for (const v of restored) await call(p.clients.controller, 'DeleteVolume', { volume_id: v.volumeId });
      // The source cannot go while it has a snapshot.
      await expect(call(p.clients.controller, 'DeleteVolume', { volume_id: volA })).rejects.toMatchObject({ code: 9 });
      await call(p.clients.controller, 'DeleteSnapshot', { snapshot_id: snap.snapshot_id });
      await call(p.clients.controller, 'DeleteVolume', { volume_id: volA });
    },
  );

  it.skipIf(!isRoot)('1-3 xfs: a restore and a clone mount beside their still-mounted source (same UUID)', async () => {
    plugin = await PluginProcess.start();
    const p = plugin;
    const size = 320 * MiB; // mkfs.xfs needs at least 300 MiB; the files are sparse
    const src = await createVolume(p, 'xfs-src', 'mount', size, {}, 'xfs');
    const a = await stageAndPublish(p, src, 'mount', 'xfs');
    const sums = await writeFiles(a.targetPath, [2 * MiB, 1000]);
    const snap = await createSnapshot(p, 'xfs-snap', src, { method: 'meta-bitmap' });
    const restored = await createVolume(
      p,
      'xfs-restored',
      'mount',
      size,
      {
        volume_content_source: { snapshot: { snapshot_id: snap.snapshot_id } },
      },
      'xfs',
    );
    const clone = await createVolume(
      p,
      'xfs-clone',
      'mount',
      size,
      {
        volume_content_source: { volume: { volume_id: src } },
      },
      'xfs',
    );
    const b = await stageAndPublish(p, restored, 'mount', 'xfs');
    const c = await stageAndPublish(p, clone, 'mount', 'xfs');
    expect(await checksumFiles(b.targetPath, Object.keys(sums))).toEqual(sums);
    expect(await checksumFiles(c.targetPath, Object.keys(sums))).toEqual(sums);
    for (const v of [c, b, a]) await unpublishAndUnstage(p, v);
    for (const v of [clone, restored]) await call(p.clients.controller, 'DeleteVolume', { volume_id: v });
    await call(p.clients.controller, 'DeleteSnapshot', { snapshot_id: snap.snapshot_id });
    await call(p.clients.controller, 'DeleteVolume', { volume_id: src });
  });
});
