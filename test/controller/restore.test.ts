// SPDX-License-Identifier: Apache-2.0
// VolumeRestore and VolumeRefresh end to end: kubectl objects on the real control plane, two real node plugins
// (engine, FUSE, loop devices, ext4 and raw block) and the controller as a child process; data checked with
// checksums through the kubelet stand-in's NodeStage/NodePublish.
import { constants } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { open, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readAt, sha256, writeDurable, writeFiles } from '../csi/volumes.js';
import { useCluster } from '../support/cluster.js';
import { EXAMPLES, LoopsnapEnv } from '../support/loopsnap-env.js';
import { isRoot } from '../support/node-plugin.js';
import { waitFor } from '../support/wait.js';

type Condition = { type: string; status: string; reason: string; message: string };
type Obj = {
  metadata: { name: string; uid: string; finalizers?: string[]; deletionTimestamp?: string };
  spec: Record<string, unknown> & { volumeName?: string; csi?: { volumeHandle: string } };
  status?: Record<string, unknown> & {
    phase?: string;
    readyToUse?: boolean;
    progress?: string;
    blocksDone?: number;
    blocksTotal?: number;
    restorePointSnapshot?: string;
    startTime?: string;
    completionTime?: string;
    operationId?: string;
    nodeName?: string;
    volumeHandle?: string;
    message?: string;
    conditions?: Condition[];
  };
};

/** sha256 of every regular file in a directory (lost+found skipped). */
async function dirSums(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const e of await readdir(dir, { withFileTypes: true })) {
    if (e.isFile()) out[e.name] = sha256(await readFile(join(dir, e.name)));
  }
  return out;
}

describe.skipIf(!isRoot)(
  'VolumeRestore / VolumeRefresh end to end (root: two node plugins, loop devices, FUSE)',
  () => {
    const cluster = useCluster('ctl-restore');
    let env: LoopsnapEnv;
    let ns = '';
    const get = (path: string) => env.rest.get<Obj>(path).catch(() => undefined);
    const pvc = (name: string) => get(`/api/v1/namespaces/${ns}/persistentvolumeclaims/${name}`);
    const vs = (name: string) => get(`/apis/snapshot.storage.k8s.io/v1/namespaces/${ns}/volumesnapshots/${name}`);
    const vr = (name: string) => get(`/apis/loopsnap.dev/v1alpha1/namespaces/${ns}/volumerestores/${name}`);
    const vrf = (name: string) => get(`/apis/loopsnap.dev/v1alpha1/namespaces/${ns}/volumerefreshes/${name}`);
    const bound = (name: string) =>
      waitFor(`PVC ${name} bound`, async () => ((await pvc(name))?.status?.phase === 'Bound' ? pvc(name) : undefined), {
        timeoutMs: 60_000,
      });
    const ready = (name: string) =>
      waitFor(
        `VolumeSnapshot ${name} ready`,
        async () => ((await vs(name))?.status?.readyToUse ? vs(name) : undefined),
        {
          timeoutMs: 60_000,
        },
      );
    const phase = (what: (n: string) => Promise<Obj | undefined>, name: string, want: string, timeoutMs = 120_000) =>
      waitFor(
        `${name} ${want}`,
        async () => {
          const o = await what(name);
          if (o?.status?.phase === want) return o;
          if (o?.status?.phase === 'Failed' && want !== 'Failed')
            throw new Error(`${name} failed: ${o.status.message}`);
          return undefined;
        },
        { timeoutMs },
      );
    const apply = (yaml: string) => env.kubectl(['apply', '-f', '-'], yaml);
    const pvcYaml = (name: string, size = '64Mi', mode = 'Filesystem') =>
      `apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: ${name}}\nspec: {storageClassName: loopsnap, volumeMode: ${mode}, accessModes: [ReadWriteOnce], resources: {requests: {storage: ${size}}}}\n`;
    const fromSnapYaml = (name: string, snap: string, size = '64Mi') =>
      `apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: ${name}}\nspec: {storageClassName: loopsnap, accessModes: [ReadWriteOnce], resources: {requests: {storage: ${size}}}, dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: ${snap}}}\n`;
    const snapYaml = (name: string, claim: string) =>
      `apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\nmetadata: {name: ${name}}\nspec: {volumeSnapshotClassName: loopsnap-save-volume, source: {persistentVolumeClaimName: ${claim}}}\n`;
    const restoreYaml = (name: string, claim: string, snap: string, keep = false) =>
      `apiVersion: loopsnap.dev/v1alpha1\nkind: VolumeRestore\nmetadata: {name: ${name}}\nspec: {pvcName: ${claim}, volumeSnapshotName: ${snap}, keepRestorePoint: ${keep}}\n`;
    const refreshYaml = (name: string, claim: string, source: string) =>
      `apiVersion: loopsnap.dev/v1alpha1\nkind: VolumeRefresh\nmetadata: {name: ${name}}\nspec: {pvcName: ${claim}, ${source}}\n`;
    const chunk = 32 << 20;
    const bigSums: string[] = [];
    const condition = (o: Obj | undefined, type: string) => o?.status?.conditions?.find((c) => c.type === type);

    beforeAll(async () => {
      env = await LoopsnapEnv.start(cluster, { nodes: ['node-a', 'node-b'] });
      ns = env.namespace;
    });
    afterAll(async () => {
      await env?.stop();
    });

    it('3-1 - restore in place: files equal the snapshot, other snapshots keep theirs, the restore point undoes it', async () => {
      env.kubectl(['apply', '-f', join(EXAMPLES, 'pvc.yaml')]);
      const claim = await bound('data');
      const pvBefore = await get(`/api/v1/persistentvolumes/${claim.spec.volumeName}`);
      let m = await env.kubelet.mount(ns, 'data');
      const gen1 = await writeFiles(m.targetPath, [1 << 20, 4096, 300_000]);
      env.kubectl(['apply', '-f', join(EXAMPLES, 'snapshot.yaml')]);
      await ready('data-snap');
      const gen2 = { ...gen1, ...(await writeFiles(m.targetPath, [200_000, 70_000])) };
      apply(snapYaml('s2', 'data'));
      await ready('s2');
      const gen3 = { ...gen2, ...(await writeFiles(m.targetPath, [500_000, 1000, 9000, 123_456])) };
      expect(await dirSums(m.targetPath)).toEqual(gen3);
      await env.kubelet.unmount(ns, 'data');

      env.kubectl(['apply', '-f', join(EXAMPLES, 'volumerestore.yaml')]);
      const done = await phase(vr, 'data-restore', 'Completed');
      expect(done.status).toMatchObject({
        nodeName: expect.any(String),
        volumeHandle: pvBefore?.spec.csi?.volumeHandle,
      });
      expect(done.status?.blocksTotal).toBeGreaterThan(0);
      expect(done.status?.progress).toBe(`${done.status?.blocksTotal}/${done.status?.blocksTotal}`);
      expect(Date.parse(done.status?.completionTime ?? '')).toBeGreaterThanOrEqual(
        Date.parse(done.status?.startTime ?? ''),
      );
      expect(condition(done, 'Complete')?.status).toBe('True');
      // Same PVC, PV and handle; the content is the snapshot's.
      const after = await pvc('data');
      expect(after?.spec.volumeName).toBe(claim.spec.volumeName);
      m = await env.kubelet.mount(ns, 'data');
      expect(await dirSums(m.targetPath)).toEqual(gen1);
      await env.kubelet.unmount(ns, 'data');
      // kubectl shows it.
      const row = env.kubectl(['get', 'volumerestore', 'data-restore', '--no-headers']).trim().split(/\s+/);
      expect(row.slice(0, 5)).toEqual(['data-restore', 'data', 'data-snap', 'Completed', done.status?.progress]);

      // The other snapshot still holds its content.
      apply(fromSnapYaml('from-s2', 's2'));
      await bound('from-s2');
      const r2 = await env.kubelet.mount(ns, 'from-s2');
      expect(await dirSums(r2.targetPath)).toEqual(gen2);
      await env.kubelet.unmount(ns, 'from-s2');

      // The restore point holds the pre-restore content; restoring it undoes the restore.
      const rpName = done.status?.restorePointSnapshot as string;
      expect(rpName).toBe('data-restore-restore-point');
      await ready(rpName);
      apply(restoreYaml('undo', 'data', rpName));
      await phase(vr, 'undo', 'Completed');
      m = await env.kubelet.mount(ns, 'data');
      expect(await dirSums(m.targetPath)).toEqual(gen3);
      await env.kubelet.unmount(ns, 'data');
    });

    it('3-2 - a mounted Filesystem volume is not restored under its file system: Pending (VolumeInUse) until unmounted', async () => {
      const m = await env.kubelet.mount(ns, 'data');
      const before = await dirSums(m.targetPath);
      apply(restoreYaml('while-mounted', 'data', 'data-snap'));
      const waiting = await waitFor('VolumeInUse', async () => {
        const o = await vr('while-mounted');
        return condition(o, 'Accepted')?.reason === 'VolumeInUse' ? o : undefined;
      });
      expect(waiting.status?.phase).toBe('Pending');
      expect(condition(waiting, 'Accepted')?.message).toMatch(
        /is staged with a mounted file system \(in use by a pod\)/,
      );
      // The mounted file system was left alone.
      expect(await dirSums(m.targetPath)).toEqual(before);
      await env.kubelet.unmount(ns, 'data');
      await phase(vr, 'while-mounted', 'Completed');
      const again = await env.kubelet.mount(ns, 'data');
      expect(Object.keys(await dirSums(again.targetPath)).sort()).toEqual(['file-0.bin', 'file-1.bin', 'file-2.bin']);
      await env.kubelet.unmount(ns, 'data');
    });

    it('3-3 - invalid requests: CEL rejects a bad spec; a snapshot outside the lineage and a second concurrent operation are refused with a clear condition', async () => {
      expect(() =>
        apply('apiVersion: loopsnap.dev/v1alpha1\nkind: VolumeRefresh\nmetadata: {name: bad}\nspec: {pvcName: data}\n'),
      ).toThrow(/set exactly one of volumeSnapshotName and fromSource=true/);
      apply(pvcYaml('other'));
      await bound('other');
      apply(snapYaml('other-snap', 'other'));
      await ready('other-snap');
      apply(restoreYaml('wrong-lineage', 'data', 'other-snap'));
      const failed = await phase(vr, 'wrong-lineage', 'Failed');
      expect(condition(failed, 'Failed')?.reason).toBe('NotInLineage');
      // Refused by the node (same node: the lineage does not contain the snapshot's volume) or by the controller
      // (the snapshot is held by the other node).
      expect(failed.status?.message).toMatch(
        /is neither volume .* nor a volume it was made from|not of this volume's lineage/,
      );
      // Two restores of one PVC at once: the second is refused and names the first.
      apply(restoreYaml('first', 'data', 's2') + '---\n' + restoreYaml('second', 'data', 'data-snap'));
      const second = await phase(vr, 'second', 'Failed');
      expect(condition(second, 'Failed')?.reason).toBe('ConcurrentOperation');
      expect(second.status?.message).toMatch(/VolumeRestore first is already working on PersistentVolumeClaim data/);
      await phase(vr, 'first', 'Completed');
      const evs = await env.rest.get<{
        items: Array<{ reason: string; involvedObject: { name: string; kind: string } }>;
      }>(`/api/v1/namespaces/${ns}/events`);
      expect(evs.items.some((e) => e.involvedObject.kind === 'VolumeRestore' && e.reason === 'NotInLineage')).toBe(
        true,
      );
    });

    it('3-4 - refresh onto a newer snapshot and onto the source: same PVC, PV and handle, the new data', async () => {
      apply(pvcYaml('prod'));
      await bound('prod');
      const p = await env.kubelet.mount(ns, 'prod');
      await writeFiles(p.targetPath, [100_000, 5000]);
      apply(snapYaml('prod-1', 'prod'));
      await ready('prod-1');
      apply(fromSnapYaml('dev', 'prod-1'));
      const dev = await bound('dev');
      const handle = (await get(`/api/v1/persistentvolumes/${dev.spec.volumeName}`))?.spec.csi?.volumeHandle;
      const d = await env.kubelet.mount(ns, 'dev');
      await writeFiles(d.targetPath, [77_777, 1, 2, 3]);
      await env.kubelet.unmount(ns, 'dev');
      const prod2 = await writeFiles(p.targetPath, [222_222, 6000]);
      apply(snapYaml('prod-2', 'prod'));
      await ready('prod-2');
      apply(refreshYaml('dev-refresh', 'dev', 'volumeSnapshotName: prod-2'));
      await phase(vrf, 'dev-refresh', 'Completed');
      const dev2 = await pvc('dev');
      expect(dev2?.spec.volumeName).toBe(dev.spec.volumeName);
      expect((await get(`/api/v1/persistentvolumes/${dev.spec.volumeName}`))?.spec.csi?.volumeHandle).toBe(handle);
      let dm = await env.kubelet.mount(ns, 'dev');
      expect(await dirSums(dm.targetPath)).toEqual(prod2);
      await env.kubelet.unmount(ns, 'dev');
      // From the source: prod keeps changing (and stays mounted: the node cuts a frozen snapshot of it).
      const prod3 = { ...prod2, ...(await writeFiles(p.targetPath, [333_333, 7, 8])) };
      env.kubectl(['apply', '-f', join(EXAMPLES, 'volumerefresh.yaml')]);
      const done = await phase(vrf, 'dev-refresh-from-source', 'Completed');
      expect(done.status?.sourceSnapshot).toMatch(/^source:snap-/);
      dm = await env.kubelet.mount(ns, 'dev');
      expect(await dirSums(dm.targetPath)).toEqual(prod3);
      await env.kubelet.unmount(ns, 'dev');
      // A refresh of a volume not made from anything is refused.
      apply(refreshYaml('prod-refresh', 'prod', 'fromSource: true'));
      const refused = await phase(vrf, 'prod-refresh', 'Failed');
      expect(refused.status?.message).toMatch(/was not created from a snapshot or a volume/);
    });

    it('3-5 - raw block volume: restore gives back the snapshot bytes; blocks written after the snapshot read as before', async () => {
      apply(pvcYaml('blk', '64Mi', 'Block'));
      await bound('blk');
      let m = await env.kubelet.mount(ns, 'blk');
      const a = randomBytes(3 << 20);
      await writeDurable(m.targetPath, 0, a);
      apply(snapYaml('blk-s', 'blk'));
      await ready('blk-s');
      const b = randomBytes(1 << 20);
      await writeDurable(m.targetPath, 1 << 20, b);
      await writeDurable(m.targetPath, 40 << 20, randomBytes(2 << 20));
      await env.kubelet.unmount(ns, 'blk');
      apply(restoreYaml('blk-r', 'blk', 'blk-s'));
      await phase(vr, 'blk-r', 'Completed');
      m = await env.kubelet.mount(ns, 'blk');
      expect(sha256(await readAt(m.targetPath, 0, a.length))).toBe(sha256(a));
      expect((await readAt(m.targetPath, 40 << 20, 2 << 20)).every((x) => x === 0)).toBe(true);
      await env.kubelet.unmount(ns, 'blk');
    });

    it('3-6 - metrics: restores counted and timed on the controller', async () => {
      const leader = await env.leader();
      const metrics = (await leader.http('/metrics'))?.body ?? '';
      expect(metrics).toMatch(/loopsnap_restores_total\{kind="restore",result="completed"\} [1-9]/);
      expect(metrics).toMatch(/loopsnap_restore_duration_seconds_count\{kind="restore"\} [1-9]/);
      expect(metrics).toMatch(/loopsnap_restores_total\{kind="refresh",result="completed"\} [1-9]/);
    });

    it('3-7 - node plugin and controller killed mid-restore: the restore resumes after their restart and completes with the right content', async () => {
      apply(pvcYaml('big', '512Mi', 'Block'));
      await bound('big');
      let m = await env.kubelet.mount(ns, 'big');
      const sums = bigSums;
      for (let off = 0; off < 384 << 20; off += chunk) {
        const data = randomBytes(chunk);
        sums.push(sha256(data));
        await writeDurable(m.targetPath, off, data);
      }
      apply(snapYaml('big-s', 'big'));
      await ready('big-s');
      for (let off = 0; off < 384 << 20; off += chunk) await writeDurable(m.targetPath, off, randomBytes(chunk));
      await env.kubelet.unmount(ns, 'big');
      apply(restoreYaml('big-r', 'big', 'big-s'));
      const running = await phase(vr, 'big-r', 'Restoring', 60_000);
      const nodeId = running.status?.nodeName as string;
      const plugin = env.plugins.get(nodeId)!;
      await env.killPlugin(nodeId);
      const leader = await env.leader();
      await leader.kill9();
      const record = JSON.parse(
        await readFile(join(plugin.stateDir, 'csi', 'operations', `${running.status?.operationId}.json`), 'utf8'),
      ) as { state: string };
      expect(record.state).toBe('running');
      await env.startPlugin(nodeId);
      await env.startController();
      await env.waitNodesReady(['node-a', 'node-b']);
      const done = await phase(vr, 'big-r', 'Completed', 180_000);
      expect(done.status?.progress).toBe(`${done.status?.blocksTotal}/${done.status?.blocksTotal}`);
      m = await env.kubelet.mount(ns, 'big');
      for (let i = 0; i < sums.length; i++) {
        expect(sha256(await readAt(m.targetPath, i * chunk, chunk)), `chunk ${i}`).toBe(sums[i]);
      }
      await env.kubelet.unmount(ns, 'big');
    });

    it('3-8 - deleting a VolumeRestore while it copies: the copy finishes (DeletionDeferred), then the object goes', async () => {
      let m = await env.kubelet.mount(ns, 'big');
      for (let off = 0; off < 384 << 20; off += chunk) await writeDurable(m.targetPath, off, randomBytes(chunk));
      await env.kubelet.unmount(ns, 'big');
      apply(restoreYaml('big-r2', 'big', 'big-s'));
      await phase(vr, 'big-r2', 'Restoring', 60_000);
      env.kubectl(['delete', 'volumerestore', 'big-r2', '--wait=false']);
      const seen = await waitFor(
        'DeletionDeferred (or already gone)',
        async () => {
          const o = await vr('big-r2');
          if (!o) return 'gone';
          return condition(o, 'DeletionDeferred')?.status === 'True' ? 'deferred' : undefined;
        },
        { timeoutMs: 60_000, intervalMs: 50 },
      );
      await waitFor('deleted VolumeRestore gone', async () => (await vr('big-r2')) === undefined, {
        timeoutMs: 120_000,
      });
      expect(['deferred', 'gone']).toContain(seen);
      // The copy was not interrupted: the volume holds the snapshot's content.
      m = await env.kubelet.mount(ns, 'big');
      for (let i = 0; i < bigSums.length; i++) {
        expect(sha256(await readAt(m.targetPath, i * chunk, chunk)), `chunk ${i}`).toBe(bigSums[i]);
      }
      await env.kubelet.unmount(ns, 'big');
    });

    it('3-10 - raw block volume restored while attached and under a write load: reads see the snapshot at the switch, writes made after it stay', async () => {
      const MiB = 1 << 20;
      const restored = 160 * MiB; // the snapshot's data; the load writes into its last 8 MiB
      const loadStart = restored - 8 * MiB;
      const bs = 4096;
      apply(pvcYaml('live', '256Mi', 'Block'));
      await bound('live');
      const m = await env.kubelet.mount(ns, 'live');
      const snapData = randomBytes(restored);
      for (let off = 0; off < restored; off += chunk)
        await writeDurable(m.targetPath, off, snapData.subarray(off, off + chunk));
      apply(snapYaml('live-s', 'live'));
      await ready('live-s');
      for (let off = 0; off < restored; off += chunk) await writeDurable(m.targetPath, off, randomBytes(chunk));

      // The write load: 4 KiB O_DSYNC writes at random blocks of the load region, until told to stop.
      type Write = { startMs: number; endMs: number; data: Buffer };
      const writes = new Map<number, Write>();
      let stop = false;
      const fh = await open(m.targetPath, constants.O_RDWR | constants.O_DSYNC);
      const load = (async () => {
        try {
          while (!stop) {
            const block = Math.floor(Math.random() * ((restored - loadStart) / bs));
            const data = randomBytes(bs);
            const startMs = Date.now();
            await fh.write(data, 0, bs, loadStart + block * bs);
            writes.set(block, { startMs, endMs: Date.now(), data });
          }
        } finally {
          await fh.close();
        }
      })();
      try {
        await new Promise((r) => setTimeout(r, 500));
        const appliedMs = Date.now();
        apply(restoreYaml('live-r', 'live', 'live-s'));
        // The switch: the node records it once the volume reads the snapshot.
        const switched = await waitFor(
          'the online switch',
          async () => {
            const o = await vr('live-r');
            const id = o?.status?.operationId;
            const node = o?.status?.nodeName;
            if (!id || !node) return undefined;
            const file = join(env.plugins.get(node)!.stateDir, 'csi', 'operations', `${id}.json`);
            const rec = JSON.parse(await readFile(file, 'utf8').catch(() => '{}')) as {
              mode?: string;
              switchedAtMs?: number;
            };
            return (rec.switchedAtMs ?? 0) > 0 ? rec : undefined;
          },
          { timeoutMs: 60_000, intervalMs: 20 },
        );
        expect(switched.mode).toBe('online');
        const switchedAtMs = switched.switchedAtMs as number;
        // Reads see the snapshot at once, through the same (still staged) device.
        const first = await readAt(m.targetPath, 0, 32 * MiB);
        const firstReadMs = Date.now() - appliedMs;
        expect(sha256(first)).toBe(sha256(snapData.subarray(0, 32 * MiB)));
        console.log(`3-10: first read of restored data ${firstReadMs} ms after kubectl apply`);
        const done = await phase(vr, 'live-r', 'Completed');
        expect(done.status?.message ?? '').toMatch(/completed online/);
        stop = true;
        await load;

        // Outside the load region: the snapshot. Inside: per block, the load's last write when it started after
        // the switch, the snapshot when that write ended before the restore was asked for, either in between.
        const got = await readAt(m.targetPath, 0, restored);
        expect(sha256(got.subarray(0, loadStart))).toBe(sha256(snapData.subarray(0, loadStart)));
        let after = 0;
        for (let b = 0; b < (restored - loadStart) / bs; b++) {
          const off = loadStart + b * bs;
          const have = got.subarray(off, off + bs);
          const snap = snapData.subarray(off, off + bs);
          const w = writes.get(b);
          if (w === undefined || w.endMs < appliedMs) {
            expect(have.equals(snap), `block ${b}: the snapshot`).toBe(true);
          } else if (w.startMs >= switchedAtMs) {
            after++;
            expect(have.equals(w.data), `block ${b}: written after the switch`).toBe(true);
          } else {
            expect(have.equals(snap) || have.equals(w.data), `block ${b}: the snapshot or the last write`).toBe(true);
          }
        }
        expect(after, 'blocks written after the switch').toBeGreaterThan(0);
        expect((await readAt(m.targetPath, restored, 4 * MiB)).every((x) => x === 0)).toBe(true);
      } finally {
        stop = true;
        await load;
        await env.kubelet.unmount(ns, 'live');
      }
    });

    it('3-9 - once everything is deleted, no volume, snapshot or operation lock is left on the nodes', async () => {
      env.kubectl(['delete', 'volumerestores,volumerefreshes', '--all', '--wait=true']);
      await env.drain();
      expect(await env.leftovers()).toEqual([]);
    });
  },
);
