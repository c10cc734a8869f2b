// SPDX-License-Identifier: Apache-2.0
// Issue 4 through the real node plugin (engine, FUSE, loop devices, ext4): clone-method snapshots (not ready
// while the background copy runs, progress in loopsnap_background_job_progress_ratio, the image outlives its
// source volume and new volumes come from it), StorageClass `hydrate: "true"` (a thin clone used while it is
// turned into a volume of its own, after which its source goes away completely), and deletion of snapshots and
// volumes that thin clones still read (deferred, never refused, nothing lost, nothing left behind).
// Background copies are slowed with --background-copy-bytes-per-second so the in-between states are seen.
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { call, cleanupDir, isRoot, MiB, PluginProcess } from './plugin.js';
import {
  checksumFiles,
  createSnapshot,
  createVolume,
  type CsiSnapshotResponse,
  type CsiVolumeResponse,
  capability,
  stageAndPublish,
  unpublishAndUnstage,
  writeFiles,
} from './volumes.js';

async function startPlugin(rate: number): Promise<{ p: PluginProcess; metrics: () => Promise<string> }> {
  const p = await PluginProcess.start({
    extraArgs: ['--http-endpoint', '127.0.0.1:0', '--background-copy-bytes-per-second', String(rate)],
  });
  const port = p.logs('Serving metrics and health endpoints')[0]?.port;
  return { p, metrics: async () => (await fetch(`http://127.0.0.1:${String(port)}/metrics`)).text() };
}

function progress(text: string, kind: string, id: string): number | undefined {
  const m = new RegExp(`^loopsnap_background_job_progress_ratio\\{kind="${kind}",id="${id}"\\} (\\S+)$`, 'm').exec(
    text,
  );
  return m === null ? undefined : Number(m[1]);
}

async function until<T>(what: string, fn: () => Promise<T | undefined>, ms = 120_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function engineVolumes(p: PluginProcess, dir: 'volumes' | 'clones'): Promise<string[]> {
  return (await readdir(join(p.stateDir, dir)).catch(() => [] as string[])).filter((n) => !n.startsWith('.'));
}

describe('clone-method snapshots, hydration, deferred deletion (root: loop devices, FUSE, mounts)', () => {
  let plugin: PluginProcess | undefined;

  afterEach(async () => {
    if (!plugin) return;
    const dir = plugin.dir;
    await plugin.stop();
    plugin = undefined;
    await cleanupDir(dir);
  });

  it.skipIf(!isRoot)(
    '2-1 clone method: ready_to_use false while copying, progress reported, the image outlives its source',
    async () => {
      const { p, metrics } = await startPlugin(8 * MiB);
      plugin = p;
      const src = await createVolume(p, 'img-src', 'mount', 64 * MiB);
      const a = await stageAndPublish(p, src, 'mount');
      const files = await writeFiles(a.targetPath, [12 * MiB, 4096, 300_000]);
      const snap = await createSnapshot(p, 'img', src, { method: 'clone' });
      expect(snap.ready_to_use).toBe(false);
      const ratio = await until('copy progress', async () => {
        const r = progress(await metrics(), 'clone', snap.snapshot_id);
        return r !== undefined && r > 0 && r < 1 ? r : undefined;
      });
      expect(ratio).toBeLessThan(1);
      await expect(
        call(p.clients.controller, 'CreateVolume', {
          name: 'too-early',
          capacity_range: { required_bytes: String(64 * MiB) },
          volume_capabilities: [capability('mount')],
          volume_content_source: { snapshot: { snapshot_id: snap.snapshot_id } },
        }),
      ).rejects.toMatchObject({ code: 9 });
      // Changes after the cut are not in the image.
      await writeFiles(a.targetPath, [1 * MiB]);
      await until('the image', async () => {
        const r = await call<{ entries: CsiSnapshotResponse[] }>(p.clients.controller, 'ListSnapshots', {
          snapshot_id: snap.snapshot_id,
        });
        return r.entries[0]?.snapshot.ready_to_use === true ? true : undefined;
      });
      expect(progress(await metrics(), 'clone', snap.snapshot_id)).toBeUndefined();
      // The source volume goes; the image stays and a new volume comes from it.
      await unpublishAndUnstage(p, a);
      await call(p.clients.controller, 'DeleteVolume', { volume_id: src });
      expect(await engineVolumes(p, 'volumes')).toEqual([]);
      const r = await call<CsiVolumeResponse>(p.clients.controller, 'CreateVolume', {
        name: 'from-img',
        capacity_range: { required_bytes: String(64 * MiB) },
        volume_capabilities: [capability('mount')],
        volume_content_source: { snapshot: { snapshot_id: snap.snapshot_id } },
      });
      const b = await stageAndPublish(p, r.volume.volume_id, 'mount');
      expect(await checksumFiles(b.targetPath, Object.keys(files))).toEqual(files);
      await unpublishAndUnstage(p, b);
      await call(p.clients.controller, 'DeleteSnapshot', { snapshot_id: snap.snapshot_id });
      await call(p.clients.controller, 'DeleteVolume', { volume_id: r.volume.volume_id });
      expect(await engineVolumes(p, 'clones')).toEqual([]);
      expect(await engineVolumes(p, 'volumes')).toEqual([]);
    },
  );

  it.skipIf(!isRoot)(
    '2-2 hydrate: "true": the volume is used while it is hydrated, then its source goes away completely',
    async () => {
      const { p, metrics } = await startPlugin(8 * MiB);
      plugin = p;
      const src = await createVolume(p, 'h-src', 'mount', 64 * MiB);
      const a = await stageAndPublish(p, src, 'mount');
      const files = await writeFiles(a.targetPath, [16 * MiB, 5000]);
      const snap = await createSnapshot(p, 'h-snap', src);
      await unpublishAndUnstage(p, a);
      const r = await call<CsiVolumeResponse>(p.clients.controller, 'CreateVolume', {
        name: 'hydrated',
        capacity_range: { required_bytes: String(64 * MiB) },
        volume_capabilities: [capability('mount')],
        parameters: { hydrate: 'true' },
        volume_content_source: { snapshot: { snapshot_id: snap.snapshot_id } },
      });
      const id = r.volume.volume_id;
      const b = await stageAndPublish(p, id, 'mount');
      expect(await checksumFiles(b.targetPath, Object.keys(files))).toEqual(files);
      const more = await writeFiles(b.targetPath, [2 * MiB, 100]);
      expect(progress(await metrics(), 'hydrate', id)).toBeLessThan(1);
      await until('the hydration', async () =>
        progress(await metrics(), 'hydrate', id) === undefined ? true : undefined,
      );
      expect(await checksumFiles(b.targetPath, Object.keys({ ...files, ...more }))).toEqual({ ...files, ...more });
      // Independent now: the snapshot and the source volume go, and nothing of them stays on disk.
      await call(p.clients.controller, 'DeleteSnapshot', { snapshot_id: snap.snapshot_id });
      await call(p.clients.controller, 'DeleteVolume', { volume_id: src });
      expect(await engineVolumes(p, 'volumes')).toEqual([id]);
      await unpublishAndUnstage(p, b);
      const again = await stageAndPublish(p, id, 'mount');
      expect(await checksumFiles(again.targetPath, Object.keys(more))).toEqual(more);
      // A hydrated volume has a snapshot queue of its own.
      const own = await createSnapshot(p, 'of-hydrated', id);
      expect(own.ready_to_use).toBe(true);
      await unpublishAndUnstage(p, again);
      await call(p.clients.controller, 'DeleteSnapshot', { snapshot_id: own.snapshot_id });
      await call(p.clients.controller, 'DeleteVolume', { volume_id: id });
    },
  );

  it.skipIf(!isRoot)(
    '2-3 deleting a snapshot and the source volume of restored and cloned volumes: deferred, nothing lost or left',
    async () => {
      const { p } = await startPlugin(0);
      plugin = p;
      const src = await createVolume(p, 'd-src', 'mount', 32 * MiB);
      const a = await stageAndPublish(p, src, 'mount');
      const files = await writeFiles(a.targetPath, [3 * MiB, 100]);
      const snap = await createSnapshot(p, 'd-snap', src);
      // Thin for good (a class with hydrate: "false"): they keep reading the snapshot and the source volume.
      const restored = await createVolume(p, 'd-restored', 'mount', 32 * MiB, {
        volume_content_source: { snapshot: { snapshot_id: snap.snapshot_id } },
        parameters: { hydrate: 'false' },
      });
      const cloned = await createVolume(p, 'd-cloned', 'mount', 32 * MiB, {
        volume_content_source: { volume: { volume_id: src } },
        parameters: { hydrate: 'false' },
      });
      // A thin clone has no snapshot queue of its own.
      await expect(createSnapshot(p, 'of-thin', restored)).rejects.toMatchObject({ code: 9 });
      await call(p.clients.controller, 'DeleteSnapshot', { snapshot_id: snap.snapshot_id });
      const listed = await call<{ entries: unknown[] }>(p.clients.controller, 'ListSnapshots', {});
      expect(listed.entries).toEqual([]);
      await unpublishAndUnstage(p, a);
      await call(p.clients.controller, 'DeleteVolume', { volume_id: src });
      const vols = await call<{ entries: { volume: { volume_id: string } }[] }>(
        p.clients.controller,
        'ListVolumes',
        {},
      );
      expect(vols.entries.map((e) => e.volume.volume_id).sort()).toEqual([restored, cloned].sort());
      for (const v of [restored, cloned]) {
        const m = await stageAndPublish(p, v, 'mount');
        expect(await checksumFiles(m.targetPath, Object.keys(files))).toEqual(files);
        await unpublishAndUnstage(p, m);
      }
      await call(p.clients.controller, 'DeleteVolume', { volume_id: restored });
      expect(await engineVolumes(p, 'volumes')).toEqual([src]);
      await call(p.clients.controller, 'DeleteVolume', { volume_id: cloned });
      expect(await engineVolumes(p, 'volumes')).toEqual([]);
    },
  );
});
