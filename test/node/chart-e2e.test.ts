// SPDX-License-Identifier: Apache-2.0
// The chart end to end, and least privilege for real: the release's controller and node plugin pods work
// under exactly the chart's RBAC (their ServiceAccount tokens), flags and TLS Secrets, through snapshots of
// each of the chart's VolumeSnapshotClasses, restores, an online expansion and deletion, with real pods, and
// no API call of theirs is ever refused. On this machine's node, or on a kind cluster (hack/kind-e2e.sh).
// What test/node/workloads.test.ts checks (a default-class snapshot restored while the source writes, a claim
// clone, a VolumeRestore, xfs growth with the kubelet's NodeExpandVolume) is not repeated here.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { realNodeUsable, RELEASE_NS, useRealCluster } from '../support/real-node.js';
import { waitFor } from '../support/wait.js';
import { leftoversOnNode, recordOnNode } from './lib/node-host.js';
import {
  contentOf,
  deleteVolumesAndSnapshots,
  eventsOf,
  fromSnapshot,
  get,
  getJson,
  resizeClaim,
  volumeOf,
} from './lib/objects.js';
import { deviceBytes, MiB, sumAt, writeFiles, fileSums, writeRandomAt } from './lib/pod-io.js';
import { startPod, stopPod } from './lib/pods.js';
import { serviceAccountKubeconfig } from './lib/service-account.js';
import {
  apply,
  BLOCK_DUMP,
  BLOCK_WRITER,
  checkBlockDump,
  claim,
  exec,
  FILE_CHECK,
  FILE_WRITER,
  snapshot,
  waitSnapshotReady,
} from './lib/workloads.js';

describe('the chart end to end with real pods: RBAC, Leases, capacity, each snapshot class, expansion, deletion', () => {
  if (!realNodeUsable()) return;
  const c = useRealCluster('e2e');
  /** Volume and snapshot handles this file made, for the leak check at the end. */
  const handles: string[] = [];
  const fileCount = (p: string): number => Number(exec(c, p, 'wc -l < /data/w/sums 2>/dev/null || echo 0').trim());
  const nodeOf = (pod: string): string =>
    c.kubectl(['-n', c.namespace, 'get', 'pod', pod, '-o', 'jsonpath={.spec.nodeName}']).trim();

  it('the release ServiceAccounts carry only the chart RBAC (kubectl auth can-i with their tokens)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'loopsnap-e2e-sa-'));
    onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    const ctl = serviceAccountKubeconfig(c, RELEASE_NS, 'loopsnap-controller', join(dir, 'ctl.kubeconfig'));
    const node = serviceAccountKubeconfig(c, RELEASE_NS, 'loopsnap-node', join(dir, 'node.kubeconfig'));
    // The later --kubeconfig wins over the admin one.
    const can = (kubeconfig: string, args: string[]) =>
      c.tryKubectl(['--kubeconfig', kubeconfig, 'auth', 'can-i', ...args]).stdout.trim();
    expect(can(ctl, ['list', 'volumesnapshots', '-A'])).toBe('yes');
    expect(can(ctl, ['create', 'persistentvolumes'])).toBe('yes');
    expect(can(ctl, ['update', 'persistentvolumes'])).toBe('no');
    expect(can(ctl, ['get', 'secrets', '-n', RELEASE_NS])).toBe('no');
    expect(can(ctl, ['create', 'pods', '-n', c.namespace])).toBe('no');
    expect(can(ctl, ['update', 'leases/loopsnap-controller-leader', '-n', RELEASE_NS])).toBe('yes');
    expect(can(ctl, ['update', `leases/loopsnap-node-${c.nodes[0]}`, '-n', RELEASE_NS])).toBe('no');
    expect(can(node, ['update', 'leases', '-n', RELEASE_NS])).toBe('yes');
    expect(can(node, ['update', 'leases', '-n', 'default'])).toBe('no');
    expect(can(node, ['list', 'persistentvolumes'])).toBe('no');
    expect(can(node, ['get', 'secrets', '-n', RELEASE_NS])).toBe('no');
  });

  it('one controller pod leads, every node plugin holds its registry Lease, capacity is published per node', async () => {
    type Lease = { metadata: { name: string }; spec: { holderIdentity?: string } };
    const controllers = c
      .kubectl(['-n', RELEASE_NS, 'get', 'pods', '-l', 'app.kubernetes.io/component=controller', '-o', 'name'])
      .trim()
      .split('\n')
      .map((n) => n.replace(/^pod\//, ''));
    await waitFor(
      'the leader Lease held by a controller pod, a registry Lease per node held by its plugin',
      () => {
        const leases = getJson<{ items: Lease[] }>(c, ['-n', RELEASE_NS, 'leases']).items;
        const holder = (n: string) => leases.find((l) => l.metadata.name === n)?.spec.holderIdentity;
        return (
          controllers.includes(holder('loopsnap-controller-leader') ?? '') &&
          c.nodes.every((n) => holder(`loopsnap-node-${n}`) === n)
        );
      },
      { timeoutMs: 120_000, intervalMs: 500 },
    );
    type Capacity = { storageClassName: string; nodeTopology?: { matchLabels?: Record<string, string> } };
    await waitFor(
      'a CSIStorageCapacity of the chart`s StorageClass per node',
      () => {
        const caps = getJson<{ items: Capacity[] }>(c, ['-n', RELEASE_NS, 'csistoragecapacities']).items;
        const nodes = caps
          .filter((k) => k.storageClassName === 'loopsnap')
          .map((k) => k.nodeTopology?.matchLabels?.['topology.loopsnap.dev/node'] ?? '')
          .sort();
        return JSON.stringify(nodes) === JSON.stringify([...c.nodes].sort());
      },
      { timeoutMs: 120_000, intervalMs: 500 },
    );
  });

  it('snapshots a claim a pod writes to with the classes loopsnap and loopsnap-meta-bitmap: on its node, restorable', async () => {
    apply(c, claim(c.namespace, 'data'));
    startPod(c, 'writer', 'data', { script: FILE_WRITER });
    await waitFor('20 files written', () => fileCount('writer') >= 20, { timeoutMs: 120_000, intervalMs: 500 });
    const vol = volumeOf(c, 'data');
    handles.push(vol.volumeHandle);
    expect(get(c, 'pv', vol.pvName, false).metadata.annotations?.['pv.kubernetes.io/provisioned-by']).toBe(
      'csi.loopsnap.dev',
    );
    expect(vol.node).toBe(nodeOf('writer'));
    const methods = { loopsnap: 'save-volume', 'loopsnap-meta-bitmap': 'meta-bitmap' } as const;
    for (const cls of Object.keys(methods)) snapshot(c, `s-${cls}`, 'data', cls);
    for (const [cls, method] of Object.entries(methods)) {
      waitSnapshotReady(c, `s-${cls}`);
      expect(get(c, 'volumesnapshot', `s-${cls}`).status?.restoreSize).toBe('64Mi');
      const content = contentOf(c, `s-${cls}`);
      expect(content.spec).toMatchObject({ volumeSnapshotClassName: cls, driver: 'csi.loopsnap.dev' });
      expect(content.metadata.labels?.['snapshot.storage.kubernetes.io/managed-by']).toBe(vol.node);
      expect(
        content.metadata.annotations?.['snapshot.storage.kubernetes.io/volumesnapshot-being-created'],
      ).toBeUndefined();
      const handle = content.status?.snapshotHandle as string;
      handles.push(handle);
      expect(recordOnNode(c, vol.node, 'snapshots', handle)).toMatchObject({
        sourceVolumeId: vol.volumeHandle,
        method,
        phase: 'ready',
      });
    }
    // The default class's restore is workloads.test.ts's; this one restores the meta-bitmap snapshot.
    apply(c, claim(c.namespace, 'from-meta', { dataSource: fromSnapshot('s-loopsnap-meta-bitmap') }));
    startPod(c, 'meta-reader', 'from-meta');
    expect(nodeOf('meta-reader')).toBe(vol.node);
    expect(exec(c, 'meta-reader', FILE_CHECK)).toMatch(/^OK \d+$/m);
    handles.push(volumeOf(c, 'from-meta').volumeHandle);
  });

  it('a snapshot of class loopsnap-clone is an independent copy: restorable after its source claim is deleted', async () => {
    apply(c, claim(c.namespace, 'solo'));
    startPod(c, 'solo-writer', 'solo');
    const sums = writeFiles(c, 'solo-writer', [2 * MiB, 300_000, 4096]);
    const solo = volumeOf(c, 'solo');
    handles.push(solo.volumeHandle);
    snapshot(c, 'image', 'solo', 'loopsnap-clone');
    waitSnapshotReady(c, 'image');
    expect(get(c, 'volumesnapshot', 'image').status?.restoreSize).toBe('64Mi');
    const content = contentOf(c, 'image');
    expect(content.spec.volumeSnapshotClassName).toBe('loopsnap-clone');
    const handle = content.status?.snapshotHandle as string;
    handles.push(handle);
    expect(recordOnNode(c, solo.node, 'snapshots', handle)).toMatchObject({ method: 'clone', readyToUse: true });
    // Writes after the cut are not in the image.
    writeFiles(c, 'solo-writer', [8192]);
    await stopPod(c, 'solo-writer');
    c.kubectl(['-n', c.namespace, 'delete', 'pvc', 'solo', '--wait=true', '--timeout=120s']);
    await waitFor(`PV ${solo.pvName} deleted`, () => c.tryKubectl(['get', 'pv', solo.pvName]).code !== 0, {
      timeoutMs: 120_000,
      intervalMs: 500,
    });
    apply(c, claim(c.namespace, 'from-image', { dataSource: fromSnapshot('image') }));
    startPod(c, 'image-reader', 'from-image');
    expect(fileSums(c, 'image-reader')).toEqual(sums);
    handles.push(volumeOf(c, 'from-image').volumeHandle);
  });

  it('grows a raw block claim under a writing pod: the controller grows the device online, nothing is left for the kubelet', async () => {
    apply(c, claim(c.namespace, 'grow', { volumeMode: 'Block' }));
    startPod(c, 'grow-writer', 'grow', { block: true, script: BLOCK_WRITER });
    await waitFor('generation 1 of the pattern', () => exec(c, 'grow-writer', 'ls /tmp').includes('gen1'), {
      timeoutMs: 180_000,
      intervalMs: 500,
    });
    const vol = volumeOf(c, 'grow');
    handles.push(vol.volumeHandle);
    resizeClaim(c, 'grow', '128Mi');
    const st = await waitFor(
      'the claim`s status.capacity 128Mi',
      () => {
        const s = get(c, 'pvc', 'grow').status;
        return s?.capacity?.storage === '128Mi' ? s : undefined;
      },
      { timeoutMs: 120_000, intervalMs: 500 },
    );
    // Finished by the controller alone: no node step pending, no resize condition left.
    expect(st.allocatedResources?.storage).toBe('128Mi');
    expect(st.allocatedResourceStatuses?.storage).toBeUndefined();
    expect(st.conditions ?? []).toEqual([]);
    expect(get(c, 'pv', vol.pvName, false).spec.capacity?.storage).toBe('128Mi');
    // The running pod's device has the new size at once; the writer never stopped.
    expect(deviceBytes(c, 'grow-writer')).toBe(128 * MiB);
    expect(get(c, 'pod', 'grow-writer').status?.containerStatuses?.[0]?.restartCount).toBe(0);
    const tail = writeRandomAt(c, 'grow-writer', 128 * MiB - 256 * 1024, 256 * 1024);
    const reasons = eventsOf(c, 'grow').map((e) => e.reason);
    expect(reasons).toEqual(expect.arrayContaining(['Resizing', 'VolumeResizeSuccessful']));
    expect(reasons).not.toContain('FileSystemResizeRequired');
    // A new pod sees the pattern (one cut: the writer was killed mid-generation) and the tail beyond 64Mi.
    await stopPod(c, 'grow-writer');
    startPod(c, 'grow-reader', 'grow', { block: true });
    expect(deviceBytes(c, 'grow-reader')).toBe(128 * MiB);
    checkBlockDump(exec(c, 'grow-reader', BLOCK_DUMP));
    expect(sumAt(c, 'grow-reader', 128 * MiB - 256 * 1024, 256 * 1024)).toBe(tail);
  });

  it('records Events on the objects it works on, from its own components', () => {
    const fromLoopsnap = (name: string) =>
      eventsOf(c, name)
        .filter((e) => (e.reportingComponent ?? e.source?.component ?? '').includes('loopsnap'))
        .map((e) => e.reason);
    expect(fromLoopsnap('data')).toEqual(expect.arrayContaining(['Provisioning', 'ProvisioningSucceeded']));
    // A retried API conflict on the way is not a failure the user has to read about.
    expect(fromLoopsnap('data')).not.toContain('ProvisioningFailed');
    expect(fromLoopsnap('s-loopsnap')).toEqual(expect.arrayContaining(['SnapshotCreated', 'SnapshotReady']));
  });

  it('deletes the volumes and snapshots when their objects go, leaving nothing of them on the node', async () => {
    // The probe sees them while they exist.
    expect(c.nodes.flatMap((node) => leftoversOnNode(c, node, handles))).not.toEqual([]);
    for (const p of ['writer', 'meta-reader', 'image-reader', 'grow-reader']) await stopPod(c, p);
    await deleteVolumesAndSnapshots(c);
    for (const node of c.nodes) {
      await waitFor(`nothing of the file's volumes and snapshots left on ${node}`, () =>
        leftoversOnNode(c, node, handles).length === 0 ? true : undefined,
      ).catch((err: Error) => {
        throw new Error(`${err.message}:\n${leftoversOnNode(c, node, handles).join('\n')}`);
      });
    }
  });

  it('no API call of a component was refused (403) during all of this', () => {
    const logs = (component: string): string[] =>
      c
        .kubectl([
          '-n',
          RELEASE_NS,
          'logs',
          '-l',
          `app.kubernetes.io/component=${component}`,
          '--all-containers',
          '--tail=-1',
        ])
        .split('\n');
    const lines = [...logs('controller'), ...logs('node')];
    expect(lines.length).toBeGreaterThan(10);
    expect(lines.filter((l) => /forbidden|"statusCode":403|\b403\b/i.test(l))).toEqual([]);
  });
});
