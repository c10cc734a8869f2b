// SPDX-License-Identifier: Apache-2.0
// Issue 15 finding 1 through the real node plugin (engine, FUSE, loop devices): a thin restore R of
// snapshot S1 of volume V survives V's writes filling the save quota. S1 has a dependant, so it is never
// invalidated; V's writes get ENOSPC once the quota is full; R keeps reading and writing, its own data intact.
// Writes use dd with oflag=direct conv=fsync, as the reproduction did.
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { call, cleanupDir, isRoot, MiB, PluginProcess } from './plugin.js';
import { createSnapshot, createVolume, ddDirect, type Published, readAt, sha256, stageAndPublish } from './volumes.js';

describe('space policy: a restored PVC survives writes to its source (issue 15, finding 1; root)', () => {
  let plugin: PluginProcess | undefined;

  afterEach(async () => {
    if (!plugin) return;
    const dir = plugin.dir;
    await plugin.stop();
    plugin = undefined;
    await cleanupDir(dir);
  });

  it.skipIf(!isRoot)(
    '1-1 - save quota 8 MiB, thin restore R of S1 in use, V overwritten with 68 MiB: R reads and writes, data intact',
    async () => {
      const p = await PluginProcess.start({ extraArgs: ['--save-quota-bytes', String(8 * MiB)] });
      plugin = p;
      const size = 96 * MiB;
      const original = randomBytes(72 * MiB);
      const originalFile = join(p.dir, 'original.bin');
      await writeFile(originalFile, original);
      const v = await createVolume(p, 'v', 'block', size);
      const va: Published = await stageAndPublish(p, v, 'block');
      expect(await ddDirect(originalFile, va.targetPath, 0, 72)).toBeNull();
      const s1 = await createSnapshot(p, 's1', v);
      const r = await createVolume(p, 'r', 'block', size, {
        parameters: { hydrate: 'false' },
        volume_content_source: { snapshot: { snapshot_id: s1.snapshot_id } },
      });
      const ra = await stageAndPublish(p, r, 'block');
      // R's own data, acknowledged (O_DIRECT + fsync).
      const own = randomBytes(MiB);
      const ownFile = join(p.dir, 'own.bin');
      await writeFile(ownFile, own);
      expect(await ddDirect(ownFile, ra.targetPath, 10, 1)).toBeNull();
      // V overwritten with 68 MiB: about 68 MiB of before-images against an 8 MiB quota.
      const fresh = join(p.dir, 'fresh.bin');
      await writeFile(fresh, randomBytes(68 * MiB));
      const vError = await ddDirect(fresh, va.targetPath, 0, 68);
      // R: its own data, the snapshot's data elsewhere, and new writes (not bounded by V's quota).
      expect(sha256(await readAt(ra.targetPath, 10 * MiB, MiB))).toBe(sha256(own));
      expect(sha256(await readAt(ra.targetPath, 0, 10 * MiB))).toBe(sha256(original.subarray(0, 10 * MiB)));
      expect(sha256(await readAt(ra.targetPath, 11 * MiB, 61 * MiB))).toBe(
        sha256(original.subarray(11 * MiB, 72 * MiB)),
      );
      const more = randomBytes(4 * MiB);
      const moreFile = join(p.dir, 'more.bin');
      await writeFile(moreFile, more);
      expect(await ddDirect(moreFile, ra.targetPath, 40, 4)).toBeNull();
      expect(sha256(await readAt(ra.targetPath, 40 * MiB, 4 * MiB))).toBe(sha256(more));
      // V's writes fail once the quota is full, with ENOSPC (never EIO): S1 has a dependant.
      expect(vError).toMatch(/No space left on device/);
      // S1 stayed valid: listed ready, and R's condition is normal.
      const listed = await call<{ entries: { snapshot: { ready_to_use: boolean } }[] }>(
        p.clients.controller,
        'ListSnapshots',
        { snapshot_id: s1.snapshot_id },
      );
      expect(listed.entries[0]?.snapshot.ready_to_use).toBe(true);
      const got = await call<{ status: { volume_condition: { abnormal: boolean } } }>(
        p.clients.controller,
        'ControllerGetVolume',
        { volume_id: r },
      );
      expect(got.status.volume_condition.abnormal).toBe(false);
      // The refusal is reported on V: its condition is abnormal and names it.
      const vc = await call<{ status: { volume_condition: { abnormal: boolean; message: string } } }>(
        p.clients.controller,
        'ControllerGetVolume',
        { volume_id: v },
      );
      expect(vc.status.volume_condition).toMatchObject({ abnormal: true, message: expect.stringMatching(/ENOSPC/) });
      // Deleting R (no pod uses it now) unpins S1; deleting S1 then gives the space back and V writes again.
      await call(p.clients.node, 'NodeUnpublishVolume', { volume_id: r, target_path: ra.targetPath });
      await call(p.clients.node, 'NodeUnstageVolume', { volume_id: r, staging_target_path: ra.stagingPath });
      await call(p.clients.controller, 'DeleteVolume', { volume_id: r });
      await call(p.clients.controller, 'DeleteSnapshot', { snapshot_id: s1.snapshot_id });
      expect(await ddDirect(fresh, va.targetPath, 0, 68)).toBeNull();
    },
    300_000,
  );
});
