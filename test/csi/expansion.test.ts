// SPDX-License-Identifier: Apache-2.0
// Online volume expansion on the real node plugin (loop devices, FUSE, mounts; root), in the order a
// Kubernetes 1.33 CO drives it: ControllerExpandVolume on a published volume (engine storage, the FUSE
// file's size as the kernel sees it, the loop device's capacity), then NodeExpandVolume with kubelet's
// arguments (volume_path = the pod's target path, staging_target_path, capacity_range, the capability). A
// writer keeps writing through the published path during the whole growth (O_DSYNC, so its writes are in
// the data path while it changes); every byte written before, during and after is verified.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { canGrowExt4Online } from '../../csi/src/driver/fs-grow.js';
import { call, isRoot, MiB, type PluginProcess, usePlugin } from './plugin.js';
import {
  type AccessType,
  capability,
  checksumFiles,
  createSnapshot,
  createVolume,
  type Published,
  readAt,
  sha256,
  stageAndPublish,
  unpublishAndUnstage,
  writeDurable,
  writeFiles,
} from './volumes.js';
import { startBlockWriter, startFileWriter } from './writer.js';

const execFileP = promisify(execFile);
const hasCapSysResource = isRoot && (await canGrowExt4Online());

/** Writes the writer completes before the growth starts and after it ended. */
const WRITES_AROUND = 16;

interface ExpandResponse {
  capacity_bytes: string;
  node_expansion_required?: boolean;
}

async function deviceOf(v: Published): Promise<string> {
  if (v.type === 'block') return v.targetPath;
  return (await execFileP('findmnt', ['-n', '-o', 'SOURCE', '--mountpoint', v.stagingPath])).stdout.trim();
}

async function deviceBytes(device: string): Promise<number> {
  return Number((await execFileP('blockdev', ['--getsize64', device])).stdout.trim());
}

async function fsBytes(dir: string): Promise<number> {
  const s = await statfs(dir);
  return s.blocks * s.bsize;
}

/** writeFiles into `dir`/`sub`; the names in the result are relative to `dir`. */
async function writeFilesUnder(dir: string, sub: string, sizes: number[]): Promise<Record<string, string>> {
  await mkdir(join(dir, sub), { recursive: true });
  const sums = await writeFiles(join(dir, sub), sizes);
  return Object.fromEntries(Object.entries(sums).map(([n, sum]) => [`${sub}/${n}`, sum]));
}

function controllerExpand(p: PluginProcess, volumeId: string, bytes: number): Promise<ExpandResponse> {
  return call<ExpandResponse>(p.clients.controller, 'ControllerExpandVolume', {
    volume_id: volumeId,
    capacity_range: { required_bytes: String(bytes) },
  });
}

/** NodeExpandVolume as kubelet 1.33 sends it (pkg/volume/csi/expander.go, csi_client.go). */
function nodeExpand(p: PluginProcess, v: Published, bytes: number, fsType = ''): Promise<ExpandResponse> {
  return call<ExpandResponse>(p.clients.node, 'NodeExpandVolume', {
    volume_id: v.volumeId,
    volume_path: v.targetPath,
    staging_target_path: v.stagingPath,
    capacity_range: { required_bytes: String(bytes) },
    volume_capability: capability(v.type, 'SINGLE_NODE_WRITER', fsType),
  });
}

describe('online expansion (root: loop devices, FUSE, mounts)', () => {
  const plugin = usePlugin();

  it.skipIf(!isRoot)('8-1 Identity reports ONLINE volume expansion', async () => {
    const r = await call<{ capabilities: object[] }>(plugin().clients.identity, 'GetPluginCapabilities');
    expect(r.capabilities).toContainEqual({ volume_expansion: { type: 'ONLINE' }, type: 'volume_expansion' });
  });

  /**
   * Grows a published file system volume from `from` to `to` bytes while a writer appends to a file in it;
   * returns what must still be there afterwards.
   */
  async function growFilesystem(name: string, fsType: string, from: number, to: number, before: number[]) {
    const p = plugin();
    const vol = await createVolume(p, name, 'mount', from, {}, fsType);
    const v = await stageAndPublish(p, vol, 'mount', fsType);
    const device = await deviceOf(v);
    const sums = await writeFiles(v.targetPath, before);
    const oldFs = await fsBytes(v.targetPath);
    const writer = await startFileWriter(join(v.targetPath, 'log.bin'));
    await writer.reached(WRITES_AROUND);
    const during = writer.writes;
    const c = await controllerExpand(p, vol, to);
    expect(c).toEqual({ capacity_bytes: String(to), node_expansion_required: true });
    // The device is grown before the node step: what a pod's `blockdev --getsize64` sees at once.
    expect(await deviceBytes(device)).toBe(to);
    const node = nodeExpand(p, v, to, fsType);
    return { p, vol, v, device, sums, oldFs, writer, during, node };
  }

  it.skipIf(!isRoot)('8-2 xfs grows online under a writer; every file and every appended byte stays', async () => {
    const g = await growFilesystem('grow-xfs', 'xfs', 320 * MiB, 400 * MiB, [5 * MiB, 64 * 1024 + 3]);
    expect(await g.node).toEqual({ capacity_bytes: String(400 * MiB) });
    await g.writer.reached(g.during + 2 * WRITES_AROUND);
    await g.writer.stop();
    const grown = await fsBytes(g.v.targetPath);
    expect(grown - g.oldFs).toBeGreaterThan(75 * MiB);
    // The new space is usable: more than the old file system's free space.
    const extra = await writeFilesUnder(g.v.targetPath, 'after', [80 * MiB]);
    const log = g.writer.sum();
    expect(sha256(await readFile(join(g.v.targetPath, 'log.bin')))).toBe(log.sha256);
    expect(await checksumFiles(g.v.targetPath, Object.keys(g.sums))).toEqual(g.sums);
    // After a re-stage (a pod restart) everything is still there and NodeExpandVolume is a no-op.
    await unpublishAndUnstage(g.p, g.v);
    const again = await stageAndPublish(g.p, g.vol, 'mount', 'xfs');
    expect(await nodeExpand(g.p, again, 400 * MiB, 'xfs')).toEqual({ capacity_bytes: String(400 * MiB) });
    expect(await checksumFiles(again.targetPath, Object.keys(g.sums))).toEqual(g.sums);
    expect(await checksumFiles(again.targetPath, Object.keys(extra))).toEqual(extra);
    expect(sha256(await readFile(join(again.targetPath, 'log.bin')))).toBe(log.sha256);
    await unpublishAndUnstage(g.p, again);
    await call(g.p.clients.controller, 'DeleteVolume', { volume_id: g.vol });
  });

  it.skipIf(!hasCapSysResource)(
    '8-3 ext4 grows online under a writer (needs CAP_SYS_RESOURCE); files fill more than the old volume',
    async () => {
      const g = await growFilesystem('grow-ext4', 'ext4', 32 * MiB, 64 * MiB, [16 * MiB, 4097]);
      expect(await g.node).toEqual({ capacity_bytes: String(64 * MiB) });
      await g.writer.reached(g.during + 2 * WRITES_AROUND);
      await g.writer.stop();
      expect((await fsBytes(g.v.targetPath)) - g.oldFs).toBeGreaterThan(28 * MiB);
      const extra = await writeFilesUnder(g.v.targetPath, 'after', [24 * MiB]);
      expect(sha256(await readFile(join(g.v.targetPath, 'log.bin')))).toBe(g.writer.sum().sha256);
      expect(await checksumFiles(g.v.targetPath, Object.keys(g.sums))).toEqual(g.sums);
      expect(await checksumFiles(g.v.targetPath, Object.keys(extra))).toEqual(extra);
      await unpublishAndUnstage(g.p, g.v);
      await call(g.p.clients.controller, 'DeleteVolume', { volume_id: g.vol });
    },
  );

  it.skipIf(!isRoot || hasCapSysResource)(
    '8-3b ext4 without CAP_SYS_RESOURCE: the device grows online, NodeExpandVolume is FAILED_PRECONDITION naming it, the next stage grows the file system',
    async () => {
      const g = await growFilesystem('grow-ext4-nocap', 'ext4', 32 * MiB, 64 * MiB, [16 * MiB, 4097]);
      await expect(g.node).rejects.toMatchObject({ code: 9, details: expect.stringMatching(/CAP_SYS_RESOURCE/) });
      await g.writer.reached(g.during + 2 * WRITES_AROUND);
      await g.writer.stop();
      expect(await fsBytes(g.v.targetPath)).toBe(g.oldFs);
      expect(sha256(await readFile(join(g.v.targetPath, 'log.bin')))).toBe(g.writer.sum().sha256);
      expect(await checksumFiles(g.v.targetPath, Object.keys(g.sums))).toEqual(g.sums);
      // What kubelet does next: nothing until the pod restarts; then NodeStage grows ext4 before mounting.
      await unpublishAndUnstage(g.p, g.v);
      const again = await stageAndPublish(g.p, g.vol, 'mount', 'ext4');
      expect(await nodeExpand(g.p, again, 64 * MiB, 'ext4')).toEqual({ capacity_bytes: String(64 * MiB) });
      expect((await fsBytes(again.targetPath)) - g.oldFs).toBeGreaterThan(28 * MiB);
      const extra = await writeFilesUnder(again.targetPath, 'after', [24 * MiB]);
      expect(await checksumFiles(again.targetPath, Object.keys(g.sums))).toEqual(g.sums);
      expect(await checksumFiles(again.targetPath, Object.keys(extra))).toEqual(extra);
      expect(sha256(await readFile(join(again.targetPath, 'log.bin')))).toBe(g.writer.sum().sha256);
      await unpublishAndUnstage(g.p, again);
      await call(g.p.clients.controller, 'DeleteVolume', { volume_id: g.vol });
    },
  );

  /** Grows a published raw block volume under a writer; checks the old range byte for byte, the new one too. */
  async function growBlock(volumeId: string, from: number, to: number): Promise<void> {
    const p = plugin();
    const v = await stageAndPublish(p, volumeId, 'block');
    const model = Buffer.from(await readAt(v.targetPath, 0, from));
    const writer = await startBlockWriter(v.targetPath, model);
    await writer.reached(WRITES_AROUND);
    const during = writer.writes;
    // Raw block: ControllerExpandVolume grows the device itself; the node step only reports it.
    expect(await controllerExpand(p, volumeId, to)).toEqual({
      capacity_bytes: String(to),
      node_expansion_required: false,
    });
    expect(await deviceBytes(v.targetPath)).toBe(to);
    expect(await nodeExpand(p, v, to)).toEqual({ capacity_bytes: String(to) });
    await writer.reached(during + 2 * WRITES_AROUND);
    await writer.stop();
    expect((await readAt(v.targetPath, from, to - from)).equals(Buffer.alloc(to - from))).toBe(true);
    const tail = randomBytes(MiB);
    await writeDurable(v.targetPath, to - MiB, tail);
    await unpublishAndUnstage(p, v);
    const again = await stageAndPublish(p, volumeId, 'block');
    expect(await deviceBytes(again.targetPath)).toBe(to);
    expect((await readAt(again.targetPath, 0, from)).equals(model)).toBe(true);
    expect((await readAt(again.targetPath, to - MiB, MiB)).equals(tail)).toBe(true);
    await unpublishAndUnstage(p, again);
  }

  it.skipIf(!isRoot)('8-4 raw block grows online under a writer; old bytes intact, new range zeros', async () => {
    const p = plugin();
    const vol = await createVolume(p, 'grow-block', 'block', 64 * MiB);
    await growBlock(vol, 64 * MiB, 96 * MiB);
    await call(p.clients.controller, 'DeleteVolume', { volume_id: vol });
  });

  it.skipIf(!isRoot)(
    '8-5 a thin clone (restored from a snapshot) grows online under a writer; its source is untouched',
    async () => {
      const p = plugin();
      const src = await createVolume(p, 'grow-src', 'block', 32 * MiB);
      const s = await stageAndPublish(p, src, 'block');
      const base = randomBytes(32 * MiB);
      await writeDurable(s.targetPath, 0, base);
      const snap = await createSnapshot(p, 'grow-snap', src);
      const clone = await createVolume(p, 'grow-clone', 'block', 32 * MiB, {
        volume_content_source: { snapshot: { snapshot_id: snap.snapshot_id } },
      });
      await growBlock(clone, 32 * MiB, 48 * MiB);
      expect(sha256(await readAt(s.targetPath, 0, 32 * MiB))).toBe(sha256(base));
      expect(await deviceBytes(s.targetPath)).toBe(32 * MiB);
      await unpublishAndUnstage(p, s);
      await call(p.clients.controller, 'DeleteVolume', { volume_id: clone });
      await call(p.clients.controller, 'DeleteSnapshot', { snapshot_id: snap.snapshot_id });
      await call(p.clients.controller, 'DeleteVolume', { volume_id: src });
    },
  );

  it.skipIf(!isRoot).each<[AccessType, object, number, RegExp]>([
    ['block', { capacity_range: { required_bytes: String(64 * MiB) } }, 11, /ControllerExpandVolume grows it first/],
    ['block', { volume_path: '/nonexistent/target' }, 5, /not published or staged at \/nonexistent\/target/],
    ['block', { staging_target_path: '/elsewhere' }, 5, /is staged at .*, not \/elsewhere/],
    ['block', { volume_capability: capability('mount') }, 9, /created for block access, not mount/],
  ])('8-6 NodeExpandVolume refusals are precise (%s, %j)', async (type, override, code, message) => {
    const p = plugin();
    const vol = await createVolume(p, `refuse-${code}-${Object.keys(override)[0]}`, type, 16 * MiB);
    const v = await stageAndPublish(p, vol, type);
    const req = {
      volume_id: vol,
      volume_path: v.targetPath,
      staging_target_path: v.stagingPath,
      capacity_range: { required_bytes: String(16 * MiB) },
      volume_capability: capability(type),
      ...override,
    };
    await expect(call(p.clients.node, 'NodeExpandVolume', req)).rejects.toMatchObject({
      code,
      details: expect.stringMatching(message),
    });
    await unpublishAndUnstage(p, v);
    await call(p.clients.controller, 'DeleteVolume', { volume_id: vol });
  });
});
