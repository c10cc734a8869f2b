// SPDX-License-Identifier: Apache-2.0
// Restart persistence: the node plugin is killed with SIGKILL while a volume is staged and published; a new
// plugin on the same state dir cleans up the dead data path, keeps every volume and snapshot (ListVolumes,
// ListSnapshots, GetSnapshot), and NodeStage/NodePublish work again with the data fsync'd before the kill.
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { call, cleanupDir, isRoot, leftoversUnder, MiB, PluginProcess } from './plugin.js';
import {
  checksumFiles,
  createSnapshot,
  createVolume,
  readAt,
  sha256,
  stageAndPublish,
  unpublishAndUnstage,
  writeDurable,
  writeFiles,
} from './volumes.js';

interface ListSnapshots {
  entries: { snapshot: { snapshot_id: string; source_volume_id: string; ready_to_use: boolean } }[];
}
interface ListVolumes {
  entries: { volume: { volume_id: string; capacity_bytes: string } }[];
}

describe('restart persistence (root: loop devices, FUSE, mounts)', () => {
  let dir: string | undefined;
  let plugin: PluginProcess | undefined;

  afterEach(async () => {
    if (plugin && !plugin.exited) await plugin.stop();
    plugin = undefined;
    if (dir) await cleanupDir(dir);
    dir = undefined;
  });

  it.skipIf(!isRoot)('4-1 kill -9 while staged: volumes and snapshots survive and NodeStage works again', async () => {
    plugin = await PluginProcess.start();
    dir = plugin.dir;
    let p = plugin;
    const fsVol = await createVolume(p, 'persist-fs', 'mount', 32 * MiB);
    const blkVol = await createVolume(p, 'persist-blk', 'block', 8 * MiB);
    const fs = await stageAndPublish(p, fsVol, 'mount');
    const blk = await stageAndPublish(p, blkVol, 'block');
    const sums = await writeFiles(fs.targetPath, [512 * 1024, 12345]);
    const raw = randomBytes(256 * 1024);
    await writeDurable(blk.targetPath, 1 * MiB, raw);
    const s1 = await createSnapshot(p, 'persist-snap-1', fsVol);
    const s2 = await createSnapshot(p, 'persist-snap-2', blkVol, { method: 'meta-bitmap' });
    const volumesBefore = await call<ListVolumes>(p.clients.controller, 'ListVolumes');
    const snapsBefore = await call<ListSnapshots>(p.clients.controller, 'ListSnapshots');

    await p.kill9();
    // The dead plugin left its loop devices and mounts behind (what kubelet's pods would still hold).
    expect((await leftoversUnder(dir)).some((l) => l.startsWith('loop '))).toBe(true);

    plugin = await PluginProcess.start({ dir });
    p = plugin;
    expect(p.logs('Recovered driver state after an unclean stop')).toHaveLength(1);
    // Only the FUSE mount of the new plugin remains: the dead data path was cleaned up.
    expect(await leftoversUnder(dir)).toEqual([expect.stringMatching(/^mount .*\/state\/fuse$/)]);
    const volumesAfter = await call<ListVolumes>(p.clients.controller, 'ListVolumes');
    expect(volumesAfter.entries.map((e) => e.volume)).toEqual(volumesBefore.entries.map((e) => e.volume));
    expect(volumesAfter.entries.map((e) => e.volume.volume_id).sort()).toEqual([fsVol, blkVol].sort());
    expect(await call<ListSnapshots>(p.clients.controller, 'ListSnapshots')).toEqual(snapsBefore);
    expect(snapsBefore.entries.map((e) => e.snapshot.snapshot_id).sort()).toEqual(
      [s1.snapshot_id, s2.snapshot_id].sort(),
    );
    const got = await call<{ snapshot: { ready_to_use: boolean } }>(p.clients.controller, 'GetSnapshot', {
      snapshot_id: s2.snapshot_id,
    });
    expect(got.snapshot.ready_to_use).toBe(true);

    // kubelet tears down the old paths (idempotent), then stages and publishes again.
    await unpublishAndUnstage(p, fs);
    await unpublishAndUnstage(p, blk);
    const fs2 = await stageAndPublish(p, fsVol, 'mount');
    const blk2 = await stageAndPublish(p, blkVol, 'block');
    expect(await checksumFiles(fs2.targetPath, Object.keys(sums))).toEqual(sums);
    expect(sha256(await readAt(blk2.targetPath, 1 * MiB, raw.length))).toBe(sha256(raw));

    // A snapshot taken before the crash restores correctly too.
    const restored = await createVolume(p, 'persist-restored', 'mount', 32 * MiB, {
      volume_content_source: { snapshot: { snapshot_id: s1.snapshot_id } },
    });
    const r = await stageAndPublish(p, restored, 'mount');
    expect(await checksumFiles(r.targetPath, Object.keys(sums))).toEqual(sums);

    for (const v of [r, fs2, blk2]) await unpublishAndUnstage(p, v);
    await call(p.clients.controller, 'DeleteVolume', { volume_id: restored });
    for (const s of [s1, s2]) await call(p.clients.controller, 'DeleteSnapshot', { snapshot_id: s.snapshot_id });
    for (const v of [fsVol, blkVol]) await call(p.clients.controller, 'DeleteVolume', { volume_id: v });
    expect(await p.stop()).toBe(0);
    expect(await leftoversUnder(dir)).toEqual([]);
  });

  it.skipIf(!isRoot)('4-2 a clean stop and start keeps state and leaves nothing mounted in between', async () => {
    plugin = await PluginProcess.start();
    dir = plugin.dir;
    const vol = await createVolume(plugin, 'clean-restart', 'block', 4 * MiB);
    const snap = await createSnapshot(plugin, 'clean-restart-snap', vol);
    expect(await plugin.stop()).toBe(0);
    expect(await leftoversUnder(dir)).toEqual([]);
    plugin = await PluginProcess.start({ dir });
    expect(plugin.logs('Recovered driver state after an unclean stop')).toHaveLength(0);
    const list = await call<ListSnapshots>(plugin.clients.controller, 'ListSnapshots', { source_volume_id: vol });
    expect(list.entries.map((e) => e.snapshot.snapshot_id)).toEqual([snap.snapshot_id]);
    await call(plugin.clients.controller, 'DeleteSnapshot', { snapshot_id: snap.snapshot_id });
    await call(plugin.clients.controller, 'DeleteVolume', { volume_id: vol });
  });

  it.skipIf(!isRoot)(
    '4-3 SIGTERM while staged exits 0, and a new plugin stages the volume again with its data',
    async () => {
      plugin = await PluginProcess.start();
      dir = plugin.dir;
      const vol = await createVolume(plugin, 'term-staged', 'mount', 32 * MiB);
      const v = await stageAndPublish(plugin, vol, 'mount');
      const sums = await writeFiles(v.targetPath, [300_000]);
      expect(await plugin.stop()).toBe(0);
      expect(plugin.logs('Unstaged volumes at shutdown')).toMatchObject([{ volumes: [vol] }]);
      expect(await leftoversUnder(dir)).toEqual([]);
      plugin = await PluginProcess.start({ dir });
      const p = plugin;
      await unpublishAndUnstage(p, v);
      const again = await stageAndPublish(p, vol, 'mount');
      expect(await checksumFiles(again.targetPath, Object.keys(sums))).toEqual(sums);
      await unpublishAndUnstage(p, again);
      await call(p.clients.controller, 'DeleteVolume', { volume_id: vol });
    },
  );
});
