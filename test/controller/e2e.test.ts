// SPDX-License-Identifier: Apache-2.0
// Two nodes, with kubectl and the YAML in examples/: two real node plugins on this machine as nodes node-a and
// node-b (real engine, FUSE, loop devices, ext4), the controller as a leader-elected child process, and the
// kubelet stand-in staging and publishing. Only what needs two nodes is here (this machine runs one real node):
// the provisioner following the node the scheduler selected among two, a VolumeRestore refused because the
// snapshot is on the other node, and capacity published per node and class. Everything a single node can do
// runs with real pods in test/node/ (snapshot-lifecycle, resize, restore, chart-e2e, workloads, walkthrough).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { csiCall as call, isRoot } from '../support/node-plugin.js';
import { useCluster } from '../support/cluster.js';
import { LoopsnapEnv } from '../support/loopsnap-env.js';
import { waitFor } from '../support/wait.js';

type Obj = {
  metadata: { name: string; annotations?: Record<string, string> };
  status?: {
    phase?: string;
    readyToUse?: boolean;
    message?: string;
    conditions?: Array<{ type: string; reason?: string }>;
  };
};

describe.skipIf(!isRoot)(
  'two nodes: placement, cross-node refusal and capacity (root: two node plugins, loop devices, FUSE)',
  () => {
    const cluster = useCluster('ctl-e2e');
    let env: LoopsnapEnv;
    let ns = '';
    const get = (path: string) => env.rest.get<Obj>(path).catch(() => undefined);
    const pvc = (name: string) => get(`/api/v1/namespaces/${ns}/persistentvolumeclaims/${name}`);
    const bound = (name: string, timeoutMs = 60_000) =>
      waitFor(`PVC ${name} bound`, async () => ((await pvc(name))?.status?.phase === 'Bound' ? pvc(name) : undefined), {
        timeoutMs,
      });
    const applyYaml = (yaml: string) => env.kubectl(['apply', '-f', '-'], yaml);
    const pvcYaml = (name: string, sc: string) =>
      `apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: ${name}}\nspec: {storageClassName: ${sc}, accessModes: [ReadWriteOnce], resources: {requests: {storage: 64Mi}}}\n`;

    beforeAll(async () => {
      env = await LoopsnapEnv.start(cluster, { nodes: ['node-a', 'node-b'] });
      ns = env.namespace;
    });
    afterAll(async () => {
      await env?.stop();
    });

    // Two nodes: which one the provisioner uses must follow the scheduler's choice, not its own pick.
    it('1-8 - WaitForFirstConsumer among two nodes: each claim is provisioned on the node the scheduler selected', async () => {
      for (const node of ['node-b', 'node-a']) {
        const name = `wffc-${node}`;
        applyYaml(pvcYaml(name, 'loopsnap-wffc'));
        env.kubectl(['annotate', 'pvc', name, `volume.kubernetes.io/selected-node=${node}`]);
        const b = await bound(name);
        expect(b.metadata.annotations?.['loopsnap.dev/provisioning-node']).toBe(node);
        const m = await env.kubelet.mount(ns, name);
        expect(m.nodeId).toBe(node);
        await env.kubelet.unmount(ns, name);
      }
    });

    // Two nodes: a VolumeRestore naming a snapshot that the other node holds is refused by the controller (the
    // single-node refusal, by the node plugin, is test/node/restore.test.ts 3-3).
    it('3-3b - a VolumeRestore with a snapshot held by another node: NotInLineage, refused by the controller', async () => {
      for (const node of ['node-a', 'node-b']) {
        applyYaml(pvcYaml(`x-${node}`, 'loopsnap-wffc'));
        env.kubectl(['annotate', 'pvc', `x-${node}`, `volume.kubernetes.io/selected-node=${node}`]);
        await bound(`x-${node}`);
      }
      applyYaml(
        'apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\nmetadata: {name: x-b-snap}\nspec: {source: {persistentVolumeClaimName: x-node-b}}\n',
      );
      const vs = `/apis/snapshot.storage.k8s.io/v1/namespaces/${ns}/volumesnapshots/x-b-snap`;
      await waitFor('x-b-snap ready', async () => (await get(vs))?.status?.readyToUse === true);
      applyYaml(
        'apiVersion: loopsnap.dev/v1alpha1\nkind: VolumeRestore\nmetadata: {name: cross}\nspec: {pvcName: x-node-a, volumeSnapshotName: x-b-snap}\n',
      );
      const failed = await waitFor('VolumeRestore cross Failed', async () => {
        const o = await get(`/apis/loopsnap.dev/v1alpha1/namespaces/${ns}/volumerestores/cross`);
        return o?.status?.phase === 'Failed' ? o : undefined;
      });
      expect(failed.status?.conditions?.find((k) => k.type === 'Failed')?.reason).toBe('NotInLineage');
      expect(failed.status?.message).toMatch(
        /VolumeSnapshot x-b-snap is held by node node-b, but PersistentVolumeClaim x-node-a's volume is on node node-a/,
      );
      env.kubectl(['delete', 'volumerestore', 'cross', '--wait=true']);
    });

    // Two nodes: one CSIStorageCapacity per (node, class), each with its node's topology. The controller's
    // metrics of the same work are checked on the real node (test/node/snapshot-lifecycle.test.ts).
    it('1-10 - CSIStorageCapacity per node and class; both nodes ready', async () => {
      const caps = await waitFor('capacity objects', async () => {
        const l = await env.rest.get<{
          items: Array<{ storageClassName: string; nodeTopology: { matchLabels: Record<string, string> } }>;
        }>(`/apis/storage.k8s.io/v1/namespaces/${ns}/csistoragecapacities`);
        return l.items.length >= 4 ? l.items : undefined;
      });
      const pairs = caps
        .map((c) => `${c.storageClassName}@${c.nodeTopology.matchLabels['topology.loopsnap.dev/node']}`)
        .sort();
      expect(pairs).toEqual(['loopsnap-wffc@node-a', 'loopsnap-wffc@node-b', 'loopsnap@node-a', 'loopsnap@node-b']);
      const leader = await env.leader();
      expect((await leader.http('/metrics'))?.body ?? '').toMatch(/loopsnap_nodes_ready 2/);
    });

    // The file's own leak check, on both nodes.
    it('1-11 - once the test objects are deleted, no volume and no snapshot is left on either node', async () => {
      await env.drain();
      for (const [nodeId, p] of env.plugins) {
        const vols = await call<{ entries: unknown[] }>(p.clients.controller, 'ListVolumes', {});
        const snaps = await call<{ entries: unknown[] }>(p.clients.controller, 'ListSnapshots', {});
        expect({ nodeId, volumes: vols.entries.length, snapshots: snaps.entries.length }).toEqual({
          nodeId,
          volumes: 0,
          snapshots: 0,
        });
      }
      expect(await env.leftovers()).toEqual([]);
    });
  },
);
