// SPDX-License-Identifier: Apache-2.0
// The FUSE server and loop devices with the engine bypassed (pass-through views): mount via fd=3, direct-I/O
// loop devices, byte-exact I/O, clean unmount, and restart after kill -9 with cleanup scoped to our state dir.
import { randomBytes } from 'node:crypto';
import { open, readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { attachLoop, describeLoop, type LoopDevice } from '../../csi/src/mount/loop-device.js';
import { readMountInfo } from '../../csi/src/mount/mountinfo.js';
import { ensureBuilt, isRoot, Resources, sh, startHost, writeFileSynced } from '../support/datapath-host.js';

const res = new Resources();

describe('data path: FUSE pass-through views', () => {
  beforeAll(async () => {
    if (isRoot) await ensureBuilt();
  });
  afterEach(async () => {
    await res.cleanup();
  });

  it.skipIf(!isRoot).each([{ directIo: false }, { directIo: true }])(
    '1-1 (root) loop on a FUSE view has dio=1 and returns exactly what was written (server O_DIRECT: $directIo)',
    async ({ directIo }) => {
      const dir = await res.tempDir();
      const stateDir = res.stateDir(join(dir, 'state'));
      const img = join(dir, 'base.img');
      await writeFile(img, '');
      await truncate(img, 32 << 20);
      const host = res.host(await startHost());
      await host.call('start', { stateDir, workers: 2, directIo });
      const path = await host.call<string>('exposeFile', { name: 'vol-1', path: img });
      expect(path).toBe(join(stateDir, 'fuse', 'vol-1'));
      const loop = await host.call<LoopDevice>('attach', { name: 'vol-1' });
      res.loop(loop.device);
      expect(loop.directIo).toBe(true);
      expect(loop.backingFile).toBe(path);

      const oracle = new Uint8Array(32 << 20);
      const fh = await open(loop.device, 'r+');
      try {
        for (let i = 0; i < 40; i++) {
          const len = 512 * (1 + (i % 9)) * (i % 3 === 0 ? 64 : 1);
          const off = 512 * Math.floor(Math.random() * ((oracle.length - len) / 512));
          const data = randomBytes(len);
          await fh.write(data, 0, len, off);
          oracle.set(data, off);
        }
        await fh.sync();
      } finally {
        await fh.close();
      }
      const back = await readFile(loop.device);
      expect(Buffer.compare(back, oracle)).toBe(0);
      expect(Buffer.compare(await readFile(img), oracle)).toBe(0);
      const metrics = await host.call<string>('metrics');
      expect(metrics).toMatch(/loopsnap_datapath_data_requests_total\{path="fast",op="write"\} [1-9]/);
      expect(metrics).toMatch(/loopsnap_datapath_data_requests_total\{path="handoff",op="write"\} 0/);
      expect(metrics).toMatch(/loopsnap_datapath_views 1/);

      await host.call('detach', { name: 'vol-1' });
      await host.call('unexpose', { name: 'vol-1' });
      await host.call('stop');
      const fuse = (await readMountInfo()).filter((m) => m.mountPoint === join(stateDir, 'fuse'));
      expect(fuse).toEqual([]);
    },
  );

  it.skipIf(!isRoot)(
    '1-2 (root) a view with a loop device cannot be unexposed; the server refuses to stop',
    async () => {
      const dir = await res.tempDir();
      const stateDir = res.stateDir(join(dir, 'state'));
      const img = join(dir, 'base.img');
      await writeFile(img, '');
      await truncate(img, 8 << 20);
      const host = res.host(await startHost());
      await host.call('start', { stateDir, workers: 1 });
      await host.call('exposeFile', { name: 'v', path: img });
      res.loop((await host.call<LoopDevice>('attach', { name: 'v' })).device);
      await expect(host.call('unexpose', { name: 'v' })).rejects.toThrow(/DP_ERR_VIEW_BUSY/);
      await expect(host.call('stop')).rejects.toThrow(/DP_ERR_VIEW_BUSY/);
      await host.call('detach', { name: 'v' });
      await host.call('unexpose', { name: 'v' });
      await host.call('stop');
    },
  );

  it.skipIf(!isRoot)('1-3 (root) quiesce holds new I/O on a view until it is released, then I/O resumes', async () => {
    const dir = await res.tempDir();
    const stateDir = res.stateDir(join(dir, 'state'));
    const img = join(dir, 'base.img');
    await writeFile(img, '');
    await truncate(img, 8 << 20);
    const host = res.host(await startHost());
    await host.call('start', { stateDir, workers: 2 });
    await host.call('exposeFile', { name: 'v', path: img });
    const loop = await host.call<LoopDevice>('attach', { name: 'v' });
    res.loop(loop.device);
    const released = host.call<number>('quiesce', { name: 'v', holdMs: 800 });
    await new Promise((r) => setTimeout(r, 100));
    await sh('dd', [`if=${loop.device}`, 'of=/dev/null', 'bs=4096', 'count=1', 'skip=7', 'iflag=direct']);
    const readDone = Date.now();
    expect(readDone).toBeGreaterThanOrEqual(await released);
    await sh('dd', ['if=/dev/zero', `of=${loop.device}`, 'bs=4096', 'count=1', 'oflag=direct']);
  });

  it.skipIf(!isRoot)(
    '2-1 (root) after kill -9 of the server its loop device fails I/O, and restart cleans up only our own state',
    async () => {
      const dir = await res.tempDir();
      const stateDir = res.stateDir(join(dir, 'state'));
      const img = join(dir, 'base.img');
      await writeFile(img, '');
      await truncate(img, 64 << 20);
      // A loop device and a mount that are not ours: cleanup must leave them alone.
      const foreignImg = join(dir, 'foreign.img');
      await writeFile(foreignImg, '');
      await truncate(foreignImg, 16 << 20);
      const foreign = await attachLoop({ file: foreignImg });
      res.loop(foreign.device);
      await sh('mkfs.ext4', ['-q', foreign.device]);
      const foreignMnt = res.mount(join(dir, 'foreign-mnt'));
      await sh('mkdir', ['-p', foreignMnt]);
      await sh('mount', [foreign.device, foreignMnt]);

      const host = res.host(await startHost());
      await host.call('start', { stateDir, workers: 2 });
      await host.call('exposeFile', { name: 'v', path: img });
      const loop = await host.call<LoopDevice>('attach', { name: 'v' });
      res.loop(loop.device);
      await sh('mkfs.ext4', ['-q', loop.device]);
      const stage = res.mount(join(dir, 'stage'));
      const bind = res.mount(join(dir, 'bind'));
      await sh('mkdir', ['-p', stage, bind]);
      await sh('mount', [loop.device, stage]);
      await sh('mount', ['--bind', stage, bind]);
      await writeFileSynced(join(stage, 'a'), Buffer.from('hello'));

      await host.kill();
      // I/O through the dead path fails; it never returns data.
      await expect(
        sh('dd', [`if=${loop.device}`, 'of=/dev/null', 'bs=4096', 'count=1', 'iflag=direct']),
      ).rejects.toThrow();

      const host2 = res.host(await startHost());
      const started = await host2.call<{
        cleanup: { loopsDetached: string[]; mountsRemoved: string[]; fuseUnmounted: boolean };
      }>('start', { stateDir, workers: 1 });
      expect(started.cleanup.loopsDetached).toEqual([loop.device]);
      expect([...started.cleanup.mountsRemoved].sort()).toEqual([bind, stage].sort());
      expect(started.cleanup.fuseUnmounted).toBe(true);
      expect(await describeLoop(foreign.device)).toMatchObject({ backingFile: foreignImg });
      const mounts = await readMountInfo();
      expect(mounts.some((m) => m.mountPoint === foreignMnt)).toBe(true);
      expect(mounts.some((m) => m.mountPoint === stage || m.mountPoint === bind)).toBe(false);

      // The new server works: stage the same volume again and find the file.
      await host2.call('exposeFile', { name: 'v', path: img });
      const loop2 = await host2.call<LoopDevice>('attach', { name: 'v' });
      res.loop(loop2.device);
      await sh('mount', [loop2.device, stage]);
      expect(await readFile(join(stage, 'a'), 'utf8')).toBe('hello');
    },
  );
});
