// SPDX-License-Identifier: Apache-2.0
// Issue 15, "the plugin always starts": a volume whose engine metadata is damaged (both checkpoints
// overwritten) while the plugin is down. The next start serves every healthy volume with its data, and the
// damaged one answers abnormal in its VolumeCondition (ControllerGetVolume and ListVolumes) with the reason,
// instead of the plugin crash-looping.
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { call, cleanupDir, isRoot, MiB, PluginProcess } from './plugin.js';
import { createVolume, readAt, sha256, stageAndPublish, unpublishAndUnstage, writeDurable } from './volumes.js';

interface VolumeStatus {
  volume_condition?: { abnormal?: boolean; message?: string };
}

describe('a damaged volume does not stop the node plugin (root: loop devices, FUSE)', () => {
  let dir: string | undefined;
  const plugins: PluginProcess[] = [];
  afterEach(async () => {
    for (const p of plugins.splice(0)) if (!p.exited) await p.kill9();
    if (dir) await cleanupDir(dir);
    dir = undefined;
  });

  it.skipIf(!isRoot)(
    '15-2b both checkpoints of one volume destroyed: the plugin starts and serves the others',
    async () => {
      const first = await PluginProcess.start();
      plugins.push(first);
      dir = first.dir;
      const healthy = await createVolume(first, 'healthy', 'block', 16 * MiB);
      const damaged = await createVolume(first, 'damaged', 'block', 16 * MiB);
      const data = randomBytes(1 * MiB);
      for (const id of [healthy, damaged]) {
        const v = await stageAndPublish(first, id, 'block');
        await writeDurable(v.targetPath, 2 * MiB, data);
        await unpublishAndUnstage(first, v);
      }
      expect(await first.stop()).toBe(0);
      const meta = join(first.stateDir, 'volumes', damaged, 'meta');
      for (const f of ['checkpoint-0', 'checkpoint-1']) await writeFile(join(meta, f), randomBytes(64 * 1024));

      const second = await PluginProcess.start({ dir });
      plugins.push(second);
      const ok = await call<{ status?: VolumeStatus }>(second.clients.controller, 'ControllerGetVolume', {
        volume_id: healthy,
      });
      expect(ok.status?.volume_condition?.abnormal ?? false).toBe(false);
      const v = await stageAndPublish(second, healthy, 'block');
      expect(sha256(await readAt(v.targetPath, 2 * MiB, 1 * MiB))).toBe(sha256(data));
      await unpublishAndUnstage(second, v);

      const bad = await call<{ status?: VolumeStatus }>(second.clients.controller, 'ControllerGetVolume', {
        volume_id: damaged,
      });
      expect(bad.status?.volume_condition?.abnormal).toBe(true);
      expect(bad.status?.volume_condition?.message).toMatch(/failed to open/);
      const listed = await call<{ entries: Array<{ volume: { volume_id: string }; status?: VolumeStatus }> }>(
        second.clients.controller,
        'ListVolumes',
        {},
      );
      const entry = listed.entries.find((e) => e.volume.volume_id === damaged);
      expect(entry?.status?.volume_condition?.abnormal).toBe(true);
      expect(second.logs('Failed to open an engine volume; leaving it alone')).toHaveLength(1);
    },
  );
});
