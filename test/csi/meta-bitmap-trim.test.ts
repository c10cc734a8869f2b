// SPDX-License-Identifier: Apache-2.0
// Issue 19: a meta-bitmap snapshot of a mounted volume skips what its file system freed without anyone running
// fstrim (the plugin trims right before the freeze, ADR 0013). Per file system, the same workload on a
// save-volume and on a meta-bitmap volume, each on the real data path (loop -> FUSE -> engine): 512 MiB of
// files written, half of them deleted, snapshot S1, new files of the same size written (they land in the freed
// blocks: the volume is nearly full), snapshot S2. The save-pool growth between S1 and S2 is what keeping S1
// costs: save-volume keeps the deleted files' blocks as they were, meta-bitmap knows they were free at the cut;
// its growth is at most 0.1x that of save-volume. Every file of S1 and S2 of the meta-bitmap volume reads back
// intact from thin restores. (A snapshot taken before the delete keeps the deleted files whatever the method:
// that is its content.)
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { call, cleanupDir, isRoot, MiB, PluginProcess } from './plugin.js';
import {
  checksumFiles,
  createSnapshot,
  createVolume,
  type Published,
  stageAndPublish,
  unpublishAndUnstage,
  writeFiles,
} from './volumes.js';

// Nearly full once the files are written (xfs keeps more for itself than ext4).
const VOLUME_BYTES: Record<string, number> = { ext4: 560 * MiB, xfs: 640 * MiB };
const FILE_BYTES = 64 * MiB;
const FILES = 8;

describe('meta-bitmap snapshots skip blocks the file system freed (root: loop devices, FUSE, mkfs)', () => {
  let plugin: PluginProcess | undefined;
  let metrics = '';

  beforeAll(async () => {
    if (!isRoot) return;
    plugin = await PluginProcess.start({ extraArgs: ['--http-endpoint', '127.0.0.1:0'] });
    const port = plugin.logs('Serving metrics and health endpoints')[0]?.port;
    metrics = `http://127.0.0.1:${String(port)}/metrics`;
  });
  afterAll(async () => {
    if (!plugin) return;
    await plugin.stop();
    await cleanupDir(plugin.dir);
  });

  async function savePoolUsed(volumeId: string): Promise<number> {
    const text = await (await fetch(metrics)).text();
    const m = new RegExp(`^loopsnap_save_pool_used_bytes\\{volume_id="${volumeId}"\\} (\\d+)$`, 'm').exec(text);
    if (!m) throw new Error(`no save-pool gauge for ${volumeId}`);
    return Number(m[1]);
  }

  async function filesOfSnapshot(p: PluginProcess, snapshotId: string, fsType: string, names: string[]) {
    const r = await createVolume(
      p,
      `r-${snapshotId}`,
      'mount',
      VOLUME_BYTES[fsType]!,
      {
        volume_content_source: { snapshot: { snapshot_id: snapshotId } },
        parameters: { hydrate: 'false' },
      },
      fsType,
    );
    const v = await stageAndPublish(p, r, 'mount', fsType);
    try {
      return await checksumFiles(v.targetPath, names);
    } finally {
      await unpublishAndUnstage(p, v);
      await call(p.clients.controller, 'DeleteVolume', { volume_id: r });
    }
  }

  interface Run {
    growthBytes: number;
    sums: { s1: Record<string, string>; s2: Record<string, string> };
    snaps: string[];
    vol: Published;
  }

  async function workload(p: PluginProcess, fsType: string, method: string): Promise<Run> {
    const id = await createVolume(p, `${fsType}-${method}`, 'mount', VOLUME_BYTES[fsType]!, {}, fsType);
    const vol = await stageAndPublish(p, id, 'mount', fsType);
    const params = { method };
    const written = await writeFiles(vol.targetPath, Array(FILES).fill(FILE_BYTES));
    const gone = Object.keys(written).slice(0, FILES / 2);
    for (const n of gone) await rm(join(vol.targetPath, n));
    const kept = Object.fromEntries(Object.entries(written).filter(([n]) => !gone.includes(n)));
    const s1 = await createSnapshot(p, `${id}-s1`, id, params);
    const before = await savePoolUsed(id);
    // New files of the same sizes (writeFiles numbers from 0: they take the deleted names).
    const fresh = await writeFiles(vol.targetPath, Array(FILES / 2).fill(FILE_BYTES));
    const growthBytes = (await savePoolUsed(id)) - before;
    const s2 = await createSnapshot(p, `${id}-s2`, id, params);
    return {
      growthBytes,
      sums: { s1: kept, s2: { ...kept, ...fresh } },
      snaps: [s1.snapshot_id, s2.snapshot_id],
      vol,
    };
  }

  for (const fsType of ['ext4', 'xfs']) {
    it.skipIf(!isRoot)(
      `19-1 ${fsType}: save-pool growth of meta-bitmap is at most 0.1x that of save-volume; both snapshots intact`,
      async () => {
        const p = plugin!;
        const sv = await workload(p, fsType, 'save-volume');
        const mb = await workload(p, fsType, 'meta-bitmap');
        // The new files overwrote freed blocks: save-volume kept their old content for S2.
        expect(sv.growthBytes).toBeGreaterThan((FILES / 4) * FILE_BYTES);
        expect(mb.growthBytes).toBeLessThanOrEqual(0.1 * sv.growthBytes);
        for (const r of [sv, mb]) await unpublishAndUnstage(p, r.vol);
        const [s1, s2] = mb.snaps as [string, string];
        expect(await filesOfSnapshot(p, s1, fsType, Object.keys(mb.sums.s1))).toEqual(mb.sums.s1);
        expect(await filesOfSnapshot(p, s2, fsType, Object.keys(mb.sums.s2))).toEqual(mb.sums.s2);
        for (const r of [sv, mb]) {
          for (const s of r.snaps) await call(p.clients.controller, 'DeleteSnapshot', { snapshot_id: s });
          await call(p.clients.controller, 'DeleteVolume', { volume_id: r.vol.volumeId });
        }
      },
      600_000,
    );
  }
});
