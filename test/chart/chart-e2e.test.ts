// SPDX-License-Identifier: Apache-2.0
// The chart end to end, and least privilege for real: after `helm install`, the controller and the node
// plugins work under exactly the chart's RBAC (the ServiceAccount tokens of the release), flags and TLS
// Secrets, through provisioning, snapshots of each method's class, restore, clone and expansion, and no API
// call of theirs is ever refused. One file, two modes (lib/e2e-target.ts): locally (root; the kubelet
// stand-in calls NodeStage/NodePublish) and on a real cluster with real pods (hack/kind-e2e.sh).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { isRoot } from '../csi/plugin.js';
import { waitFor } from '../support/wait.js';
import { serviceAccountKubeconfig } from './lib/chart-components.js';
import { e2eMode, type E2eTarget, RELEASE_NS, startE2eTarget, type VolumeIo } from './lib/e2e-target.js';

const MODE = e2eMode();
const APPS = 'loopsnap-e2e-apps';

type Obj = {
  metadata: { name: string; annotations?: Record<string, string> };
  spec: { volumeName?: string; capacity?: { storage?: string }; volumeSnapshotClassName?: string; driver?: string };
  status?: {
    phase?: string;
    readyToUse?: boolean;
    boundVolumeSnapshotContentName?: string;
    capacity?: { storage?: string };
    error?: { message?: string };
  };
};

const title =
  MODE === 'local'
    ? 'the chart end to end, locally (root: node plugins and controllers as processes under the chart RBAC)'
    : 'the chart end to end on the cluster of $KUBECONFIG (real pods)';

describe.skipIf(MODE === 'local' && !isRoot)(title, () => {
  let t: E2eTarget;
  const get = (path: string) => t.rest.get<Obj>(path).catch(() => undefined);
  const vs = (name: string) => get(`/apis/snapshot.storage.k8s.io/v1/namespaces/${APPS}/volumesnapshots/${name}`);
  const kubectl = (args: readonly string[], input?: string) => t.cluster.kubectl(args, input);
  const json = <T>(args: readonly string[]): T => JSON.parse(kubectl([...args, '-o', 'json'])) as T;
  const snapshot = (name: string, claim: string, cls?: string) =>
    kubectl(
      ['apply', '-f', '-'],
      JSON.stringify({
        apiVersion: 'snapshot.storage.k8s.io/v1',
        kind: 'VolumeSnapshot',
        metadata: { name, namespace: APPS },
        spec: { ...(cls ? { volumeSnapshotClassName: cls } : {}), source: { persistentVolumeClaimName: claim } },
      }),
    );
  const ready = (name: string) =>
    waitFor(
      `VolumeSnapshot ${name} ready`,
      async () => {
        const s = await vs(name);
        if (s?.status?.readyToUse === true) return s;
        if (s?.status?.error?.message) throw new Error(s.status.error.message); // shown on timeout
        return undefined;
      },
      { timeoutMs: 180_000 },
    );

  beforeAll(async () => {
    t = await startE2eTarget(['node-a', 'node-b']);
    t.cluster.tryKubectl(['delete', 'namespace', APPS, '--wait=true', '--timeout=180s']);
    kubectl(['create', 'namespace', APPS]);
  }, 900_000);

  afterAll(async () => {
    if (!t) return;
    await t.unmountAll().catch(() => undefined);
    t.cluster.tryKubectl(['delete', 'namespace', APPS, '--wait=true', '--timeout=180s']);
    await t.stop();
  }, 600_000);

  it('the release ServiceAccounts carry only the chart RBAC (kubectl auth can-i with their tokens)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'loopsnap-e2e-sa-'));
    onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    const ctl = serviceAccountKubeconfig(t.cluster, RELEASE_NS, 'loopsnap-controller', join(dir, 'ctl.kubeconfig'));
    const node = serviceAccountKubeconfig(t.cluster, RELEASE_NS, 'loopsnap-node', join(dir, 'node.kubeconfig'));
    // The later --kubeconfig wins over the admin one.
    const can = (kubeconfig: string, args: string[]) =>
      t.cluster.tryKubectl(['--kubeconfig', kubeconfig, 'auth', 'can-i', ...args]).stdout.trim();
    expect(can(ctl, ['list', 'volumesnapshots', '-A'])).toBe('yes');
    expect(can(ctl, ['create', 'persistentvolumes'])).toBe('yes');
    expect(can(ctl, ['update', 'persistentvolumes'])).toBe('no');
    expect(can(ctl, ['get', 'secrets', '-n', RELEASE_NS])).toBe('no');
    expect(can(ctl, ['create', 'pods', '-n', APPS])).toBe('no');
    expect(can(ctl, ['update', 'leases/loopsnap-controller-leader', '-n', RELEASE_NS])).toBe('yes');
    expect(can(ctl, ['update', 'leases/loopsnap-node-node-a', '-n', RELEASE_NS])).toBe('no');
    expect(can(node, ['update', 'leases', '-n', RELEASE_NS])).toBe('yes');
    expect(can(node, ['update', 'leases', '-n', 'default'])).toBe('no');
    expect(can(node, ['list', 'persistentvolumes'])).toBe('no');
    expect(can(node, ['get', 'secrets', '-n', RELEASE_NS])).toBe('no');
  });

  it('one controller replica leads, every node plugin holds its registry Lease, capacity is published per node', async () => {
    type Lease = { metadata: { name: string }; spec: { holderIdentity?: string } };
    await waitFor(
      'leader and node Leases',
      () => {
        const leases = json<{ items: Lease[] }>(['-n', RELEASE_NS, 'get', 'leases']).items;
        const holder = (n: string) => leases.find((l) => l.metadata.name === n)?.spec.holderIdentity;
        return (
          Boolean(holder('loopsnap-controller-leader')) && t.nodes.every((n) => holder(`loopsnap-node-${n}`) === n)
        );
      },
      { timeoutMs: 120_000 },
    );
    await waitFor(
      'a CSIStorageCapacity per node',
      () =>
        json<{ items: unknown[] }>(['-n', RELEASE_NS, 'get', 'csistoragecapacities']).items.length === t.nodes.length,
      { timeoutMs: 120_000 },
    );
  });

  let data: VolumeIo;
  let sums: Record<string, string> = {};

  it('provisions a claim, snapshots it with the default class and restores the snapshot to a new claim', async () => {
    const node = t.nodes[0]!;
    t.createClaim(APPS, 'data', { node });
    data = await t.mount(APPS, 'data');
    expect(data.nodeId).toBe(node);
    sums = await data.writeFiles([1 << 20, 4096, 200_000]);
    snapshot('snap', 'data');
    const snap = await ready('snap');
    const content = await get(
      `/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents/${snap.status!.boundVolumeSnapshotContentName!}`,
    );
    expect(content?.spec).toMatchObject({ volumeSnapshotClassName: 'loopsnap', driver: 'csi.loopsnap.dev' });
    const after = await data.writeFiles([1 << 20]); // overwrites file-0.bin after the cut
    expect(after['file-0.bin']).not.toBe(sums['file-0.bin']);
    t.createClaim(APPS, 'restored', {
      node,
      dataSource: { kind: 'VolumeSnapshot', name: 'snap', apiGroup: 'snapshot.storage.k8s.io' },
    });
    const restored = await t.mount(APPS, 'restored');
    expect(restored.nodeId).toBe(node);
    expect(await restored.checksumFiles(Object.keys(sums))).toEqual(sums);
  });

  it("clones a claim: the clone has the source's current data and is independent of it", async () => {
    const names = Object.keys(sums);
    const current = await data.checksumFiles(names);
    t.createClaim(APPS, 'cloned', { node: data.nodeId, dataSource: { kind: 'PersistentVolumeClaim', name: 'data' } });
    const cloned = await t.mount(APPS, 'cloned');
    expect(await cloned.checksumFiles(names)).toEqual(current);
    await cloned.writeFiles([8192]);
    expect(await data.checksumFiles(names)).toEqual(current);
  });

  // The chart's third class, loopsnap-clone, needs the engine's independent images (the node plugin refuses
  // the method until then, csi/src/driver/snapshot-service.ts); its RBAC path is the same as these.
  it.each([['loopsnap'], ['loopsnap-meta-bitmap']])('takes a snapshot with the chart class %s', async (cls) => {
    snapshot(`snap-${cls}`, 'data', cls);
    await ready(`snap-${cls}`);
  });

  it('expands a claim in use: the controller grows the raw block device online, the kubelet side finds it done', async () => {
    const node = t.nodes[1] ?? t.nodes[0]!;
    t.createClaim(APPS, 'grow', { node, volumeMode: 'Block' });
    await t.mount(APPS, 'grow');
    const pvName = (await get(`/api/v1/namespaces/${APPS}/persistentvolumeclaims/grow`))?.spec.volumeName;
    kubectl([
      '-n',
      APPS,
      'patch',
      'pvc',
      'grow',
      '--type=merge',
      '-p',
      '{"spec":{"resources":{"requests":{"storage":"128Mi"}}}}',
    ]);
    await waitFor(
      'PV capacity 128Mi',
      async () => (await get(`/api/v1/persistentvolumes/${pvName}`))?.spec.capacity?.storage === '128Mi',
      { timeoutMs: 120_000 },
    );
    await t.completeExpansion(APPS, 'grow', '128Mi');
    expect((await get(`/api/v1/namespaces/${APPS}/persistentvolumeclaims/grow`))?.status?.capacity?.storage).toBe(
      '128Mi',
    );
  });

  it('records Events on the objects it works on', () => {
    const events = json<{ items: Array<{ source?: { component?: string }; reportingComponent?: string }> }>([
      '-n',
      APPS,
      'get',
      'events',
    ]).items;
    expect(events.some((e) => (e.reportingComponent ?? e.source?.component ?? '').includes('loopsnap'))).toBe(true);
  });

  it('deletes the volumes and snapshots when their objects go, leaving no loop device or mount', async () => {
    await t.unmountAll();
    kubectl(['-n', APPS, 'delete', 'volumesnapshot', '--all', '--wait=false']);
    kubectl(['-n', APPS, 'delete', 'pvc', '--all', '--wait=false']);
    await waitFor(
      'the test namespace`s PVs and snapshot contents to be deleted',
      () => {
        const pvs = json<{ items: Array<{ spec: { claimRef?: { namespace?: string } } }> }>(['get', 'pv']).items;
        const contents = json<{ items: Array<{ spec: { volumeSnapshotRef: { namespace?: string } } }> }>([
          'get',
          'volumesnapshotcontents',
        ]).items;
        return (
          !pvs.some((p) => p.spec.claimRef?.namespace === APPS) &&
          !contents.some((c) => c.spec.volumeSnapshotRef.namespace === APPS)
        );
      },
      { timeoutMs: 180_000 },
    );
    expect(await t.leftovers()).toEqual([]);
  });

  it('no API call of a component was refused (403) during all of this', () => {
    const refused = t.componentLogs().filter((l) => /forbidden|"statusCode":403|\b403\b/i.test(l));
    expect(refused).toEqual([]);
  });
});
