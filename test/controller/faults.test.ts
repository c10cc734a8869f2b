// SPDX-License-Identifier: Apache-2.0
// Faults, end to end: two real node plugins, two controller replicas (child processes, leader-elected).
// A node plugin killed during CreateSnapshot, the leader killed mid-reconcile, a node plugin that is down
// while work waits for it, and the API server restarted: each time the work completes, exactly once, and
// nothing leaks on the nodes.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { csiCall as call, isRoot } from '../support/node-plugin.js';
import { checksumFiles, writeFiles } from '../csi/volumes.js';
import { CLUSTER_SCRIPT, clusterEnv, TEST_CLUSTER_DIR } from '../support/cluster-env.js';
import { useCluster } from '../support/cluster.js';
import { LoopsnapEnv } from '../support/loopsnap-env.js';
import { sleep, waitFor } from '../support/wait.js';

type Obj = {
  metadata: { name: string; uid: string; annotations?: Record<string, string> };
  spec: Record<string, unknown> & { volumeName?: string; volumeSnapshotRef?: { uid?: string; namespace?: string } };
  status?: Record<string, unknown> & { phase?: string; readyToUse?: boolean; boundVolumeSnapshotContentName?: string };
};
type Event = { reason: string; message: string; involvedObject: { name: string } };

describe.skipIf(!isRoot)('faults end to end (root: two node plugins, two controller replicas)', () => {
  const cluster = useCluster('ctl-faults');
  let env: LoopsnapEnv;
  let ns = '';
  const get = (path: string) => env.rest.get<Obj>(path).catch(() => undefined);
  const pvc = (name: string) => get(`/api/v1/namespaces/${ns}/persistentvolumeclaims/${name}`);
  const vs = (name: string) => get(`/apis/snapshot.storage.k8s.io/v1/namespaces/${ns}/volumesnapshots/${name}`);
  const bound = (name: string, timeoutMs = 90_000) =>
    waitFor(`PVC ${name} bound`, async () => ((await pvc(name))?.status?.phase === 'Bound' ? pvc(name) : undefined), {
      timeoutMs,
    });
  const ready = (name: string, timeoutMs = 90_000) =>
    waitFor(`VolumeSnapshot ${name} ready`, async () => ((await vs(name))?.status?.readyToUse ? vs(name) : undefined), {
      timeoutMs,
    });
  const apply = (yaml: string) => env.kubectl(['apply', '-f', '-'], yaml);
  const pvcYaml = (name: string, extra = '') =>
    `apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: ${name}${extra}}\nspec: {storageClassName: loopsnap, accessModes: [ReadWriteOnce], resources: {requests: {storage: 64Mi}}}\n`;
  const snapYaml = (name: string, claim: string) =>
    `apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\nmetadata: {name: ${name}}\nspec: {source: {persistentVolumeClaimName: ${claim}}}\n`;
  const restoreYaml = (name: string, snap: string) =>
    `apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: ${name}}\nspec: {storageClassName: loopsnap, accessModes: [ReadWriteOnce], resources: {requests: {storage: 64Mi}}, dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: ${snap}}}\n`;
  const snapshotsOf = async (nodeId: string, volumeId: string) =>
    (
      await call<{ entries: Array<{ snapshot: { snapshot_id: string } }> }>(
        env.plugins.get(nodeId)!.clients.controller,
        'ListSnapshots',
        { source_volume_id: volumeId },
      )
    ).entries.map((e) => e.snapshot.snapshot_id);
  const volumeOf = async (claim: string) => {
    const c = await pvc(claim);
    const pv = await get(`/api/v1/persistentvolumes/${c?.spec.volumeName}`);
    const csi = pv?.spec.csi as { volumeHandle: string };
    const aff = pv?.spec.nodeAffinity as {
      required: { nodeSelectorTerms: Array<{ matchExpressions: Array<{ values: string[] }> }> };
    };
    return { volumeId: csi.volumeHandle, nodeId: aff.required.nodeSelectorTerms[0]!.matchExpressions[0]!.values[0]! };
  };
  const contentsOf = async () =>
    (await env.rest.get<{ items: Obj[] }>('/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents')).items.filter(
      (c) => c.spec.volumeSnapshotRef?.namespace === ns,
    );

  beforeAll(async () => {
    env = await LoopsnapEnv.start(cluster, { nodes: ['node-a', 'node-b'], controllers: 2 });
    ns = env.namespace;
  });
  afterAll(async () => {
    await env?.stop();
  });

  it('2-1 - node plugin killed during CreateSnapshot: ready after its restart, exactly one snapshot on the node', async () => {
    apply(pvcYaml('k1'));
    await bound('k1');
    const m = await env.kubelet.mount(ns, 'k1');
    const sums = await writeFiles(m.targetPath, [150_000]);
    await env.kubelet.unmount(ns, 'k1');
    const { volumeId, nodeId } = await volumeOf('k1');
    apply(snapYaml('k1-snap', 'k1'));
    // Kill the plugin as soon as the content promises a CreateSnapshot (being-created is set before the call).
    await waitFor(
      'content being created',
      async () =>
        (await contentsOf()).find(
          (c) => c.metadata.annotations?.['snapshot.storage.kubernetes.io/volumesnapshot-being-created'] === 'yes',
        ),
      { intervalMs: 5 },
    );
    await env.killPlugin(nodeId);
    await sleep(1500);
    await env.startPlugin(nodeId);
    await ready('k1-snap');
    expect(await snapshotsOf(nodeId, volumeId)).toHaveLength(1);
    apply(restoreYaml('k1-r', 'k1-snap'));
    await bound('k1-r');
    const r = await env.kubelet.mount(ns, 'k1-r');
    expect(await checksumFiles(r.targetPath, Object.keys(sums))).toEqual(sums);
    await env.kubelet.unmount(ns, 'k1-r');
  });

  it('2-2 - leader killed mid-reconcile (10 snapshots in flight): the other replica takes over, no duplicate, no leak', async () => {
    apply(pvcYaml('k2'));
    await bound('k2');
    const { volumeId, nodeId } = await volumeOf('k2');
    const leader = await env.leader();
    const standby = env.controllers.find((c) => c !== leader && !c.exited)!;
    const names = Array.from({ length: 10 }, (_, i) => `k2-s${i}`);
    apply(names.map((n) => snapYaml(n, 'k2')).join('---\n'));
    await waitFor('first content', async () => (await contentsOf()).length > 0, { intervalMs: 5 });
    await leader.kill9();
    await waitFor('standby leads', () => standby.isLeader(), { timeoutMs: 20_000 });
    for (const n of names) await ready(n);
    const mine = (await contentsOf()).filter((c) =>
      names.some((n) => (c.spec.volumeSnapshotRef as { name?: string }).name === n),
    );
    expect(mine).toHaveLength(10);
    for (const c of mine) expect(c.metadata.name).toBe(`snapcontent-${c.spec.volumeSnapshotRef?.uid}`);
    expect(await snapshotsOf(nodeId, volumeId)).toHaveLength(10);
    // Replace the killed replica, as its Deployment would.
    await env.startController();
    env.kubectl(['delete', 'volumesnapshot', ...names, '--wait=true']);
    await waitFor('no snapshot left on the node', async () => (await snapshotsOf(nodeId, volumeId)).length === 0);
  });

  it('2-3 - a node plugin that is down: the claim waits with an event naming the node, and is provisioned when it is back', async () => {
    await env.plugins.get('node-b')!.stop();
    await sleep(500);
    apply(
      'apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: k3, annotations: {volume.kubernetes.io/selected-node: node-b}}\nspec: {storageClassName: loopsnap-wffc, accessModes: [ReadWriteOnce], resources: {requests: {storage: 64Mi}}}\n',
    );
    await waitFor('ProvisioningFailed naming node-b', async () => {
      const evs = await env.rest.get<{ items: Event[] }>(`/api/v1/namespaces/${ns}/events`);
      return evs.items.find(
        (e) => e.involvedObject.name === 'k3' && e.reason === 'ProvisioningFailed' && e.message.includes('node-b'),
      );
    });
    expect((await pvc('k3'))?.status?.phase).toBe('Pending');
    await env.startPlugin('node-b');
    await bound('k3');
    expect((await volumeOf('k3')).nodeId).toBe('node-b');
  });

  it('2-4 - API server restarted: the controller resumes (a replica leads again) and new snapshots become ready', async () => {
    apply(pvcYaml('k4'));
    await bound('k4');
    const pidFile = join(TEST_CLUSTER_DIR, 'run', 'kube-apiserver.pid');
    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    process.kill(pid, 'SIGKILL');
    await waitFor('API server gone', () => {
      try {
        process.kill(pid, 0);
        return false;
      } catch {
        return true;
      }
    });
    await sleep(2000);
    execFileSync(CLUSTER_SCRIPT, ['up'], {
      env: clusterEnv(),
      stdio: ['ignore', 'ignore', 'inherit'],
      timeout: 300_000,
    });
    // A replica that lost its Lease while the API server was away exits; start one as a Deployment would.
    if (env.controllers.filter((c) => !c.exited).length < 2) await env.startController();
    await env.leader(60_000);
    apply(snapYaml('k4-snap', 'k4'));
    await ready('k4-snap', 120_000);
  });
});
