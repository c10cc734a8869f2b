// SPDX-License-Identifier: Apache-2.0
// Driver logic of issue 4 over real engine volumes in memory (MemoryBackend: the same engine-volumes.ts as the
// real backend) and real state files: thin clones and retirement, deferred snapshot deletion, clone-method
// images (ready when copied, surviving their source, thin clones of them), hydration, what thin clones refuse,
// the driver-level in-place restore and refresh (RestoreService), and restarts in the middle of background
// jobs. The data path is covered by test/csi/ and test/datapath/.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../../common/src/log.js';
import { pattern } from '../engine/testing/model.js';
import { DriverState } from '../state/driver-state.js';
import { watchBackgroundJobs } from './background.js';
import type { DriverContext } from './context.js';
import {
  thinVolumeInput as input,
  MiB,
  rejectsWithCode as rejectsWith,
  sameBytes as same,
  testDriverContext,
  until,
} from './driver-harness.testing.js';
import { MemoryBackend, MemoryFactory } from './memory-backend.testing.js';
import { recoverState } from './recovery.js';
import { RestoreService } from './restore-service.js';
import { SnapshotService } from './snapshot-service.js';
import { VolumeService } from './volume-service.js';

describe('driver services: thin clones, images, hydration, restore, refresh', () => {
  let dir: string;
  let factory: MemoryFactory;
  let backend: MemoryBackend;
  let d: DriverContext;
  let volumes: VolumeService;
  let snapshots: SnapshotService;
  let restores: RestoreService;

  async function boot(): Promise<void> {
    const log = createLogger({ component: 'test', level: 'silent' });
    backend = await MemoryBackend.start(factory);
    const state = await DriverState.load(dir, log);
    d = testDriverContext(state, backend, log);
    watchBackgroundJobs(d);
    volumes = new VolumeService(d);
    snapshots = new SnapshotService(d);
    restores = new RestoreService(d, snapshots);
  }

  const read = async (id: string, off: number, n: number) => {
    const buf = new Uint8Array(n);
    await backend.content(id).read(off, buf);
    return buf;
  };
  const write = (id: string, off: number, data: Uint8Array) => backend.content(id).write(off, data);

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'loopsnap-driver-rw-'));
    factory = new MemoryFactory();
    await boot();
  });

  afterEach(async () => {
    await backend.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('7-1 thin clones are instant and independent; deleting their snapshot is deferred, their source retired', async () => {
    const src = await volumes.create(input('src'));
    await write(src.volumeId, 0, pattern(1, 2 * MiB));
    const snap = await snapshots.create({ name: 's', sourceVolumeId: src.volumeId, parameters: {} });
    await write(src.volumeId, 0, pattern(2, MiB));
    const r = await volumes.create(input('r', { contentSource: { kind: 'snapshot', snapshotId: snap.snapshotId } }));
    const c = await volumes.create(input('c', { contentSource: { kind: 'volume', volumeId: src.volumeId } }));
    expect(backend.backing(r.volumeId)).toBe('rw');
    expect(backend.backing(c.volumeId)).toBe('rw');
    await write(r.volumeId, 100, pattern(3, 5000));
    const want = pattern(1, 2 * MiB);
    want.set(pattern(3, 5000), 100);
    expect(same(await read(r.volumeId, 0, 2 * MiB), want)).toBe(true);
    const live = pattern(1, 2 * MiB);
    live.set(pattern(2, MiB));
    expect(same(await read(src.volumeId, 0, 2 * MiB), live)).toBe(true);
    expect(same(await read(c.volumeId, 0, 2 * MiB), live)).toBe(true);
    // The snapshot goes from the API at once; its data stays for the restored volume.
    await snapshots.delete(snap.snapshotId);
    expect(d.state.snapshot(snap.snapshotId)).toBeUndefined();
    expect(same(await read(r.volumeId, 0, 2 * MiB), want)).toBe(true);
    // The source volume goes from the API; its data stays for its thin clones.
    await volumes.delete(src.volumeId);
    expect(d.state.volume(src.volumeId)).toBeUndefined();
    expect(backend.hasVolume(src.volumeId)).toBe(false);
    expect(same(await read(c.volumeId, 0, 2 * MiB), live)).toBe(true);
    await volumes.expand(r.volumeId, { required_bytes: String(6 * MiB) });
    expect(backend.volumeSizeBytes(r.volumeId)).toBe(6 * MiB);
    await volumes.delete(c.volumeId);
    expect(factory.list('volumes')).toEqual([src.volumeId]);
    await volumes.delete(r.volumeId);
    expect(factory.list('volumes')).toEqual([]);
  });

  it('7-2 what a thin clone cannot do: be snapshotted or restored in place; a clone of it is a full copy', async () => {
    const src = await volumes.create(input('src'));
    await write(src.volumeId, 0, pattern(1, MiB));
    const c = await volumes.create(input('c', { contentSource: { kind: 'volume', volumeId: src.volumeId } }));
    await rejectsWith(
      snapshots.create({ name: 'x', sourceVolumeId: c.volumeId, parameters: {} }),
      'CSI_ERR_THIN_CLONE',
    );
    await rejectsWith(
      snapshots.create({ name: 'y', sourceVolumeId: c.volumeId, parameters: { method: 'clone' } }),
      'CSI_ERR_THIN_CLONE',
    );
    expect(d.state.snapshots()).toEqual([]);
    await write(c.volumeId, 0, pattern(2, 4096));
    const cc = await volumes.create(input('cc', { contentSource: { kind: 'volume', volumeId: c.volumeId } }));
    expect(cc.origin).toEqual({ kind: 'copy' });
    expect(backend.backing(cc.volumeId)).toBe('volume');
    expect(same(await read(cc.volumeId, 0, MiB), await read(c.volumeId, 0, MiB))).toBe(true);
  });

  it('7-3 clone method: not ready until copied, then a restorable image that outlives its source', async () => {
    const src = await volumes.create(input('src'));
    await write(src.volumeId, 0, pattern(1, 3 * MiB));
    const hold = backend.holdNext('createRwClone');
    const snap = await snapshots.create({ name: 'img', sourceVolumeId: src.volumeId, parameters: { method: 'clone' } });
    expect(snap.method).toBe('clone');
    await write(src.volumeId, 0, pattern(2, MiB)); // after the cut
    await until('the image copy', () => d.state.snapshot(snap.snapshotId)?.readyToUse === true);
    expect(snapshots.get(snap.snapshotId).readyToUse).toBe(true);
    // The internal cut is released once the image is complete.
    expect(backend.listSnapshots(src.volumeId)).toEqual([]);
    // Still restorable after the source volume is gone.
    await volumes.delete(src.volumeId);
    expect(factory.list('volumes')).toEqual([]);
    hold.release();
    const r = await volumes.create(input('r', { contentSource: { kind: 'snapshot', snapshotId: snap.snapshotId } }));
    expect(r.origin).toMatchObject({ kind: 'rw-clone', baseVolumeId: snap.snapshotId, image: true });
    expect(same(await read(r.volumeId, 0, 3 * MiB), pattern(1, 3 * MiB))).toBe(true);
    // Deleting the snapshot while a volume reads its image retires the image.
    await snapshots.delete(snap.snapshotId);
    expect(same(await read(r.volumeId, 0, 3 * MiB), pattern(1, 3 * MiB))).toBe(true);
    expect(factory.list('images')).toEqual([snap.snapshotId]);
    await volumes.delete(r.volumeId);
    expect(factory.list('images')).toEqual([]);
  });

  it('7-4 a volume created from a clone-method snapshot before its copy ended is refused as not ready', async () => {
    const src = await volumes.create(input('src'));
    await write(src.volumeId, 0, pattern(1, 4 * MiB));
    await backend.engine.scheduler.close(); // nothing runs: the copy cannot end
    const snap = await snapshots.create({ name: 'img', sourceVolumeId: src.volumeId, parameters: { method: 'clone' } });
    expect(snapshots.get(snap.snapshotId).readyToUse).toBe(false);
    await rejectsWith(
      volumes.create(input('r', { contentSource: { kind: 'snapshot', snapshotId: snap.snapshotId } })),
      'CSI_ERR_NOT_READY',
      /background copy/,
    );
    await rejectsWith(volumes.delete(src.volumeId), 'CSI_ERR_IN_USE', /still copying/);
    await snapshots.delete(snap.snapshotId);
    expect(factory.list('images')).toEqual([]);
    expect(backend.listSnapshots(src.volumeId)).toEqual([]);
  });

  it('7-5 by default (no hydrate parameter) a restore becomes a volume of its own in the background; its source can then go', async () => {
    const src = await volumes.create(input('src'));
    await write(src.volumeId, 0, pattern(1, 4 * MiB));
    const snap = await snapshots.create({ name: 's', sourceVolumeId: src.volumeId, parameters: {} });
    const r = await volumes.create(
      input('r', { contentSource: { kind: 'snapshot', snapshotId: snap.snapshotId }, parameters: {} }),
    );
    expect(d.state.volume(r.volumeId)?.parameters).toEqual({ hydrate: 'true' });
    expect(r.origin.kind).toBe('rw-clone');
    await write(r.volumeId, 4096, pattern(5, 4096)); // during the hydration
    await until('the hydration', () => d.state.volume(r.volumeId)?.origin.kind === 'copy');
    expect(backend.backing(r.volumeId)).toBe('volume');
    const want = pattern(1, 4 * MiB);
    want.set(pattern(5, 4096), 4096);
    expect(same(await read(r.volumeId, 0, 4 * MiB), want)).toBe(true);
    await snapshots.delete(snap.snapshotId);
    await volumes.delete(src.volumeId);
    expect(factory.list('volumes')).toEqual([r.volumeId]);
    // A hydrated volume has a snapshot queue of its own.
    await snapshots.create({ name: 'of-r', sourceVolumeId: r.volumeId, parameters: {} });
  });

  it('7-6 restart in the middle of a hydration and of an image copy: both resume and finish', async () => {
    const src = await volumes.create(input('src', { capacityRange: { required_bytes: String(8 * MiB) } }));
    await write(src.volumeId, 0, pattern(1, 8 * MiB));
    const snap = await snapshots.create({ name: 's', sourceVolumeId: src.volumeId, parameters: {} });
    await backend.engine.scheduler.close();
    const r = await volumes.create(
      input('r', {
        capacityRange: { required_bytes: String(8 * MiB) },
        contentSource: { kind: 'snapshot', snapshotId: snap.snapshotId },
        parameters: { hydrate: 'true' },
      }),
    );
    const img = await snapshots.create({ name: 'img', sourceVolumeId: src.volumeId, parameters: { method: 'clone' } });
    await write(r.volumeId, 0, pattern(9, 4096));
    await backend.content(r.volumeId).flush();
    await backend.close();
    await boot();
    const report = await recoverState(d, backend.engine.storedVolumeIds());
    expect(report.orphanEngineVolumes).toEqual([]);
    await until('the hydration', () => d.state.volume(r.volumeId)?.origin.kind === 'copy');
    await until('the image', () => snapshots.get(img.snapshotId).readyToUse);
    const want = pattern(1, 8 * MiB);
    want.set(pattern(9, 4096));
    expect(same(await read(r.volumeId, 0, 8 * MiB), want)).toBe(true);
    const fromImg = await volumes.create(
      input('f', {
        capacityRange: { required_bytes: String(8 * MiB) },
        contentSource: { kind: 'snapshot', snapshotId: img.snapshotId },
      }),
    );
    expect(same(await read(fromImg.volumeId, 0, 8 * MiB), pattern(1, 8 * MiB))).toBe(true);
  });

  it('7-7 online in-place restore: reads see the snapshot at once, writes stay, the undo point keeps the old content', async () => {
    const v = await volumes.create(input('v'));
    await write(v.volumeId, 0, pattern(1, 4 * MiB));
    const snap = await snapshots.create({ name: 's', sourceVolumeId: v.volumeId, parameters: {} });
    await write(v.volumeId, 0, pattern(2, 2 * MiB));
    const before = await read(v.volumeId, 0, 4 * MiB);
    await backend.engine.scheduler.close(); // keep the copy pending to observe the online phase
    const started = await restores.startRestore({
      volumeId: v.volumeId,
      source: { snapshotId: snap.snapshotId },
      keepRestorePoint: { name: 'undo' },
    });
    expect(started).toMatchObject({ running: true, doneBytes: 0, totalBytes: 2 * MiB });
    expect(same(await read(v.volumeId, 0, 4 * MiB), pattern(1, 4 * MiB))).toBe(true);
    await write(v.volumeId, 8192, pattern(3, 100));
    await rejectsWith(
      restores.startRestore({ volumeId: v.volumeId, source: { snapshotId: snap.snapshotId } }),
      'CSI_ERR_BUSY',
    );
    await rejectsWith(snapshots.create({ name: 'during', sourceVolumeId: v.volumeId, parameters: {} }), 'CSI_ERR_BUSY');
    // The undo point is a normal CSI snapshot of the content before the restore.
    const undo = d.state.snapshot(started.restorePointSnapshotId!)!;
    expect(undo.name).toBe('undo');
    const got = new Uint8Array(4 * MiB);
    await backend.readSnapshot(v.volumeId, undo.engineSnapshotId, 0, got);
    expect(same(got, before)).toBe(true);
    // After a restart the copy resumes from the engine's restore record and completes.
    await backend.close();
    await boot();
    await recoverState(d, backend.engine.storedVolumeIds());
    await until('the restore', () => !restores.progress(v.volumeId).running);
    const want = pattern(1, 4 * MiB);
    want.set(pattern(3, 100), 8192);
    expect(same(await read(v.volumeId, 0, 4 * MiB), want)).toBe(true);
    await snapshots.create({ name: 'after', sourceVolumeId: v.volumeId, parameters: {} });
  });

  it('7-7b ControllerExpandVolume waits for background copies over a fixed range; thin clones grow with zeros', async () => {
    const v = await volumes.create(input('v'));
    await write(v.volumeId, 0, pattern(1, 4 * MiB));
    const snap = await snapshots.create({ name: 's', sourceVolumeId: v.volumeId, parameters: {} });
    const c = await volumes.create(input('c', { contentSource: { kind: 'volume', volumeId: v.volumeId } }));
    await backend.engine.scheduler.close(); // keep every copy pending
    const h = await volumes.create(
      input('h', { contentSource: { kind: 'snapshot', snapshotId: snap.snapshotId }, parameters: { hydrate: 'true' } }),
    );
    const grow = (id: string) => volumes.expand(id, { required_bytes: String(6 * MiB) });
    await rejectsWith(grow(h.volumeId), 'CSI_ERR_IN_USE', /being hydrated/);
    await restores.startRestore({ volumeId: v.volumeId, source: { volumeId: c.volumeId } });
    await rejectsWith(grow(v.volumeId), 'CSI_ERR_IN_USE', /being restored in place \(0 of \d+ bytes copied\)/);
    await rejectsWith(grow(c.volumeId), 'CSI_ERR_IN_USE', /source of the running in-place restore/);
    expect(d.state.volume(v.volumeId)?.capacityBytes).toBe(4 * MiB);
    // The copies resume after a restart and finish; then every one of them grows.
    await backend.close();
    await boot();
    await recoverState(d, backend.engine.storedVolumeIds());
    await until('the restore', () => !restores.progress(v.volumeId).running);
    await until('the hydration', () => d.state.volume(h.volumeId)?.origin.kind === 'copy');
    for (const id of [v.volumeId, c.volumeId, h.volumeId]) {
      expect(await grow(id)).toEqual({ capacityBytes: 6 * MiB, nodeExpansion: false });
      expect(backend.volumeSizeBytes(id)).toBe(6 * MiB);
      expect(same(await read(id, 0, 4 * MiB), pattern(1, 4 * MiB))).toBe(true);
      expect(same(await read(id, 4 * MiB, 2 * MiB), new Uint8Array(2 * MiB))).toBe(true);
    }
  });

  it('7-8 restore from a thin clone of the volume; refusals name what is wrong', async () => {
    const v = await volumes.create(input('v'));
    const other = await volumes.create(input('o'));
    await write(v.volumeId, 0, pattern(1, MiB));
    const c = await volumes.create(input('c', { contentSource: { kind: 'volume', volumeId: v.volumeId } }));
    await write(c.volumeId, 0, pattern(7, 4096));
    const foreign = await snapshots.create({ name: 'f', sourceVolumeId: other.volumeId, parameters: {} });
    await rejectsWith(
      restores.startRestore({ volumeId: v.volumeId, source: { snapshotId: foreign.snapshotId } }),
      'CSI_ERR_INVALID_FIELD',
      /itself/,
    );
    await rejectsWith(
      restores.startRestore({ volumeId: c.volumeId, source: { volumeId: v.volumeId } }),
      'CSI_ERR_THIN_CLONE',
      /refresh/,
    );
    await rejectsWith(
      restores.startRestore({ volumeId: v.volumeId, source: { volumeId: other.volumeId } }),
      'CSI_ERR_INVALID_FIELD',
    );
    await restores.startRestore({ volumeId: v.volumeId, source: { volumeId: c.volumeId }, order: 'old-then-new' });
    await until('the restore', () => !restores.progress(v.volumeId).running);
    expect(same(await read(v.volumeId, 0, MiB), await read(c.volumeId, 0, MiB))).toBe(true);
    expect((await read(v.volumeId, 0, 4096))[0]).toBe(pattern(7, 4096)[0]);
  });

  it("7-9 refresh keeps the thin clone's identity: onto a named snapshot, onto a fresh cut of its source", async () => {
    const src = await volumes.create(input('src'));
    await write(src.volumeId, 0, pattern(1, MiB));
    const s1 = await snapshots.create({ name: 's1', sourceVolumeId: src.volumeId, parameters: {} });
    const r = await volumes.create(input('r', { contentSource: { kind: 'snapshot', snapshotId: s1.snapshotId } }));
    await write(r.volumeId, 0, pattern(5, 4096));
    await write(src.volumeId, 0, pattern(2, MiB));
    const s2 = await snapshots.create({ name: 's2', sourceVolumeId: src.volumeId, parameters: {} });
    const onto = await restores.refresh({ volumeId: r.volumeId, target: { snapshotId: s2.snapshotId } });
    expect(onto.volumeId).toBe(r.volumeId);
    expect(onto.origin).toMatchObject({ kind: 'rw-clone', engineSnapshotId: s2.engineSnapshotId });
    expect(same(await read(r.volumeId, 0, MiB), pattern(2, MiB))).toBe(true);
    await write(src.volumeId, 0, pattern(3, MiB));
    await restores.refresh({ volumeId: r.volumeId, target: { fromSource: true } });
    expect(same(await read(r.volumeId, 0, MiB), pattern(3, MiB))).toBe(true);
    const o = await volumes.create(input('o'));
    const foreign = await snapshots.create({ name: 'f', sourceVolumeId: o.volumeId, parameters: {} });
    await rejectsWith(
      restores.refresh({ volumeId: r.volumeId, target: { snapshotId: foreign.snapshotId } }),
      'CSI_ERR_INVALID_FIELD',
    );
    await rejectsWith(restores.refresh({ volumeId: src.volumeId, target: { fromSource: true } }), 'CSI_ERR_THIN_CLONE');
  });
});
