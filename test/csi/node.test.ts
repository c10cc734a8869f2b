// SPDX-License-Identifier: Apache-2.0
// Node service behaviour csi-sanity does not check: read-only publish, volume stats and the abnormal
// condition when the data path under a volume is gone, stage/publish conflicts, and expansion of an unstaged
// volume (ControllerExpandVolume, then NodeStage grows the file system; online expansion: expansion.test.ts).
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { statfs, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { call, isRoot, MiB, usePlugin } from './plugin.js';
import { capability, createVolume, stageAndPublish, unpublishAndUnstage, writeDurable } from './volumes.js';

const execFileP = promisify(execFile);

interface Stats {
  usage: { unit: string; total: string; used: string; available: string }[];
  volume_condition: { abnormal: boolean; message: string };
}

describe('node service (root: loop devices, FUSE, mounts)', () => {
  const plugin = usePlugin();

  it.skipIf(!isRoot)(
    '6-1 a read-only publish refuses writes; republishing it read-write is ALREADY_EXISTS',
    async () => {
      const p = plugin();
      const vol = await createVolume(p, 'ro', 'mount', 16 * MiB);
      const v = await stageAndPublish(p, vol, 'mount');
      const roTarget = join(p.dir, 'kubelet', vol, 'ro-target');
      const req = {
        volume_id: vol,
        staging_target_path: v.stagingPath,
        target_path: roTarget,
        volume_capability: capability('mount'),
      };
      await call(p.clients.node, 'NodePublishVolume', { ...req, readonly: true });
      await call(p.clients.node, 'NodePublishVolume', { ...req, readonly: true });
      await expect(writeFile(join(roTarget, 'x'), 'y')).rejects.toMatchObject({ code: 'EROFS' });
      await writeFile(join(v.targetPath, 'x'), 'y');
      await expect(call(p.clients.node, 'NodePublishVolume', { ...req, readonly: false })).rejects.toMatchObject({
        code: 6,
      });
      await call(p.clients.node, 'NodeUnpublishVolume', { volume_id: vol, target_path: roTarget });
      await unpublishAndUnstage(p, v);
      await call(p.clients.controller, 'DeleteVolume', { volume_id: vol });
    },
  );

  it.skipIf(!isRoot)('6-2 stats report bytes and inodes; a volume whose loop device vanished is abnormal', async () => {
    const p = plugin();
    const fsVol = await createVolume(p, 'stats-fs', 'mount', 32 * MiB);
    const f = await stageAndPublish(p, fsVol, 'mount');
    const s = await call<Stats>(p.clients.node, 'NodeGetVolumeStats', { volume_id: fsVol, volume_path: f.targetPath });
    const bytes = s.usage.find((u) => u.unit === 'BYTES')!;
    const inodes = s.usage.find((u) => u.unit === 'INODES')!;
    const st = await statfs(f.targetPath);
    expect(Number(bytes.total)).toBe(st.blocks * st.bsize);
    expect(Number(bytes.total)).toBeGreaterThan(24 * MiB);
    expect(Number(inodes.total)).toBe(st.files);
    expect(s.volume_condition).toEqual({ abnormal: false, message: 'volume is healthy' });

    const blkVol = await createVolume(p, 'stats-blk', 'block', 8 * MiB);
    const b = await stageAndPublish(p, blkVol, 'block');
    const before = await call<Stats>(p.clients.node, 'NodeGetVolumeStats', {
      volume_id: blkVol,
      volume_path: b.targetPath,
    });
    expect(before.usage).toEqual([{ unit: 'BYTES', total: String(8 * MiB), used: '0', available: String(8 * MiB) }]);
    expect(before.volume_condition.abnormal).toBe(false);
    // Used is what the engine holds for the raw device: the blocks written.
    await writeDurable(b.targetPath, 2 * MiB, randomBytes(MiB));
    const written = await call<Stats>(p.clients.node, 'NodeGetVolumeStats', {
      volume_id: blkVol,
      volume_path: b.targetPath,
    });
    expect(written.usage).toEqual([
      { unit: 'BYTES', total: String(8 * MiB), used: String(MiB), available: String(7 * MiB) },
    ]);
    // Pull the loop device out from under the plugin: the data path of this volume is down.
    const loops = (await execFileP('losetup', ['-l', '-n', '-O', 'NAME,BACK-FILE'])).stdout;
    const dev = loops
      .split('\n')
      .find((l) => l.trim().endsWith(`/fuse/${blkVol}`))
      ?.trim()
      .split(/\s+/)[0];
    expect(dev).toMatch(/^\/dev\/loop\d+$/);
    await execFileP('losetup', ['-d', dev!]);
    for (
      let i = 0;
      i < 50 && (await execFileP('losetup', ['-l', '-n', '-O', 'NAME'])).stdout.includes(`${dev}\n`);
      i++
    ) {
      await new Promise((r) => setTimeout(r, 20));
    }
    const after = await call<Stats>(p.clients.node, 'NodeGetVolumeStats', {
      volume_id: blkVol,
      volume_path: b.targetPath,
    });
    expect(after.volume_condition.abnormal).toBe(true);
    expect(after.volume_condition.message).toMatch(/data path/);
    // Teardown still works on a broken volume.
    await unpublishAndUnstage(p, b);
    await unpublishAndUnstage(p, f);
    for (const v of [blkVol, fsVol]) await call(p.clients.controller, 'DeleteVolume', { volume_id: v });
  });

  it.skipIf(!isRoot)('6-3 stage/publish conflicts get precise codes', async () => {
    const p = plugin();
    const vol = await createVolume(p, 'conflicts', 'mount', 16 * MiB);
    const v = await stageAndPublish(p, vol, 'mount');
    const stage = { volume_id: vol, staging_target_path: v.stagingPath, volume_capability: capability('mount') };
    await call(p.clients.node, 'NodeStageVolume', stage);
    const cases: Array<[string, string, object, number]> = [
      ['stage elsewhere', 'NodeStageVolume', { ...stage, staging_target_path: join(p.dir, 'elsewhere') }, 9],
      ['stage as block', 'NodeStageVolume', { ...stage, volume_capability: capability('block') }, 9],
      [
        'stage read-only over read-write',
        'NodeStageVolume',
        { ...stage, volume_capability: capability('mount', 'SINGLE_NODE_READER_ONLY') },
        6,
      ],
      [
        'multi-node mode',
        'NodeStageVolume',
        { ...stage, volume_capability: capability('mount', 'MULTI_NODE_MULTI_WRITER') },
        3,
      ],
      [
        'publish from another staging path',
        'NodePublishVolume',
        { ...stage, staging_target_path: join(p.dir, 'other'), target_path: join(p.dir, 't2') },
        9,
      ],
      [
        'publish without staging path',
        'NodePublishVolume',
        { volume_id: vol, target_path: join(p.dir, 't3'), volume_capability: capability('mount') },
        9,
      ],
      ['relative target', 'NodePublishVolume', { ...stage, target_path: 'rel/target' }, 3],
      ['unstage while published', 'NodeUnstageVolume', { volume_id: vol, staging_target_path: v.stagingPath }, 9],
      ['unknown volume', 'NodeStageVolume', { ...stage, volume_id: 'vol-00000000000000000000000000000000' }, 5],
    ];
    for (const [why, method, req, code] of cases) {
      await expect(call(p.clients.node, method, req), why).rejects.toMatchObject({ code });
    }
    await unpublishAndUnstage(p, v);
    await call(p.clients.node, 'NodeUnstageVolume', { volume_id: vol, staging_target_path: v.stagingPath });
    await call(p.clients.controller, 'DeleteVolume', { volume_id: vol });
  });

  it.skipIf(!isRoot).each([
    ['ext4', 32 * MiB, 64 * MiB],
    ['xfs', 320 * MiB, 400 * MiB],
  ])('6-4 expansion while unstaged (%s): the next stage grows the file system', async (fsType, from, to) => {
    const p = plugin();
    const vol = await createVolume(p, `grow-${fsType}`, 'mount', from, {}, fsType);
    let v = await stageAndPublish(p, vol, 'mount', fsType);
    const small = await statfs(v.targetPath);
    const expand = { volume_id: vol, capacity_range: { required_bytes: String(to) } };
    await unpublishAndUnstage(p, v);
    const r = await call<{ capacity_bytes: string; node_expansion_required: boolean }>(
      p.clients.controller,
      'ControllerExpandVolume',
      expand,
    );
    expect(r).toEqual({ capacity_bytes: String(to), node_expansion_required: true });
    v = await stageAndPublish(p, vol, 'mount', fsType);
    const grown = await statfs(v.targetPath);
    expect(grown.blocks * grown.bsize - small.blocks * small.bsize).toBeGreaterThan((to - from) * 0.9);
    // kubelet's NodeExpandVolume right after the mount finds the file system at full size already.
    const n = await call<{ capacity_bytes: string }>(p.clients.node, 'NodeExpandVolume', {
      volume_id: vol,
      volume_path: v.targetPath,
      staging_target_path: v.stagingPath,
      capacity_range: { required_bytes: String(to) },
      volume_capability: capability('mount', 'SINGLE_NODE_WRITER', fsType),
    });
    expect(n.capacity_bytes).toBe(String(to));
    await unpublishAndUnstage(p, v);
    await call(p.clients.controller, 'DeleteVolume', { volume_id: vol });
  });
});
