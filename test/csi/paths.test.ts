// SPDX-License-Identifier: Apache-2.0
// Issue 15 finding 3, through a real node plugin: staging and target paths are confined below the kubelet
// directory (the plugin's work dir here, --kubelet-dir), no symlink is followed on them, unpublish and
// unstage remove only what the plugin created and answer OK when it is gone, and a hung path costs a
// bounded wait (DEADLINE_EXCEEDED), never the plugin, the volume lock or a loop device. Decoy directories
// outside the plugin's dirs are compared by a file-tree digest after every hostile call.
import { status } from '@grpc/grpc-js';
import { mkdir, readFile, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Decoys, failure, hungFuse, makeDecoys } from './hostile.js';
import { call, cleanupDir, isRoot, leftoversUnder, MiB, PluginProcess, usePlugin } from './plugin.js';
import { capability, createVolume } from './volumes.js';

const INVALID = status.INVALID_ARGUMENT;

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

async function loopsOf(p: PluginProcess): Promise<string[]> {
  return (await leftoversUnder(p.dir)).filter((l) => l.startsWith('loop '));
}

describe('3 paths are confined, symlinks are not followed (root: loop devices, FUSE, mounts)', () => {
  const plugin = usePlugin({ extraArgs: ['--path-timeout-seconds', '2'] });
  let decoys: Decoys;
  let before = '';

  beforeAll(async () => {
    decoys = await makeDecoys();
    before = await decoys.digest();
  });
  afterAll(async () => {
    await decoys?.cleanup();
  });

  const kubelet = (p: PluginProcess, ...parts: string[]): string => join(p.dir, 'kubelet', ...parts);

  async function stagedBlock(p: PluginProcess, name: string): Promise<{ vol: string; staging: string }> {
    const vol = await createVolume(p, name, 'block', 4 * MiB);
    const staging = kubelet(p, name, 'staging');
    await mkdir(staging, { recursive: true });
    await call(p.clients.node, 'NodeStageVolume', {
      volume_id: vol,
      staging_target_path: staging,
      volume_capability: capability('block'),
    });
    return { vol, staging };
  }

  it.skipIf(!isRoot)(
    '3-1 block NodePublish over an existing file is refused and keeps it; a target the plugin made goes with the unpublish',
    async () => {
      const p = plugin();
      const { vol, staging } = await stagedBlock(p, 'over-file');
      const target = kubelet(p, 'over-file', 'existing');
      await writeFile(target, 'user data\n');
      const pub = { volume_id: vol, staging_target_path: staging, volume_capability: capability('block') };
      const f = await failure(call(p.clients.node, 'NodePublishVolume', { ...pub, target_path: target }));
      expect(f).toMatchObject({ code: INVALID, errorCode: 'CSI_ERR_TARGET_IN_THE_WAY' });
      expect(f.details).toContain(target);
      await call(p.clients.node, 'NodeUnpublishVolume', { volume_id: vol, target_path: target });
      expect(await readFile(target, 'utf8')).toBe('user data\n');
      // A new target: the plugin creates the file, and removes it (OK again once it is gone).
      const fresh = kubelet(p, 'over-file', 'fresh');
      await call(p.clients.node, 'NodePublishVolume', { ...pub, target_path: fresh });
      expect((await stat(fresh)).isBlockDevice()).toBe(true);
      await call(p.clients.node, 'NodeUnpublishVolume', { volume_id: vol, target_path: fresh });
      expect(await exists(fresh)).toBe(false);
      await call(p.clients.node, 'NodeUnpublishVolume', { volume_id: vol, target_path: fresh });
      await call(p.clients.node, 'NodeUnstageVolume', { volume_id: vol, staging_target_path: staging });
      await call(p.clients.controller, 'DeleteVolume', { volume_id: vol });
    },
  );

  it.skipIf(!isRoot)(
    '3-2 a symlinked target path (last component or a parent) is refused; nothing lands on the link destination',
    async () => {
      const p = plugin();
      const vol = await createVolume(p, 'sym-target', 'mount', 16 * MiB);
      const staging = kubelet(p, 'sym-target', 'staging');
      await mkdir(staging, { recursive: true });
      const cap = capability('mount');
      await call(p.clients.node, 'NodeStageVolume', {
        volume_id: vol,
        staging_target_path: staging,
        volume_capability: cap,
      });
      const link = kubelet(p, 'sym-target', 'link');
      await symlink(decoys.emptyDir, link);
      const parentLink = kubelet(p, 'sym-target', 'parent-link');
      await symlink(decoys.dir, parentLink);
      for (const target of [link, join(parentLink, 'empty-dir'), join(parentLink, 'new-target')]) {
        const f = await failure(
          call(p.clients.node, 'NodePublishVolume', {
            volume_id: vol,
            staging_target_path: staging,
            target_path: target,
            volume_capability: cap,
          }),
        );
        expect(f, target).toMatchObject({ code: INVALID, errorCode: 'CSI_ERR_PATH_SYMLINK' });
        expect(f.details).toContain('symbolic link');
        await call(p.clients.node, 'NodeUnpublishVolume', { volume_id: vol, target_path: target }).catch(
          () => undefined,
        );
      }
      expect(await decoys.digest()).toBe(before);
      await call(p.clients.node, 'NodeUnstageVolume', { volume_id: vol, staging_target_path: staging });
      await call(p.clients.controller, 'DeleteVolume', { volume_id: vol });
    },
  );

  it.skipIf(!isRoot)(
    '3-3 a symlinked staging path is refused before a loop device is attached; the volume stages elsewhere afterwards',
    async () => {
      const p = plugin();
      const vol = await createVolume(p, 'sym-staging', 'mount', 16 * MiB);
      const link = kubelet(p, 'sym-staging', 'staging-link');
      await mkdir(kubelet(p, 'sym-staging'), { recursive: true });
      await symlink(decoys.emptyDir, link);
      const loops = await loopsOf(p);
      const f = await failure(
        call(p.clients.node, 'NodeStageVolume', {
          volume_id: vol,
          staging_target_path: link,
          volume_capability: capability('mount'),
        }),
      );
      expect(f).toMatchObject({ code: INVALID, errorCode: 'CSI_ERR_PATH_SYMLINK' });
      expect(await loopsOf(p)).toEqual(loops);
      expect(await decoys.digest()).toBe(before);
      const staging = kubelet(p, 'sym-staging', 'staging');
      await call(p.clients.node, 'NodeStageVolume', {
        volume_id: vol,
        staging_target_path: staging,
        volume_capability: capability('mount'),
      });
      await call(p.clients.node, 'NodeUnstageVolume', { volume_id: vol, staging_target_path: staging });
      // The plugin created the staging directory (its parent existed), so unstage removed it.
      expect(await exists(staging)).toBe(false);
      await call(p.clients.controller, 'DeleteVolume', { volume_id: vol });
    },
  );

  it.skipIf(!isRoot)(
    '3-4 NodeUnpublish of a path the plugin does not know deletes nothing and answers OK',
    async () => {
      const p = plugin();
      const { vol, staging } = await stagedBlock(p, 'unknown');
      const emptyFile = kubelet(p, 'unknown', 'empty-file');
      const emptyDir = kubelet(p, 'unknown', 'empty-dir');
      await writeFile(emptyFile, '');
      await mkdir(emptyDir);
      for (const target of [emptyFile, emptyDir, kubelet(p, 'unknown', 'missing'), kubelet(p, 'nope', 'missing')]) {
        await call(p.clients.node, 'NodeUnpublishVolume', { volume_id: vol, target_path: target });
      }
      expect(await exists(emptyFile)).toBe(true);
      expect(await exists(emptyDir)).toBe(true);
      await call(p.clients.node, 'NodeUnstageVolume', { volume_id: vol, staging_target_path: staging });
      await call(p.clients.controller, 'DeleteVolume', { volume_id: vol });
    },
  );

  it.skipIf(!isRoot)(
    '3-5 /, /etc/..., relative, .., outside the kubelet dir and inside the state dir are INVALID_ARGUMENT with the reason',
    async () => {
      const p = plugin();
      const { vol, staging } = await stagedBlock(p, 'outside');
      const cases: Array<[string, RegExp]> = [
        ['/', /outside the kubelet directory/],
        ['/etc/loopsnap-target', /outside the kubelet directory/],
        [decoys.emptyDir, /outside the kubelet directory/],
        [p.dir, /the kubelet directory itself/],
        ['relative/target', /not absolute/],
        [`${p.dir}/kubelet/../../etc`, /\.\./],
        [join(p.stateDir, 'fuse', 'x'), /state directory/],
        ['/proc/self/cwd', /outside the kubelet directory/],
      ];
      for (const [target, reason] of cases) {
        const f = await failure(
          call(p.clients.node, 'NodePublishVolume', {
            volume_id: vol,
            staging_target_path: staging,
            target_path: target,
            volume_capability: capability('block'),
          }),
        );
        expect(f.code, target).toBe(INVALID);
        expect(f.details, target).toMatch(reason);
        const st = await failure(
          call(p.clients.node, 'NodeStageVolume', {
            volume_id: vol,
            staging_target_path: target,
            volume_capability: capability('block'),
          }),
        );
        expect(st.code, target).toBe(INVALID);
      }
      expect(await exists('/etc/loopsnap-target')).toBe(false);
      expect(await decoys.digest()).toBe(before);
      await call(p.clients.node, 'NodeUnstageVolume', { volume_id: vol, staging_target_path: staging });
      await call(p.clients.controller, 'DeleteVolume', { volume_id: vol });
    },
  );

  it.skipIf(!isRoot)(
    '3-6 a staging path under /proc, or through a symlink to /proc, is refused at once and leaves no loop device',
    async () => {
      const p = plugin();
      const vol = await createVolume(p, 'proc', 'mount', 16 * MiB);
      await mkdir(kubelet(p, 'proc'), { recursive: true });
      const procLink = kubelet(p, 'proc', 'proc');
      await symlink('/proc/self', procLink);
      const loops = await loopsOf(p);
      for (const path of ['/proc/self/fdinfo/x', join(procLink, 'fdinfo', 'x')]) {
        const t0 = Date.now();
        const f = await failure(
          call(p.clients.node, 'NodeStageVolume', {
            volume_id: vol,
            staging_target_path: path,
            volume_capability: capability('mount'),
          }),
        );
        expect(f.code, path).toBe(INVALID);
        expect(Date.now() - t0).toBeLessThan(2000);
      }
      expect(await loopsOf(p)).toEqual(loops);
      const probe = await call<{ ready: { value: boolean } }>(p.clients.identity, 'Probe');
      expect(probe.ready.value).toBe(true);
      await call(p.clients.controller, 'DeleteVolume', { volume_id: vol });
    },
  );
});

describe('3-7 a hung mount on the path (root: a FUSE file system that never answers)', () => {
  let p: PluginProcess | undefined;

  afterAll(async () => {
    if (p) await cleanupDir(p.dir);
  });

  it.skipIf(!isRoot)(
    '3-7 NodeStage into it is DEADLINE_EXCEEDED after --path-timeout-seconds; the lock is free, no loop device is left, SIGTERM completes',
    async () => {
      p = await PluginProcess.start({ extraArgs: ['--path-timeout-seconds', '2'] });
      const hungDir = join(p.dir, 'kubelet', 'hung');
      const hung = await hungFuse(hungDir);
      try {
        const vol = await createVolume(p, 'hung', 'mount', 16 * MiB);
        const loops = await loopsOf(p);
        const t0 = Date.now();
        const f = await failure(
          call(p.clients.node, 'NodeStageVolume', {
            volume_id: vol,
            staging_target_path: join(hungDir, 'staging'),
            volume_capability: capability('mount'),
          }),
        );
        const took = Date.now() - t0;
        expect(f).toMatchObject({ code: status.DEADLINE_EXCEEDED, errorCode: 'CSI_ERR_PATH_TIMEOUT' });
        expect(took).toBeGreaterThanOrEqual(1900);
        expect(took).toBeLessThan(10_000);
        expect(await loopsOf(p)).toEqual(loops);
        // The volume lock was released: the same volume stages at a good path at once.
        const staging = join(p.dir, 'kubelet', 'good', 'staging');
        await mkdir(staging, { recursive: true });
        await call(p.clients.node, 'NodeStageVolume', {
          volume_id: vol,
          staging_target_path: staging,
          volume_capability: capability('mount'),
        });
        const probe = await call<{ ready: { value: boolean } }>(p.clients.identity, 'Probe');
        expect(probe.ready.value).toBe(true);
        // SIGTERM finishes while the hung call still sits in the kernel.
        expect(await p.stop()).toBe(0);
      } finally {
        await hung.close();
      }
    },
  );
});
