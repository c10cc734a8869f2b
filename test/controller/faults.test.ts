// SPDX-License-Identifier: Apache-2.0
// Faults that need more than one host, with the kubelet stand-in: two real node plugins as two nodes and two
// controller replicas (child processes, leader-elected). Two replicas cannot run on the one real node of this
// machine (host network: they would share the metrics port), and a claim waiting for one node's plugin while
// another node serves needs two nodes. The single-node faults (a node plugin killed during CreateSnapshot, the
// API server restarted) run with the release's pods on the real node: test/node/faults.test.ts.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { csiCall as call, isRoot } from '../support/node-plugin.js';
import { useCluster } from '../support/cluster.js';
import { LoopsnapEnv } from '../support/loopsnap-env.js';
import { waitFor } from '../support/wait.js';

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

  // Two controller replicas on separate hosts: the standby takes over from the killed leader.
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

  // Two nodes: node-b's plugin is down while node-a's serves, and the claim the scheduler put on node-b waits
  // for it, with an event naming it. (On the one real node the scheduler places no pod while the only node
  // publishes no capacity, so the controller never sees a claim for a node whose plugin is down.)
  it('2-3 - a node plugin that is down: the claim waits with an event naming the node, and is provisioned when it is back', async () => {
    await env.plugins.get('node-b')!.stop();
    // The leader counts node-b down (its registry Lease released) before the claim comes.
    await waitFor('node-b not ready for the leader', async () => {
      const m = await (await env.leader()).http('/metrics');
      return /^loopsnap_nodes_ready 1$/m.test(m?.body ?? '');
    });
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
});
