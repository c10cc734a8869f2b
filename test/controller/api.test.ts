// SPDX-License-Identifier: Apache-2.0
// The controller against the real control plane where no node plugin answers: every user-fixable failure
// gets an event and (where the API has one) status.error; finalizers and the being-created annotation keep
// objects and snapshots from being lost while a node is unreachable; the node registry, CSIStorageCapacity
// and leader election work on real Leases. (End-to-end tests with two real node plugins: e2e.test.ts.)
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KubeRest } from '../../common/src/kube-rest.js';
import { type NodeLeaseHandle, startNodeLease } from '../../csi/src/registry/node-lease.js';
import { type InProcessController, baseArgs, freePort, startInProcess } from '../support/controller-harness.js';
import { installOurCrds } from '../support/crds-install.js';
import { useCluster } from '../support/cluster.js';
import { REPO_ROOT } from '../support/paths.js';
import { createTestPki, type TestPki } from '../support/tls.js';
import { sleep, waitFor } from '../support/wait.js';

type Obj = {
  metadata: {
    name: string;
    uid: string;
    finalizers?: string[];
    annotations?: Record<string, string>;
    labels?: Record<string, string>;
    deletionTimestamp?: string;
  };
  spec?: Record<string, unknown>;
  status?: Record<string, unknown> & { error?: { message?: string } };
};
type Event = { reason: string; message: string; type: string; involvedObject: { name: string; kind: string } };

describe('controller against the API server (no node plugin answers)', () => {
  const cluster = useCluster('ctl-api');
  let pki: TestPki;
  let rest: KubeRest;
  let ctl: InProcessController | undefined;
  const leases: NodeLeaseHandle[] = [];
  let ns = '';

  const snapPath = (name = '') =>
    `/apis/snapshot.storage.k8s.io/v1/namespaces/${ns}/volumesnapshots${name ? `/${name}` : ''}`;
  const contentPath = (name = '') => `/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents${name ? `/${name}` : ''}`;
  const pvcPath = (name = '') => `/api/v1/namespaces/${ns}/persistentvolumeclaims${name ? `/${name}` : ''}`;
  const get = (path: string) => rest.get<Obj>(path).catch(() => undefined);
  const events = async (name: string): Promise<Event[]> =>
    (await rest.get<{ items: Event[] }>(`/api/v1/namespaces/${ns}/events`)).items.filter(
      (e) => e.involvedObject.name === name,
    );
  const waitEvent = (name: string, reason: string, text?: string) =>
    waitFor(`event ${reason} on ${name}`, async () =>
      (await events(name)).find((e) => e.reason === reason && (!text || e.message.includes(text))),
    );
  const deadEndpointLease = async (nodeId: string, capacityBytes = 10n * 1024n ** 3n): Promise<NodeLeaseHandle> => {
    const h = await startNodeLease({
      kc: cluster.kc,
      nodeId,
      endpoint: `127.0.0.1:${await freePort()}`,
      capacityBytes,
      version: 'test',
      namespace: ns,
      leaseDurationSeconds: 5,
      renewIntervalMs: 500,
    });
    leases.push(h);
    await h.ready;
    return h;
  };
  const unfinalize = async (path: string) => {
    await rest.patch(path, { metadata: { finalizers: null } }).catch(() => undefined);
  };

  beforeAll(async () => {
    ns = cluster.namespace;
    installOurCrds(cluster);
    cluster.kubectl(
      [
        'apply',
        '-f',
        join(REPO_ROOT, 'examples', 'storageclass.yaml'),
        '-f',
        join(REPO_ROOT, 'examples', 'volumesnapshotclasses.yaml'),
      ],
      {
        namespaced: false,
      },
    );
    pki = await createTestPki();
    rest = await KubeRest.fromKubeConfig(cluster.kc);
    ctl = await startInProcess(cluster.kc, [...baseArgs({ namespace: ns, pki }), '--leader-election=false'], pki);
  });

  afterAll(async () => {
    for (const l of leases) await l.stop({ release: false }).catch(() => undefined);
    await ctl?.stop();
    // Objects this file left protected on purpose (unreachable node): release them so the namespace can go.
    for (const c of (await rest.get<{ items: Obj[] }>(contentPath())).items) {
      if ((c.spec?.volumeSnapshotRef as { namespace?: string } | undefined)?.namespace === ns) {
        await unfinalize(contentPath(c.metadata.name));
        await rest.delete(contentPath(c.metadata.name));
      }
    }
    for (const p of (await rest.get<{ items: Obj[] }>(pvcPath())).items) await unfinalize(pvcPath(p.metadata.name));
    for (const s of (await rest.get<{ items: Obj[] }>(snapPath())).items) await unfinalize(snapPath(s.metadata.name));
    await rest.delete('/api/v1/persistentvolumes/pv-api-x');
    await unfinalize('/api/v1/persistentvolumes/pv-api-x');
    rest.close();
    await pki.cleanup();
  });

  const pvc = (name: string, extra: Record<string, unknown> = {}) => ({
    apiVersion: 'v1',
    kind: 'PersistentVolumeClaim',
    metadata: { name },
    spec: {
      storageClassName: 'loopsnap',
      accessModes: ['ReadWriteOnce'],
      resources: { requests: { storage: '64Mi' } },
      ...extra,
    },
  });
  const snapshot = (name: string, source: Record<string, string>, cls?: string) => ({
    apiVersion: 'snapshot.storage.k8s.io/v1',
    kind: 'VolumeSnapshot',
    metadata: { name },
    spec: { source, ...(cls ? { volumeSnapshotClassName: cls } : {}) },
  });

  it('1-1 - a PVC of our class with no node plugin gets ProvisioningFailed saying no node is registered', async () => {
    await rest.create(pvcPath(), pvc('orphan'));
    await waitEvent('orphan', 'ProvisioningFailed', 'no node plugin is registered');
    const p = await get(pvcPath('orphan'));
    expect(p?.metadata.annotations?.['loopsnap.dev/provisioning-node']).toBeUndefined();
  });

  it('1-2 - invalid snapshots get events and status.error: missing class, missing PVC, unbound PVC, missing content', async () => {
    await rest.create(snapPath(), snapshot('bad-class', { persistentVolumeClaimName: 'orphan' }, 'no-such-class'));
    await rest.create(snapPath(), snapshot('no-pvc', { persistentVolumeClaimName: 'nope' }));
    await rest.create(snapPath(), snapshot('unbound', { persistentVolumeClaimName: 'orphan' }));
    await rest.create(snapPath(), snapshot('no-content', { volumeSnapshotContentName: 'no-such-content' }));
    const cases: Array<[string, string, string]> = [
      ['bad-class', 'SnapshotContentCreationFailed', 'VolumeSnapshotClass "no-such-class" not found'],
      ['no-pvc', 'SnapshotPVCSourceMissing', 'PersistentVolumeClaim "nope" not found'],
      ['unbound', 'SnapshotPVCSourceMissing', 'is not bound to a PersistentVolume yet'],
      ['no-content', 'SnapshotContentMissing', 'VolumeSnapshotContent "no-such-content" not found'],
    ];
    for (const [name, reason, text] of cases) {
      await waitEvent(name, reason, text);
      const vs = await waitFor(`status.error of ${name}`, async () => {
        const o = await get(snapPath(name));
        return o?.status?.error?.message?.includes(text) ? o : undefined;
      });
      expect(vs.status?.readyToUse).toBe(false);
      // Finalizers come once the class is known (nothing is created before that).
      if (name !== 'bad-class') {
        expect(vs.metadata.finalizers).toContain('snapshot.storage.kubernetes.io/volumesnapshot-as-source-protection');
      }
    }
    // The default class was filled in for the snapshot that named none.
    expect((await get(snapPath('no-pvc')))?.spec?.volumeSnapshotClassName).toBe('loopsnap-save-volume');
    // Fixing the cause heals the snapshot: creating the class makes the error move on to the next problem.
    await rest.create('/apis/snapshot.storage.k8s.io/v1/volumesnapshotclasses', {
      apiVersion: 'snapshot.storage.k8s.io/v1',
      kind: 'VolumeSnapshotClass',
      metadata: { name: 'no-such-class' },
      driver: 'csi.loopsnap.dev',
      deletionPolicy: 'Delete',
    });
    await waitFor('bad-class error to change', async () =>
      (await get(snapPath('bad-class')))?.status?.error?.message?.includes('not bound'),
    );
    await rest.delete('/apis/snapshot.storage.k8s.io/v1/volumesnapshotclasses/no-such-class');
    for (const [name] of cases) await rest.delete(snapPath(name));
    for (const [name] of cases) await waitFor(`${name} deleted`, async () => (await get(snapPath(name))) === undefined);
  });

  it('2-1 - a registered node that does not answer: node chosen and persisted, ProvisioningFailed with UNAVAILABLE, capacity published', async () => {
    const lease = await deadEndpointLease('node-dead');
    await waitFor(
      'nodes ready metric',
      async () => (await ctl!.registry.getSingleMetric('loopsnap_nodes_ready')?.get())?.values[0]?.value === 1,
    );
    await rest.create(pvcPath(), pvc('p-dead'));
    const p = await waitFor('provisioning node annotation', async () => {
      const o = await get(pvcPath('p-dead'));
      return o?.metadata.annotations?.['loopsnap.dev/provisioning-node'] === 'node-dead' ? o : undefined;
    });
    expect(p.metadata.finalizers).toContain('loopsnap.dev/provisioning-protection');
    await waitEvent('p-dead', 'ProvisioningFailed', 'UNAVAILABLE');
    // CSIStorageCapacity for each of our StorageClasses on that node, from the Lease (GetCapacity cannot be asked).
    const caps = await waitFor('CSIStorageCapacity', async () => {
      const l = await rest.get<{
        items: Array<{
          storageClassName: string;
          capacity: string;
          nodeTopology: { matchLabels: Record<string, string> };
        }>;
      }>(`/apis/storage.k8s.io/v1/namespaces/${ns}/csistoragecapacities`);
      return l.items.length >= 2 ? l.items : undefined;
    });
    expect(caps.map((c) => c.storageClassName).sort()).toEqual(['loopsnap', 'loopsnap-wffc']);
    expect(
      caps.every(
        (c) => c.capacity === '10Gi' && c.nodeTopology.matchLabels['topology.loopsnap.dev/node'] === 'node-dead',
      ),
    ).toBe(true);

    // The plugin stops: the node is down at once, its capacity is withdrawn, the PVC waits (nothing lost).
    await lease.stop();
    await waitFor(
      'nodes ready 0',
      async () => (await ctl!.registry.getSingleMetric('loopsnap_nodes_ready')?.get())?.values[0]?.value === 0,
    );
    await waitEvent('p-dead', 'ProvisioningFailed', 'released its Lease');
    await waitFor(
      'capacity withdrawn',
      async () =>
        (await rest.get<{ items: unknown[] }>(`/apis/storage.k8s.io/v1/namespaces/${ns}/csistoragecapacities`)).items
          .length === 0,
    );
    // Deleting the claim while the volume may exist on the unreachable node keeps it until the node is back.
    await rest.delete(pvcPath('p-dead'));
    await sleep(1500);
    const terminating = await get(pvcPath('p-dead'));
    expect(terminating?.metadata.deletionTimestamp).toBeDefined();
    expect(terminating?.metadata.finalizers).toContain('loopsnap.dev/provisioning-protection');
  });

  it('3-1 - a snapshot on an unreachable node: content created once, errors reported, deletion never leaks', async () => {
    await deadEndpointLease('node-x');
    await rest.create('/api/v1/persistentvolumes', {
      apiVersion: 'v1',
      kind: 'PersistentVolume',
      metadata: { name: 'pv-api-x', annotations: { 'pv.kubernetes.io/provisioned-by': 'csi.loopsnap.dev' } },
      spec: {
        capacity: { storage: '64Mi' },
        accessModes: ['ReadWriteOnce'],
        persistentVolumeReclaimPolicy: 'Retain',
        storageClassName: 'loopsnap',
        claimRef: { namespace: ns, name: 'src-x' },
        csi: { driver: 'csi.loopsnap.dev', volumeHandle: 'vol-api-x' },
        nodeAffinity: {
          required: {
            nodeSelectorTerms: [
              { matchExpressions: [{ key: 'topology.loopsnap.dev/node', operator: 'In', values: ['node-x'] }] },
            ],
          },
        },
      },
    });
    await rest.create(pvcPath(), pvc('src-x', { volumeName: 'pv-api-x' }));
    await waitFor('src-x bound', async () => (await get(pvcPath('src-x')))?.status?.phase === 'Bound');
    const vs = await rest.create<Obj>(snapPath(), snapshot('snap-x', { persistentVolumeClaimName: 'src-x' }));
    const contentName = `snapcontent-${vs.metadata.uid}`;
    const content = await waitFor('content', async () => {
      const c = await get(contentPath(contentName));
      return c?.status?.error ? c : undefined;
    });
    expect(content.metadata.labels?.['snapshot.storage.kubernetes.io/managed-by']).toBe('node-x');
    expect(content.metadata.finalizers).toEqual([
      'snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection',
    ]);
    expect(content.metadata.annotations?.['snapshot.storage.kubernetes.io/volumesnapshot-being-created']).toBe('yes');
    expect(content.spec).toMatchObject({
      deletionPolicy: 'Delete',
      driver: 'csi.loopsnap.dev',
      source: { volumeHandle: 'vol-api-x' },
      volumeSnapshotClassName: 'loopsnap-save-volume',
      volumeSnapshotRef: { name: 'snap-x', namespace: ns, uid: vs.metadata.uid },
    });
    expect(content.status?.error?.message).toMatch(/CreateSnapshot on node "node-x" failed: UNAVAILABLE/);
    await waitEvent('snap-x', 'SnapshotCreationFailed', 'UNAVAILABLE');
    const snap = await waitFor('VS error', async () => {
      const o = await get(snapPath('snap-x'));
      return o?.status?.error?.message?.includes('UNAVAILABLE') ? o : undefined;
    });
    expect(snap.status?.boundVolumeSnapshotContentName).toBe(contentName);
    expect((await get(pvcPath('src-x')))?.metadata.finalizers).toContain(
      'snapshot.storage.kubernetes.io/pvc-as-source-protection',
    );

    // Deleting the snapshot: the VolumeSnapshot goes, but the content stays (being-created: a CreateSnapshot may
    // have reached the node) until the node answers and the snapshot there can be deleted.
    await rest.delete(snapPath('snap-x'));
    await waitFor('snapshot gone', async () => (await get(snapPath('snap-x'))) === undefined);
    await sleep(1500);
    const kept = await get(contentPath(contentName));
    expect(kept?.metadata.deletionTimestamp).toBeDefined();
    expect(kept?.metadata.annotations?.['snapshot.storage.kubernetes.io/volumesnapshot-being-deleted']).toBe('yes');
    expect(kept?.metadata.finalizers).toContain(
      'snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection',
    );
    expect((await get(pvcPath('src-x')))?.metadata.finalizers ?? []).not.toContain(
      'snapshot.storage.kubernetes.io/pvc-as-source-protection',
    );
  });

  it('3-2 - a pre-provisioned Retain content binds, reports the unreachable node, and survives its snapshot', async () => {
    await rest.create(contentPath(), {
      apiVersion: 'snapshot.storage.k8s.io/v1',
      kind: 'VolumeSnapshotContent',
      metadata: { name: `pre-${ns}` },
      spec: {
        deletionPolicy: 'Retain',
        driver: 'csi.loopsnap.dev',
        source: { snapshotHandle: 'snap-handle-1' },
        volumeSnapshotRef: { name: 'pre', namespace: ns },
      },
    });
    const vs = await rest.create<Obj>(snapPath(), snapshot('pre', { volumeSnapshotContentName: `pre-${ns}` }));
    const bound = await waitFor('bound content', async () => {
      const c = await get(contentPath(`pre-${ns}`));
      return (c?.spec?.volumeSnapshotRef as { uid?: string })?.uid === vs.metadata.uid && c?.status?.error
        ? c
        : undefined;
    });
    expect(bound.status?.error?.message).toContain('snap-handle-1');
    await waitEvent('pre', 'SnapshotContentCheckandUpdateFailed');
    await rest.delete(snapPath('pre'));
    await waitFor('snapshot gone', async () => (await get(snapPath('pre'))) === undefined);
    await sleep(1000);
    const kept = await get(contentPath(`pre-${ns}`));
    expect(kept).toBeDefined();
    expect(kept?.metadata.deletionTimestamp).toBeUndefined();
  });
});

describe('leader election on a real Lease', () => {
  const cluster = useCluster('ctl-le');
  let pki: TestPki;

  beforeAll(async () => {
    pki = await createTestPki();
  });
  afterAll(async () => {
    await pki.cleanup();
  });

  it('4-1 - of two replicas exactly one leads; when it stops the other takes over within the lease duration', async () => {
    const ns = cluster.namespace;
    const a = await startInProcess(
      cluster.kc,
      [...baseArgs({ namespace: ns, pki }), '--leader-election-identity', 'replica-a'],
      pki,
    );
    const b = await startInProcess(
      cluster.kc,
      [...baseArgs({ namespace: ns, pki }), '--leader-election-identity', 'replica-b'],
      pki,
    );
    try {
      const leader = await waitFor('a leader', () =>
        a.controller.isLeader ? a : b.controller.isLeader ? b : undefined,
      );
      const other = leader === a ? b : a;
      await sleep(2000);
      expect([a.controller.isLeader, b.controller.isLeader].filter(Boolean)).toHaveLength(1);
      expect(other.controller.isLeader).toBe(false);
      expect(leader.controller.ready).toBe(true);
      const t0 = Date.now();
      await leader.stop();
      await waitFor('takeover', () => other.controller.isLeader, { timeoutMs: 10_000 });
      // A clean stop releases the Lease: no need to wait for it to expire.
      expect(Date.now() - t0).toBeLessThan(4000);
      await waitFor('started controllers', () => other.lines.some((l) => l.msg === 'Controller started'), {
        timeoutMs: 10_000,
      });
    } finally {
      await a.stop();
      await b.stop();
    }
  });
});
