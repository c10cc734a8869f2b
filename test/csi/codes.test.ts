// SPDX-License-Identifier: Apache-2.0
// Issue 15 finding 4, through a real node plugin: bad mount flags are INVALID_ARGUMENT (nothing attached),
// ENOSPC is RESOURCE_EXHAUSTED (a full kubelet file system, a full state directory), capacities are int64
// (a valid size above 2^53 is OUT_OF_RANGE with its exact value, never "invalid"), and an unpublish of a
// target that something wrote into says what is in the way and succeeds once it is gone.
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { status } from '@grpc/grpc-js';
import { afterAll, describe, expect, it } from 'vitest';
import { codesOf, failure } from './hostile.js';
import { call, cleanupDir, isRoot, leftoversUnder, MiB, PluginProcess, usePlugin } from './plugin.js';
import { capability, createVolume, type CsiVolumeResponse } from './volumes.js';

const execFileP = promisify(execFile);

const TWO_63_MINUS_1 = ((1n << 63n) - 1n).toString();
const TWO_60 = (1n << 60n).toString();
const TWO_53_PLUS_1 = ((1n << 53n) + 1n).toString();

async function loopsOf(p: PluginProcess): Promise<string[]> {
  return (await leftoversUnder(p.dir)).filter((l) => l.startsWith('loop '));
}

describe('4 error codes (root: loop devices, FUSE, mounts)', () => {
  const plugin = usePlugin();

  it.skipIf(!isRoot)(
    '4-1 bad mount flags, alone or together, are INVALID_ARGUMENT and attach nothing; good ones stage',
    async () => {
      const p = plugin();
      const vol = await createVolume(p, 'flags', 'mount', 16 * MiB);
      const staging = join(p.dir, 'kubelet', 'flags', 'staging');
      await mkdir(staging, { recursive: true });
      const loops = await loopsOf(p);
      const cases: Array<[string[], RegExp]> = [
        [['foo'], /refused by ext4: .*Unknown parameter 'foo'/],
        [['errors=bogus'], /refused by ext4: .*Bad value for 'errors'/],
        [['noatime,foo'], /comma/],
        [['bind'], /reserved/],
        [['loop'], /reserved/],
        [['X-mount.mkdir'], /reserved/],
        [['has space'], /characters/],
        // Each accepted by ext4's option parser; refused only when the superblock is built, and then together.
        [['journal_async_commit'], /refused together by ext4/],
        [['data=journal', 'delalloc'], /refused together by ext4/],
        [[''], /empty/],
      ];
      for (const [flags, reason] of cases) {
        const f = await failure(
          call(p.clients.node, 'NodeStageVolume', {
            volume_id: vol,
            staging_target_path: staging,
            volume_capability: {
              mount: { fs_type: 'ext4', mount_flags: flags },
              access_mode: { mode: 'SINGLE_NODE_WRITER' },
            },
          }),
        );
        expect(f, flags.join(' ')).toMatchObject({
          code: status.INVALID_ARGUMENT,
          errorCode: 'CSI_ERR_BAD_MOUNT_FLAGS',
        });
        expect(f.details, flags.join(' ')).toMatch(reason);
        expect(await loopsOf(p)).toEqual(loops);
      }
      await call(p.clients.node, 'NodeStageVolume', {
        volume_id: vol,
        staging_target_path: staging,
        volume_capability: {
          mount: { fs_type: 'ext4', mount_flags: ['noatime', 'errors=remount-ro', 'discard'] },
          access_mode: { mode: 'SINGLE_NODE_WRITER' },
        },
      });
      const opts = (await execFileP('findmnt', ['-n', '-o', 'OPTIONS', staging])).stdout;
      expect(opts).toMatch(/noatime/);
      await call(p.clients.node, 'NodeUnstageVolume', { volume_id: vol, staging_target_path: staging });
      await call(p.clients.controller, 'DeleteVolume', { volume_id: vol });
    },
  );

  it.skipIf(!isRoot)(
    '4-3 capacities are int64: above 2^53 is OUT_OF_RANGE with the exact value, 2^63-1 as a limit is fine, negatives are INVALID_ARGUMENT',
    async () => {
      const p = plugin();
      for (const big of [TWO_60, TWO_53_PLUS_1, TWO_63_MINUS_1]) {
        const f = await failure(
          call(p.clients.controller, 'CreateVolume', {
            name: `big-${big}`,
            capacity_range: { required_bytes: big },
            volume_capabilities: [capability('block')],
          }),
        );
        expect(f, big).toMatchObject({ code: status.OUT_OF_RANGE, errorCode: 'CSI_ERR_CAPACITY' });
        expect(f.details).toContain(big);
      }
      const r = await call<CsiVolumeResponse>(p.clients.controller, 'CreateVolume', {
        name: 'limit-max',
        capacity_range: { required_bytes: String(4 * MiB), limit_bytes: TWO_63_MINUS_1 },
        volume_capabilities: [capability('block')],
      });
      expect(r.volume.capacity_bytes).toBe(String(4 * MiB));
      const vol = r.volume.volume_id;
      const neg = await failure(
        call(p.clients.controller, 'CreateVolume', {
          name: 'negative',
          capacity_range: { required_bytes: '-4096' },
          volume_capabilities: [capability('block')],
        }),
      );
      expect(neg).toMatchObject({ code: status.INVALID_ARGUMENT });
      const grow = await failure(
        call(p.clients.controller, 'ControllerExpandVolume', {
          volume_id: vol,
          capacity_range: { required_bytes: TWO_60 },
          volume_capability: capability('block'),
        }),
      );
      expect(grow).toMatchObject({ code: status.OUT_OF_RANGE });
      expect(grow.details).toContain(TWO_60);
      // Not a multiple of the block size: rounded up.
      const odd = await call<CsiVolumeResponse>(p.clients.controller, 'CreateVolume', {
        name: 'odd',
        capacity_range: { required_bytes: String(4 * MiB + 1) },
        volume_capabilities: [capability('block')],
      });
      expect(odd.volume.capacity_bytes).toBe(String(4 * MiB + 4096));
      const staging = join(p.dir, 'kubelet', 'big', 'staging');
      await mkdir(staging, { recursive: true });
      await call(p.clients.node, 'NodeStageVolume', {
        volume_id: vol,
        staging_target_path: staging,
        volume_capability: capability('block'),
      });
      const ne = await failure(
        call(p.clients.node, 'NodeExpandVolume', {
          volume_id: vol,
          volume_path: staging,
          capacity_range: { required_bytes: TWO_60 },
        }),
      );
      expect(ne).toMatchObject({ code: status.OUT_OF_RANGE, errorCode: 'CSI_ERR_CAPACITY' });
      expect(ne.details).toContain(TWO_60);
      await call(p.clients.node, 'NodeUnstageVolume', { volume_id: vol, staging_target_path: staging });
      for (const v of [vol, odd.volume.volume_id]) await call(p.clients.controller, 'DeleteVolume', { volume_id: v });
    },
  );

  it.skipIf(!isRoot)(
    '4-4 NodeUnpublish of a target something wrote into names what is in the way, keeps it, and succeeds once it is gone',
    async () => {
      const p = plugin();
      const vol = await createVolume(p, 'in-the-way', 'mount', 16 * MiB);
      const base = join(p.dir, 'kubelet', 'in-the-way');
      const staging = join(base, 'staging');
      const target = join(base, 'target');
      await mkdir(staging, { recursive: true });
      const cap = capability('mount');
      await call(p.clients.node, 'NodeStageVolume', {
        volume_id: vol,
        staging_target_path: staging,
        volume_capability: cap,
      });
      await call(p.clients.node, 'NodePublishVolume', {
        volume_id: vol,
        staging_target_path: staging,
        target_path: target,
        volume_capability: cap,
      });
      // The bind goes away behind the plugin's back (as after a crash) and a writer fills the bare directory.
      await execFileP('umount', [target]);
      await writeFile(join(target, 'written-while-unmounted.log'), 'x');
      for (let i = 0; i < 2; i++) {
        const f = await failure(call(p.clients.node, 'NodeUnpublishVolume', { volume_id: vol, target_path: target }));
        expect(f).toMatchObject({ code: status.FAILED_PRECONDITION, errorCode: 'CSI_ERR_TARGET_NOT_EMPTY' });
        expect(f.details).toContain('written-while-unmounted.log');
        expect(f.details).toContain(target);
      }
      expect(await readdir(target)).toEqual(['written-while-unmounted.log']);
      // The volume itself counts as unpublished: it can be unstaged meanwhile.
      await call(p.clients.node, 'NodeUnstageVolume', { volume_id: vol, staging_target_path: staging });
      await rm(join(target, 'written-while-unmounted.log'));
      await call(p.clients.node, 'NodeUnpublishVolume', { volume_id: vol, target_path: target });
      await expect(stat(target)).rejects.toMatchObject({ code: 'ENOENT' });
      await call(p.clients.controller, 'DeleteVolume', { volume_id: vol });
    },
  );
});

describe('4-2 ENOSPC is RESOURCE_EXHAUSTED (root: small tmpfs file systems)', () => {
  const dirs: string[] = [];
  const plugins: PluginProcess[] = [];

  afterAll(async () => {
    for (const p of plugins) await p.stop();
    for (const d of dirs) await cleanupDir(d);
  });

  /** Uses up the inodes of `dir`'s (small) file system. */
  async function fill(dir: string): Promise<void> {
    for (let i = 0; ; i++) {
      const ok = await writeFile(join(dir, `fill-${i}`), '').then(
        () => true,
        () => false,
      );
      if (!ok) break;
    }
  }

  it.skipIf(!isRoot)('4-2a NodePublish on a kubelet file system without free inodes', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'loopsnap-csi-'));
    dirs.push(dir);
    const k = join(dir, 'kubelet');
    await mkdir(k);
    await execFileP('mount', ['-t', 'tmpfs', '-o', 'size=64m,nr_inodes=64', 'loopsnap-test', k]);
    const p = await PluginProcess.start({ dir, extraArgs: ['--kubelet-dir', k] });
    plugins.push(p);
    const vol = await createVolume(p, 'no-inodes', 'mount', 16 * MiB);
    const staging = join(k, 'staging');
    await mkdir(staging);
    const cap = capability('mount');
    await call(p.clients.node, 'NodeStageVolume', {
      volume_id: vol,
      staging_target_path: staging,
      volume_capability: cap,
    });
    await fill(k);
    const f = await failure(
      call(p.clients.node, 'NodePublishVolume', {
        volume_id: vol,
        staging_target_path: staging,
        target_path: join(k, 'target'),
        volume_capability: cap,
      }),
    );
    expect(f).toMatchObject({ code: status.RESOURCE_EXHAUSTED, errorCode: 'CSI_ERR_NO_SPACE' });
    expect(f.details).toContain(join(k, 'target'));
    await call(p.clients.node, 'NodeUnstageVolume', { volume_id: vol, staging_target_path: staging });
  });

  it.skipIf(!isRoot)('4-2b CreateVolume with the state directory full', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'loopsnap-csi-'));
    dirs.push(dir);
    const state = join(dir, 'state');
    await mkdir(state);
    await execFileP('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'loopsnap-test', state]);
    const p = await PluginProcess.start({ dir });
    plugins.push(p);
    await createVolume(p, 'first', 'block', 4 * MiB);
    // Everything left goes to one file.
    await execFileP('sh', ['-c', `dd if=/dev/zero of=${join(state, 'filler')} bs=4k 2>/dev/null; true`]);
    // The state dir keeps a space reserve for deletes (finding 2), given back at the first ENOSPC: creates go
    // on until that is used up too, and the first one refused must be RESOURCE_EXHAUSTED, never INTERNAL.
    let f: Awaited<ReturnType<typeof failure>> | undefined;
    for (let i = 0; i < 200 && !f; i++) {
      f = await call(p.clients.controller, 'CreateVolume', {
        name: `more-${i}`,
        capacity_range: { required_bytes: String(4 * MiB) },
        volume_capabilities: [capability('block')],
      }).then(
        () => undefined,
        (e: unknown) => codesOf(e),
      );
    }
    if (!f) throw new Error('200 volumes fit on a full 64 MiB state dir');
    expect(f.code, f.details).toBe(status.RESOURCE_EXHAUSTED);
    const probe = await call<{ ready: { value: boolean } }>(p.clients.identity, 'Probe');
    expect(probe.ready.value).toBe(true);
  });
});
