// SPDX-License-Identifier: Apache-2.0
// Volumes outlive the node plugin (ADR 0011): the plugin runs under its keeper (--keeper) with ext4, xfs
// and raw block volumes staged and published, one record writer each (O_DIRECT|O_DSYNC, every acknowledged
// record logged, any error fatal). The server is killed with SIGKILL at random moments (during writes, a
// snapshot cut, a background copy, a delete) and the plugin is upgraded by the handover path (a second
// keeper on the same state dir, then SIGTERM to the first), repeatedly. Afterwards: the writers saw no
// error, every acknowledged record is intact, snapshots read back byte for byte as they were cut, loop
// devices and mounts are the same ones, and NodeStage/NodePublish of the live volumes answer OK.
import { createHash, randomInt } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { acceptUnix, closeFd, listenUnix, waitReadable } from '../../csi/src/keeper/fd-passing.js';
import { keeperSocketPath } from '../../csi/src/keeper/keeper-protocol.js';
import { REPO_ROOT } from '../support/paths.js';
import { RecordWriter } from '../support/record-writers.js';
import { call, cleanupDir, isRoot, leftoversUnder, MiB, PluginProcess } from './plugin.js';
import { capability, createSnapshot, createVolume, type Published, stageAndPublish } from './volumes.js';

const execFileP = promisify(execFile);
const KILLS = 20;
const UPGRADES = 20;
const SLOTS = 256;

interface Setup {
  published: (Published & { fs: string })[];
  writers: RecordWriter[];
}

/** The server's pid (the keeper's child) from the newest "Started node plugin" line of `p`. */
function serverPid(p: PluginProcess): number {
  const l = p.logs('Started node plugin').at(-1);
  if (typeof l?.pid !== 'number') throw new Error('no server start logged');
  return l.pid;
}

/** Waits until `p` logged `msg` at least `n` times (the plugin's own log, no sleeps). */
async function logged(p: PluginProcess, msg: string, n: number, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (p.logs(msg).length < n) {
    if (Date.now() > deadline) throw new Error(`"${msg}" logged ${p.logs(msg).length}/${n} times`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Mounts and loop devices under the plugin's dir, as "major:minor mountpoint" and "device file". */
async function dataPathOf(dir: string): Promise<string[]> {
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  const mounts = info
    .split('\n')
    .map((l) => l.split(' '))
    .filter((f) => (f[4] ?? '').startsWith(`${dir}/`))
    .map((f) => `${f[2]} ${f[4]}`);
  const loops = (await execFileP('losetup', ['-l', '-n', '-O', 'NAME,BACK-FILE'])).stdout
    .split('\n')
    .filter((l) => l.includes(`${dir}/`))
    .map((l) => l.trim());
  return [...mounts, ...loops].sort();
}

async function startWorkload(p: PluginProcess): Promise<Setup> {
  const published: Setup['published'] = [];
  for (const [name, type, fs] of [
    ['k-ext4', 'mount', 'ext4'],
    ['k-xfs', 'mount', 'xfs'],
    ['k-block', 'block', ''],
  ] as const) {
    const id = await createVolume(p, name, type, (type === 'mount' && fs === 'xfs' ? 320 : 64) * MiB, {}, fs);
    published.push({ ...(await stageAndPublish(p, id, type, fs)), fs });
  }
  const writers = published.map((v) =>
    v.type === 'block'
      ? RecordWriter.start(v.targetPath, SLOTS)
      : RecordWriter.start(join(v.targetPath, 'records'), SLOTS, SLOTS * 4096),
  );
  await Promise.all(writers.map((w) => w.more(32)));
  return { published, writers };
}

async function finish(s: Setup): Promise<void> {
  const codes = await Promise.all(s.writers.map((w) => w.stop()));
  expect(s.writers.map((w) => w.error ?? 'no error')).toEqual(s.writers.map(() => 'no error'));
  expect(codes).toEqual(s.writers.map(() => 0));
  for (const w of s.writers) expect(await w.verify()).toEqual([]);
}

/** NodeStage and NodePublish again, as the kubelet does after a restart: both are idempotent OKs. */
async function restageAll(p: PluginProcess, s: Setup): Promise<void> {
  for (const v of s.published) {
    const fs = v.fs;
    await call(p.clients.node, 'NodeStageVolume', {
      volume_id: v.volumeId,
      staging_target_path: v.stagingPath,
      volume_capability: capability(v.type, 'SINGLE_NODE_WRITER', fs),
    });
    await call(p.clients.node, 'NodePublishVolume', {
      volume_id: v.volumeId,
      staging_target_path: v.stagingPath,
      target_path: v.targetPath,
      volume_capability: capability(v.type, 'SINGLE_NODE_WRITER', fs),
    });
  }
}

async function snapshotDigest(p: PluginProcess, volumeId: string, snapshotId: string): Promise<string> {
  const r = await call<{ volume: { volume_id: string } }>(p.clients.controller, 'CreateVolume', {
    name: `digest-${snapshotId.slice(-12)}-${randomInt(1e9)}`,
    capacity_range: { required_bytes: String(64 * MiB) },
    volume_capabilities: [capability('block')],
    volume_content_source: { snapshot: { snapshot_id: snapshotId } },
  });
  const v = await stageAndPublish(p, r.volume.volume_id, 'block');
  const data = await readFile(v.targetPath);
  await call(p.clients.node, 'NodeUnpublishVolume', { volume_id: v.volumeId, target_path: v.targetPath });
  await call(p.clients.node, 'NodeUnstageVolume', { volume_id: v.volumeId, staging_target_path: v.stagingPath });
  await call(p.clients.controller, 'DeleteVolume', { volume_id: v.volumeId });
  void volumeId;
  return createHash('sha256').update(data).digest('hex');
}

describe('volumes outlive the node plugin (root: loop devices, FUSE, mounts; ADR 0011)', () => {
  const plugins: PluginProcess[] = [];
  let setup: Setup | undefined;
  let dir: string | undefined;

  afterEach(async (ctx) => {
    for (const w of setup?.writers ?? []) w.kill();
    setup = undefined;
    // Every plugin's log, for the failure at hand: .loopsnap/test-logs/keeper/<test>-<n>.log
    const logDir = join(REPO_ROOT, '.loopsnap', 'test-logs', 'keeper');
    await mkdir(logDir, { recursive: true });
    const tag = ctx.task.name.split(' ')[0];
    for (const [i, p] of plugins.entries()) {
      await writeFile(join(logDir, `${tag}-${i}.log`), p.lines.map((l) => JSON.stringify(l)).join('\n'));
    }
    for (const p of plugins.splice(0)) if (!p.exited) await p.kill9();
    if (dir) await cleanupDir(dir);
    dir = undefined;
  });

  it.skipIf(!isRoot)(
    `14-1 SIGKILL of the server ${KILLS} times at random moments: no writer error, every record intact`,
    async () => {
      const p = await PluginProcess.start({ extraArgs: ['--keeper'] });
      plugins.push(p);
      dir = p.dir;
      setup = await startWorkload(p);
      const before = await dataPathOf(p.dir);
      const blockVol = setup.published.find((v) => v.type === 'block')!.volumeId;
      const ext4Vol = setup.published[0]!.volumeId;
      const snap = await createSnapshot(p, 'k-stable', blockVol);
      const stableDigest = await snapshotDigest(p, blockVol, snap.snapshot_id);
      const pauses: number[] = [];
      for (let i = 0; i < KILLS; i++) {
        const moment = i % 4;
        // During writes (0), during a snapshot cut of ext4 (1), during a background copy (2), during a delete (3).
        const busy =
          moment === 1
            ? createSnapshot(p, `k-cut-${i}`, ext4Vol).catch(() => undefined) // fsfreeze inside
            : moment === 2
              ? createSnapshot(p, `k-img-${i}`, blockVol, { method: 'clone' }).catch(() => undefined)
              : moment === 3
                ? createSnapshot(p, `k-del-${i}`, blockVol)
                    .then((s) => call(p.clients.controller, 'DeleteSnapshot', { snapshot_id: s.snapshot_id }))
                    .catch(() => undefined)
                : Promise.resolve();
        if (moment !== 0) await new Promise((r) => setTimeout(r, randomInt(0, 40)));
        const starts = p.logs('Started node plugin').length;
        const killedAt = performance.now();
        process.kill(serverPid(p), 'SIGKILL');
        await logged(p, 'Started node plugin', starts + 1);
        await busy;
        p.reconnect();
        await Promise.all(setup.writers.map((w) => w.more(8)));
        pauses.push(performance.now() - killedAt);
      }
      await restageAll(p, setup);
      expect(await dataPathOf(p.dir)).toEqual(before);
      expect(await snapshotDigest(p, blockVol, snap.snapshot_id)).toBe(stableDigest);
      await finish(setup);
      expect(p.logs('Took over the data path of the previous process')).toHaveLength(KILLS);
      expect(Math.max(...pauses)).toBeLessThan(30_000);
    },
    900_000,
  );

  it.skipIf(!isRoot)('14-3 a server whose keeper was killed releases the data path and exits (no orphan)', async () => {
    const p = await PluginProcess.start({ extraArgs: ['--keeper'] });
    plugins.push(p);
    dir = p.dir;
    await logged(p, 'Started the node plugin server', 2); // the active server and its spare
    const pids = p.logs('Started the node plugin server').map((l) => l.pid as number);
    await p.kill9();
    const alive = (pid: number): boolean => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    const deadline = Date.now() + 60_000;
    while (pids.some(alive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(pids.filter(alive)).toEqual([]);
  });

  it.skipIf(!isRoot)(
    '14-4 SIGTERM with no successor stops for good: exit 0, no mount or loop device left',
    async () => {
      const p = await PluginProcess.start({ extraArgs: ['--keeper'] });
      plugins.push(p);
      dir = p.dir;
      const id = await createVolume(p, 'k-final', 'mount', 64 * MiB, {}, 'ext4');
      await stageAndPublish(p, id, 'mount', 'ext4');
      expect((await leftoversUnder(p.dir)).length).toBeGreaterThan(0);
      expect(await p.stop()).toBe(0);
      expect(p.logs('Stopped node plugin')).toHaveLength(1);
      expect(await leftoversUnder(p.dir)).toEqual([]);
    },
  );

  it.skipIf(!isRoot)(
    '14-5 a predecessor that closes the handover unanswered: the keeper asks again, then starts',
    async () => {
      dir = await mkdtemp(join(tmpdir(), 'loopsnap-csi-'));
      const stateDir = join(dir, 'state');
      await mkdir(stateDir, { recursive: true, mode: 0o700 });
      // A dying predecessor: it accepts the first handover and closes it without a word, then goes away.
      const listener = listenUnix(keeperSocketPath(stateDir));
      const closedOne = (async () => {
        while (!(await waitReadable(listener, 60_000))) {
          /* wait */
        }
        const conn = acceptUnix(listener);
        if (conn !== undefined) closeFd(conn);
        closeFd(listener);
      })();
      const p = await PluginProcess.start({ dir, extraArgs: ['--keeper'] });
      plugins.push(p);
      await closedOne;
      expect(p.logs('The predecessor closed the handover without answering; asking again').length).toBeGreaterThan(0);
      expect(p.logs('Started node plugin').at(-1)?.adopted).toBe(false);
      expect(await call(p.clients.identity, 'Probe')).toBeDefined();
    },
  );

  it.skipIf(!isRoot)(
    `14-2 ${UPGRADES} upgrades by handover (new keeper, then SIGTERM to the old): no writer error, same mounts`,
    async () => {
      let p = await PluginProcess.start({ extraArgs: ['--keeper'] });
      plugins.push(p);
      dir = p.dir;
      setup = await startWorkload(p);
      const before = await dataPathOf(p.dir);
      for (let i = 0; i < UPGRADES; i++) {
        const next = await PluginProcess.start({ dir: p.dir, extraArgs: ['--keeper'] });
        plugins.push(next);
        await logged(p, 'Handed the data path to the successor; retired until the pod stops', 1);
        expect(await p.stop()).toBe(0);
        p = next;
        await Promise.all(setup.writers.map((w) => w.more(8)));
      }
      await restageAll(p, setup);
      expect(await dataPathOf(p.dir)).toEqual(before);
      await finish(setup);
    },
    900_000,
  );
});
