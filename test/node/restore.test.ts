// SPDX-License-Identifier: Apache-2.0
// VolumeRestore and VolumeRefresh with real pods: in place (files and raw block), while a pod still uses the
// claim, refused requests, refresh onto a snapshot and onto the source, the node plugin and the controller
// killed mid-copy (no pod uses a volume then: a plugin restart still takes running pods' volumes with it),
// deletion during a copy, and a raw block claim restored under a pod's write load. Data is written and
// checked in the pods (busybox); what the node plugin records is read on the node.
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../support/paths.js';
import { realNodeUsable, useRealCluster } from '../support/real-node.js';
import { waitFor } from '../support/wait.js';
import {
  killContainer,
  leftoversOnNode,
  recordOnNode,
  recordsOnNode,
  releaseContainer,
  waitRestarted,
} from './lib/node-host.js';
import {
  condition,
  deleteVolumesAndSnapshots,
  eventsOf,
  find,
  fromSnapshot,
  getJson,
  type Obj,
  volumeOf,
  waitGone,
  waitPhase,
} from './lib/objects.js';
import { execBytes, fileSums, MiB, readBytesAt, sumAt, writeFiles, writeRandomAt } from './lib/pod-io.js';
import { startPod, stopPod } from './lib/pods.js';
import { componentMetrics, metricValue } from './lib/release.js';
import { apply, claim, DEVICE, exec, snapshot, waitSnapshotReady } from './lib/workloads.js';

const EXAMPLES = join(REPO_ROOT, 'examples');
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const CHUNK = 32 * MiB;

describe('VolumeRestore / VolumeRefresh with real pods', () => {
  if (!realNodeUsable()) return;
  const c = useRealCluster('restore');
  const restore = (name: string, pvc: string, snap: string, keep = false) => ({
    apiVersion: 'loopsnap.dev/v1alpha1',
    kind: 'VolumeRestore',
    metadata: { name, namespace: c.namespace },
    spec: { pvcName: pvc, volumeSnapshotName: snap, keepRestorePoint: keep },
  });
  const refresh = (name: string, pvc: string, source: object) => ({
    apiVersion: 'loopsnap.dev/v1alpha1',
    kind: 'VolumeRefresh',
    metadata: { name, namespace: c.namespace },
    spec: { pvcName: pvc, ...source },
  });
  const applyExample = (file: string) => c.kubectl(['-n', c.namespace, 'apply', '-f', join(EXAMPLES, file)]);
  /** The files of a claim, read by a short-lived pod of its own. */
  const filesOf = async (pvc: string): Promise<Record<string, string>> => {
    startPod(c, `read-${pvc}`, pvc);
    try {
      return fileSums(c, `read-${pvc}`);
    } finally {
      await stopPod(c, `read-${pvc}`);
    }
  };
  /** sha256 of each CHUNK of the first `chunks` of a raw block claim, read by a short-lived pod. */
  const chunkSumsOf = async (pvc: string, chunks: number): Promise<string[]> => {
    startPod(c, `read-${pvc}`, pvc, { block: true });
    try {
      return Array.from({ length: chunks }, (_, i) => sumAt(c, `read-${pvc}`, i * CHUNK, CHUNK));
    } finally {
      await stopPod(c, `read-${pvc}`);
    }
  };
  const bigSums: string[] = [];

  it('3-1 - restore in place: files equal the snapshot, other snapshots keep theirs, the restore point undoes it', async () => {
    apply(c, claim(c.namespace, 'data'));
    startPod(c, 'data-user', 'data');
    const before = volumeOf(c, 'data');
    const gen1 = writeFiles(c, 'data-user', [1 << 20, 4096, 300_000], 'g1');
    snapshot(c, 'data-snap', 'data');
    waitSnapshotReady(c, 'data-snap');
    const gen2 = { ...gen1, ...writeFiles(c, 'data-user', [200_000, 70_000], 'g2') };
    snapshot(c, 's2', 'data');
    waitSnapshotReady(c, 's2');
    const gen3 = { ...gen2, ...writeFiles(c, 'data-user', [500_000, 1000, 9000, 123_456], 'g3') };
    expect(fileSums(c, 'data-user')).toEqual(gen3);
    await stopPod(c, 'data-user');

    applyExample('volumerestore.yaml');
    const done = await waitPhase(c, 'volumerestore', 'data-restore', 'Completed');
    expect(done.status).toMatchObject({ nodeName: before.node, volumeHandle: before.volumeHandle });
    expect(done.status?.blocksTotal).toBeGreaterThan(0);
    expect(done.status?.progress).toBe(`${done.status?.blocksTotal}/${done.status?.blocksTotal}`);
    expect(Date.parse(done.status?.completionTime ?? '')).toBeGreaterThanOrEqual(
      Date.parse(done.status?.startTime ?? ''),
    );
    expect(condition(done, 'Complete')?.status).toBe('True');
    // Same claim, PV and handle; the content is the snapshot's.
    expect(volumeOf(c, 'data')).toEqual(before);
    expect(await filesOf('data')).toEqual(gen1);
    const row = c.kubectl(['-n', c.namespace, 'get', 'volumerestore', 'data-restore', '--no-headers']).trim();
    expect(row.split(/\s+/).slice(0, 5)).toEqual([
      'data-restore',
      'data',
      'data-snap',
      'Completed',
      done.status?.progress,
    ]);

    // The other snapshot still holds its content.
    apply(c, claim(c.namespace, 'from-s2', { dataSource: fromSnapshot('s2') }));
    expect(await filesOf('from-s2')).toEqual(gen2);

    // The restore point holds the pre-restore content; restoring it undoes the restore.
    const rp = done.status?.restorePointSnapshot as string;
    expect(rp).toBe('data-restore-restore-point');
    waitSnapshotReady(c, rp);
    apply(c, restore('undo', 'data', rp));
    await waitPhase(c, 'volumerestore', 'undo', 'Completed');
    expect(await filesOf('data')).toEqual(gen3);
  });

  it('3-2 - a Filesystem claim a pod uses is not restored under it: Pending (VolumeInUse) until the pod goes', async () => {
    startPod(c, 'data-user', 'data');
    const before = fileSums(c, 'data-user');
    apply(c, restore('while-mounted', 'data', 'data-snap'));
    const waiting = await waitFor(
      'VolumeInUse',
      () => {
        const o = find(c, 'volumerestore', 'while-mounted');
        return condition(o, 'Accepted')?.reason === 'VolumeInUse' ? o : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 300 },
    );
    expect(waiting.status?.phase).toBe('Pending');
    expect(condition(waiting, 'Accepted')?.message).toMatch(/is staged with a mounted file system \(in use by a pod\)/);
    // The mounted file system was left alone.
    expect(fileSums(c, 'data-user')).toEqual(before);
    await stopPod(c, 'data-user');
    await waitPhase(c, 'volumerestore', 'while-mounted', 'Completed');
    expect(Object.keys(await filesOf('data')).sort()).toEqual(['g1-0.bin', 'g1-1.bin', 'g1-2.bin']);
  });

  it('3-3 - invalid requests: CEL rejects a bad spec; a snapshot outside the lineage is refused with a clear condition', async () => {
    expect(() => apply(c, refresh('bad', 'data', {}))).toThrow(
      /set exactly one of volumeSnapshotName and fromSource=true/,
    );
    apply(c, claim(c.namespace, 'other'));
    startPod(c, 'other-user', 'other');
    snapshot(c, 'other-snap', 'other');
    waitSnapshotReady(c, 'other-snap');
    await stopPod(c, 'other-user');
    apply(c, restore('wrong-lineage', 'data', 'other-snap'));
    const failed = await waitPhase(c, 'volumerestore', 'wrong-lineage', 'Failed', 60_000);
    expect(condition(failed, 'Failed')?.reason).toBe('NotInLineage');
    // One node holds both volumes: the node refuses (the lineage does not contain the snapshot's volume).
    expect(failed.status?.message).toMatch(/is neither volume .* nor a volume it was made from/);
    expect(eventsOf(c, 'wrong-lineage').some((e) => e.reason === 'NotInLineage')).toBe(true);
  });

  it('3-4 - refresh onto a newer snapshot and onto the source: same claim, PV and handle, the new data', async () => {
    apply(c, claim(c.namespace, 'prod'));
    startPod(c, 'prod-user', 'prod');
    writeFiles(c, 'prod-user', [100_000, 5000], 'p1');
    snapshot(c, 'prod-1', 'prod');
    waitSnapshotReady(c, 'prod-1');
    apply(c, claim(c.namespace, 'dev', { dataSource: fromSnapshot('prod-1') }));
    startPod(c, 'dev-user', 'dev');
    const dev = volumeOf(c, 'dev');
    writeFiles(c, 'dev-user', [77_777, 1, 2, 3], 'dev');
    await stopPod(c, 'dev-user');
    writeFiles(c, 'prod-user', [222_222, 6000], 'p2');
    const prod2 = fileSums(c, 'prod-user');
    snapshot(c, 'prod-2', 'prod');
    waitSnapshotReady(c, 'prod-2');
    apply(c, refresh('dev-refresh', 'dev', { volumeSnapshotName: 'prod-2' }));
    await waitPhase(c, 'volumerefresh', 'dev-refresh', 'Completed');
    expect(volumeOf(c, 'dev')).toEqual(dev);
    expect(await filesOf('dev')).toEqual(prod2);
    // From the source: prod keeps changing and stays in use by its pod (the node cuts a frozen snapshot of it).
    writeFiles(c, 'prod-user', [333_333, 7, 8], 'p3');
    const prod3 = fileSums(c, 'prod-user');
    applyExample('volumerefresh.yaml');
    const done = await waitPhase(c, 'volumerefresh', 'dev-refresh-from-source', 'Completed');
    expect(done.status?.sourceSnapshot).toMatch(/^source:snap-/);
    expect(await filesOf('dev')).toEqual(prod3);
    // A refresh of a claim not made from anything is refused.
    apply(c, refresh('prod-refresh', 'prod', { fromSource: true }));
    const refused = await waitPhase(c, 'volumerefresh', 'prod-refresh', 'Failed');
    expect(refused.status?.message).toMatch(/was not created from a snapshot or a volume/);
    await stopPod(c, 'prod-user');
  });

  it('3-5 - raw block claim: restore gives back the snapshot bytes; blocks written after the snapshot read as before', async () => {
    apply(c, claim(c.namespace, 'blk', { volumeMode: 'Block' }));
    startPod(c, 'blk-user', 'blk', { block: true });
    const a = writeRandomAt(c, 'blk-user', 0, 3 * MiB);
    snapshot(c, 'blk-s', 'blk');
    waitSnapshotReady(c, 'blk-s');
    writeRandomAt(c, 'blk-user', 1 * MiB, 1 * MiB);
    writeRandomAt(c, 'blk-user', 40 * MiB, 2 * MiB);
    await stopPod(c, 'blk-user');
    apply(c, restore('blk-r', 'blk', 'blk-s'));
    await waitPhase(c, 'volumerestore', 'blk-r', 'Completed');
    startPod(c, 'blk-reader', 'blk', { block: true });
    expect(sumAt(c, 'blk-reader', 0, 3 * MiB)).toBe(a);
    expect(sumAt(c, 'blk-reader', 40 * MiB, 2 * MiB)).toBe(sha256(Buffer.alloc(2 * MiB)));
    await stopPod(c, 'blk-reader');
  });

  it('3-6 - metrics: restores and refreshes counted and timed on the controller', () => {
    const metrics = componentMetrics(c, 'controller');
    expect(metricValue(metrics, 'loopsnap_restores_total', { kind: 'restore', result: 'completed' })).toBeGreaterThan(
      0,
    );
    expect(metricValue(metrics, 'loopsnap_restore_duration_seconds_count', { kind: 'restore' })).toBeGreaterThan(0);
    expect(metricValue(metrics, 'loopsnap_restores_total', { kind: 'refresh', result: 'completed' })).toBeGreaterThan(
      0,
    );
  });

  it('3-7 - node plugin and controller killed mid-restore: the restore resumes after the kubelet restarts them and completes with the right content', async () => {
    apply(c, claim(c.namespace, 'big', { volumeMode: 'Block', storage: '512Mi' }));
    startPod(c, 'big-user', 'big', { block: true });
    for (let off = 0; off < 384 * MiB; off += CHUNK) bigSums.push(writeRandomAt(c, 'big-user', off, CHUNK));
    snapshot(c, 'big-s', 'big');
    waitSnapshotReady(c, 'big-s');
    exec(c, 'big-user', `dd if=/dev/urandom of=${DEVICE} bs=1M count=384 oflag=direct conv=fsync 2>/dev/null`);
    // No pod uses a volume of the plugin from here on (a restart would take it away from the pod).
    await stopPod(c, 'big-user');
    apply(c, restore('big-r', 'big', 'big-s'));
    const running = await waitPhase(c, 'volumerestore', 'big-r', 'Restoring', 120_000);
    const node = running.status?.nodeName as string;
    const plugin = releaseContainer(c, 'node', node);
    const controller = releaseContainer(c, 'controller');
    killContainer(c, plugin);
    killContainer(c, controller);
    expect(recordOnNode(c, node, 'operations', running.status?.operationId as string)).toMatchObject({
      state: 'running',
    });
    await waitRestarted(c, plugin);
    await waitRestarted(c, controller);
    const done = await waitPhase(c, 'volumerestore', 'big-r', 'Completed', 300_000);
    expect(done.status?.progress).toBe(`${done.status?.blocksTotal}/${done.status?.blocksTotal}`);
    expect(await chunkSumsOf('big', bigSums.length)).toEqual(bigSums);
  });

  it('3-8 - while a VolumeRestore copies, a second one is refused; deleted, the copy finishes (DeletionDeferred), then the object goes', async () => {
    startPod(c, 'big-user', 'big', { block: true });
    exec(c, 'big-user', `dd if=/dev/urandom of=${DEVICE} bs=1M count=384 oflag=direct conv=fsync 2>/dev/null`);
    await stopPod(c, 'big-user');
    apply(c, restore('big-r2', 'big', 'big-s'));
    await waitPhase(c, 'volumerestore', 'big-r2', 'Restoring', 120_000);
    // A second restore of the claim meanwhile is refused and names the first.
    apply(c, restore('second', 'big', 'big-s'));
    const second = await waitPhase(c, 'volumerestore', 'second', 'Failed', 60_000);
    expect(condition(second, 'Failed')?.reason).toBe('ConcurrentOperation');
    expect(second.status?.message).toMatch(/VolumeRestore big-r2 is already working on PersistentVolumeClaim big/);
    c.kubectl(['-n', c.namespace, 'delete', 'volumerestore', 'big-r2', '--wait=false']);
    const seen = await waitFor(
      'DeletionDeferred (or already gone)',
      () => {
        const o = find(c, 'volumerestore', 'big-r2');
        if (!o) return 'gone';
        return condition(o, 'DeletionDeferred')?.status === 'True' ? 'deferred' : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 50 },
    );
    await waitGone(c, 'volumerestore', 'big-r2');
    expect(['deferred', 'gone']).toContain(seen);
    // The copy was not interrupted: the claim holds the snapshot's content.
    expect(await chunkSumsOf('big', bigSums.length)).toEqual(bigSums);
  });

  it('3-10 - raw block claim restored while a pod writes to it: reads see the snapshot at the switch, writes made after it stay', async () => {
    const restored = 160 * MiB; // the snapshot's data; the load writes into its last 8 MiB
    const loadStart = restored - 8 * MiB;
    const bs = 4096;
    const blocks = (restored - loadStart) / bs;
    apply(c, claim(c.namespace, 'live', { volumeMode: 'Block', storage: '256Mi' }));
    // The write load below runs in the container's own process (started when /tmp/load.sh appears), not in a
    // `kubectl exec` session, whose end may take a background process with it.
    startPod(c, 'live-user', 'live', {
      block: true,
      script: 'while [ ! -e /tmp/load.sh ]; do sleep 0.2; done; sh /tmp/load.sh; exec sleep 86400',
    });
    // The snapshot's data, kept in the pod's /tmp to compare with: its load region is read back whole.
    const snapFile = '/tmp/snap';
    exec(
      c,
      'live-user',
      `head -c ${restored} /dev/urandom > ${snapFile} && dd if=${snapFile} of=${DEVICE} bs=1M oflag=direct conv=notrunc,fsync 2>/dev/null`,
    );
    const snapRegion = readBytesAt(c, 'live-user', loadStart, restored - loadStart, snapFile);
    expect(snapRegion.length).toBe(restored - loadStart);
    snapshot(c, 'live-s', 'live');
    waitSnapshotReady(c, 'live-s');
    exec(c, 'live-user', `dd if=/dev/urandom of=${DEVICE} bs=1M count=160 oflag=direct conv=fsync 2>/dev/null`);

    // The write load: 4 KiB O_DIRECT+fsync writes of "LOAD blk=<b> seq=<i>" at random blocks of the load region,
    // each logged as "<b> <i> <start> <end>" (seconds, taken before and after the write) until /tmp/stop.
    const header = (b: number, i: number) => {
      const buf = Buffer.alloc(bs);
      buf.write(`LOAD blk=${String(b).padStart(8, '0')} seq=${String(i).padStart(8, '0')}\n`);
      return buf;
    };
    const load = `i=0; while [ ! -e /tmp/stop ]; do
  b=$((RANDOM % ${blocks})); s=$(echo | ts %.s)
  printf 'LOAD blk=%08d seq=%08d\\n' $b $i | dd of=${DEVICE} bs=${bs} seek=$((${loadStart / bs} + b)) conv=sync,notrunc,fsync oflag=direct 2>/dev/null || { echo "ERR $i" >> /tmp/load.log; break; }
  e=$(echo | ts %.s); echo "$b $i $s $e" >> /tmp/load.log; i=$((i+1))
done; echo DONE >> /tmp/load.log`;
    execBytes(c, 'live-user', 'cat > /tmp/load.tmp', Buffer.from(load));
    exec(c, 'live-user', 'rm -f /tmp/stop /tmp/load.log; mv /tmp/load.tmp /tmp/load.sh');
    const logged = () => exec(c, 'live-user', 'cat /tmp/load.log 2>/dev/null || true');
    try {
      await waitFor('the load writing', () => logged().split('\n').length > 20, { timeoutMs: 60_000, intervalMs: 200 });
      const appliedMs = Date.now();
      apply(c, restore('live-r', 'live', 'live-s'));
      // The switch: the node records it once the volume reads the snapshot.
      const switched = await waitFor(
        'the online switch',
        () => {
          const o = find(c, 'volumerestore', 'live-r');
          const id = o?.status?.operationId as string | undefined;
          const node = o?.status?.nodeName as string | undefined;
          if (!id || !node) return undefined;
          const rec = recordOnNode(c, node, 'operations', id) as { mode?: string; switchedAtMs?: number } | undefined;
          return (rec?.switchedAtMs ?? 0) > 0 ? rec : undefined;
        },
        { timeoutMs: 60_000, intervalMs: 20 },
      );
      expect(switched?.mode).toBe('online');
      const switchedAtMs = switched!.switchedAtMs!;
      // Reads see the snapshot at once, through the same (still staged) device of the same pod.
      expect(sumAt(c, 'live-user', 0, 32 * MiB)).toBe(sumAt(c, 'live-user', 0, 32 * MiB, snapFile));
      console.log(`3-10: first read of restored data ${Date.now() - appliedMs} ms after kubectl apply`);
      const done = await waitPhase(c, 'volumerestore', 'live-r', 'Completed');
      expect(done.status?.message ?? '').toMatch(/completed online/);
      exec(c, 'live-user', 'touch /tmp/stop');
      await waitFor('the load to stop', () => /^DONE$/m.test(logged()), { timeoutMs: 60_000, intervalMs: 200 });

      // Outside the load region: the snapshot. Inside: per block, the load's last write when it started after
      // the switch, the snapshot when that write ended before the restore was asked for, either in between.
      const log = logged();
      expect(log).not.toMatch(/^ERR/m);
      const writes = new Map<number, { i: number; startMs: number; endMs: number }>();
      for (const line of log.split('\n')) {
        // ts prints "<seconds> <line>": here the line is empty, so fields are separated by runs of spaces.
        const m = /^(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)$/.exec(line.trim());
        if (m) writes.set(Number(m[1]), { i: Number(m[2]), startMs: Number(m[3]) * 1000, endMs: Number(m[4]) * 1000 });
      }
      expect(writes.size, 'blocks the load wrote (parsed from its log)').toBeGreaterThan(20);
      expect(sumAt(c, 'live-user', 0, loadStart)).toBe(sumAt(c, 'live-user', 0, loadStart, snapFile));
      const got = readBytesAt(c, 'live-user', loadStart, restored - loadStart);
      let after = 0;
      for (let b = 0; b < blocks; b++) {
        const have = got.subarray(b * bs, (b + 1) * bs);
        const snap = snapRegion.subarray(b * bs, (b + 1) * bs);
        const w = writes.get(b);
        const written = w === undefined ? undefined : header(b, w.i);
        const what = () =>
          `block ${b} (last write ${JSON.stringify(w)}, applied ${appliedMs}, switched ${switchedAtMs}) holds ${
            have.equals(snap)
              ? 'the snapshot'
              : have.subarray(0, 8).toString() === 'LOAD blk'
                ? JSON.stringify(have.subarray(0, 31).toString())
                : 'other data'
          }`;
        if (w === undefined || w.endMs < appliedMs) {
          expect(have.equals(snap), `${what()}; expected the snapshot`).toBe(true);
        } else if (w.startMs >= switchedAtMs) {
          after++;
          expect(have.equals(written!), `${what()}; expected its write after the switch`).toBe(true);
        } else {
          expect(have.equals(snap) || have.equals(written!), `${what()}; expected the snapshot or the last write`).toBe(
            true,
          );
        }
      }
      expect(after, 'blocks written after the switch').toBeGreaterThan(0);
      expect(sumAt(c, 'live-user', restored, 4 * MiB)).toBe(sha256(Buffer.alloc(4 * MiB)));
    } finally {
      exec(c, 'live-user', 'touch /tmp/stop');
      await stopPod(c, 'live-user');
    }
  });

  it('3-9 - once everything is deleted, no volume, snapshot or operation record of the file is left on the node', async () => {
    const handles = [
      ...getJson<{ items: Obj[] }>(c, ['pv'])
        .items.filter((p) => p.spec.claimRef?.namespace === c.namespace)
        .map((p) => p.spec.csi.volumeHandle as string),
      ...getJson<{ items: Obj[] }>(c, ['volumesnapshotcontents'])
        .items.filter((k) => k.spec.volumeSnapshotRef?.namespace === c.namespace)
        .map((k) => k.status?.snapshotHandle as string),
    ];
    expect(handles.length).toBeGreaterThan(10);
    c.kubectl(['-n', c.namespace, 'delete', 'volumerestores,volumerefreshes', '--all', '--wait=true', '--timeout=60s']);
    await deleteVolumesAndSnapshots(c, 120_000);
    for (const node of c.nodes) {
      expect(leftoversOnNode(c, node, handles)).toEqual([]);
      const ops = recordsOnNode(c, node, 'operations').filter((r) => handles.includes(String(r.volumeId)));
      expect(ops).toEqual([]);
    }
  });
});
