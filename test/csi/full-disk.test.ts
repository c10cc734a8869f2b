// SPDX-License-Identifier: Apache-2.0
// Issue 15 finding 2 through the real node plugin: the state dir on a small real file system (a 200 MiB ext4
// image, loop-mounted in the test's temp dir) filled by a volume's data. Unpublish and unstage work on the
// full disk, the plugin restarts (it starts, and serves the volume), DeleteSnapshot works and its space comes
// back (statfs), and writes work again. Everything is removed afterwards (exact loop device and mount).
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, stat, statfs, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { call, cleanupDir, isRoot, MiB, PluginProcess } from './plugin.js';
import {
  createSnapshot,
  createVolume,
  ddDirect,
  readAt,
  sha256,
  stageAndPublish,
  unpublishAndUnstage,
} from './volumes.js';

const execFileP = promisify(execFile);

async function freeBytes(path: string): Promise<number> {
  const s = await statfs(path);
  return s.bavail * s.bsize;
}

/** Free bytes plus what the plugin's space reserve holds (it takes the reserve again once space is back). */
async function spaceBytes(state: string): Promise<number> {
  const reserve = await stat(join(state, 'csi', 'space-reserve')).then(
    (s) => s.blocks * 512,
    () => 0,
  );
  return (await freeBytes(state)) + reserve;
}

/** A fresh ext4 file system of `sizeMiB` mounted (loop) at `<dir>/state`; cleanupDir(dir) removes both. */
async function smallStateDir(sizeMiB: number): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'loopsnap-full-'));
  const image = join(dir, 'fs.img');
  await execFileP('truncate', ['-s', `${sizeMiB}M`, image]);
  await execFileP('mkfs.ext4', ['-q', '-F', '-m', '0', image]);
  await mkdir(join(dir, 'state'));
  await execFileP('mount', ['-o', 'loop', image, join(dir, 'state')]);
  return dir;
}

describe('a full disk does not stop the node (issue 15, finding 2; root: loop-mounted ext4)', () => {
  let dir: string | undefined;
  let plugin: PluginProcess | undefined;

  afterEach(async () => {
    if (plugin && !plugin.exited) await plugin.stop();
    plugin = undefined;
    if (dir) await cleanupDir(dir);
    dir = undefined;
  });

  it.skipIf(!isRoot)(
    '2-1 - state dir full of a volume: unpublish, restart, DeleteSnapshot gives space back, writes work again',
    async () => {
      dir = await smallStateDir(200);
      const state = join(dir, 'state');
      plugin = await PluginProcess.start({ dir });
      let p = plugin;
      const v = await createVolume(p, 'filler', 'block', 256 * MiB);
      let a = await stageAndPublish(p, v, 'block');
      const first = join(dir, 'first.bin');
      const firstData = randomBytes(64 * MiB);
      await writeFile(first, firstData);
      expect(await ddDirect(first, a.targetPath, 0, 64)).toBeNull();
      const snap = await createSnapshot(p, 'before', v);
      // 32 MiB of before-images in the save pool, then new data until the disk is full.
      const second = join(dir, 'second.bin');
      await writeFile(second, randomBytes(32 * MiB));
      expect(await ddDirect(second, a.targetPath, 0, 32)).toBeNull();
      const filler = join(dir, 'filler.bin');
      await writeFile(filler, randomBytes(192 * MiB));
      const fillError = await ddDirect(filler, a.targetPath, 64, 192);
      expect(fillError).toMatch(/No space left on device/);
      expect(await freeBytes(state)).toBeLessThan(4 * MiB);
      // The first 32 MiB the volume acknowledged are intact; NodeUnpublish and NodeUnstage work on a full disk.
      expect(sha256(await readAt(a.targetPath, 32 * MiB, 32 * MiB))).toBe(sha256(firstData.subarray(32 * MiB)));
      await unpublishAndUnstage(p, a);
      // A restart on the full disk: the plugin starts and serves the volume.
      await p.stop();
      plugin = await PluginProcess.start({ dir });
      p = plugin;
      const listed = await call<{ entries: { volume: { volume_id: string } }[] }>(p.clients.controller, 'ListVolumes');
      expect(listed.entries.map((e) => e.volume.volume_id)).toEqual([v]);
      // DeleteSnapshot works, and its 32 MiB come back.
      const before = await spaceBytes(state);
      await call(p.clients.controller, 'DeleteSnapshot', { snapshot_id: snap.snapshot_id });
      expect(await spaceBytes(state)).toBeGreaterThan(before + 30 * MiB);
      // Writes work again.
      a = await stageAndPublish(p, v, 'block');
      const again = join(dir, 'again.bin');
      const againData = randomBytes(16 * MiB);
      await writeFile(again, againData);
      expect(await ddDirect(again, a.targetPath, 0, 16)).toBeNull();
      expect(sha256(await readAt(a.targetPath, 0, 16 * MiB))).toBe(sha256(againData));
      await unpublishAndUnstage(p, a);
    },
    300_000,
  );
});
