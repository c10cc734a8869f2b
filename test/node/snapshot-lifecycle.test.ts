// SPDX-License-Identifier: Apache-2.0
// The life of snapshots and claims with real pods on one node: a Retain snapshot kept on the node and imported
// again (examples/pre-provisioned-snapshot.yaml), Delete removing the snapshot on the node, a claim deleted
// while it has snapshots, snapshots deleted in any order under writable restored claims, a WaitForFirstConsumer
// claim provisioned only once the scheduler places its pod, and the controller's metrics of all of it. What
// the node plugin holds is read from its records on the node (test/node/lib/node-host.ts).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { REPO_ROOT } from '../support/paths.js';
import { realNodeUsable, useRealCluster } from '../support/real-node.js';
import { waitFor } from '../support/wait.js';
import { recordOnNode } from './lib/node-host.js';
import { contentOf, fromSnapshot, get, volumeOf, waitBound, waitEvent, waitGone } from './lib/objects.js';
import { fileSums, writeFiles } from './lib/pod-io.js';
import { startPod, stopPod } from './lib/pods.js';
import { componentMetrics, metricValue } from './lib/release.js';
import { apply, claim, snapshot, waitSnapshotReady } from './lib/workloads.js';

const EXAMPLES = join(REPO_ROOT, 'examples');

describe('snapshots and claims through their life, with real pods', () => {
  if (!realNodeUsable()) return;
  const c = useRealCluster('life');
  const snapshotRecord = (snap: string) => {
    const content = contentOf(c, snap);
    const handle = content.status?.snapshotHandle as string;
    const node = content.metadata.labels?.['snapshot.storage.kubernetes.io/managed-by'] as string;
    return { content, handle, node, record: () => recordOnNode(c, node, 'snapshots', handle) };
  };
  const deleteNow = (kind: string, ...names: string[]) =>
    c.kubectl(['-n', c.namespace, 'delete', kind, ...names, '--wait=true', '--timeout=120s']);

  it('1-4 - Retain keeps the snapshot on the node; imported as a pre-provisioned snapshot, it restores', async () => {
    const cls = `${c.namespace}-retain`;
    apply(c, {
      apiVersion: 'snapshot.storage.k8s.io/v1',
      kind: 'VolumeSnapshotClass',
      metadata: { name: cls },
      driver: 'csi.loopsnap.dev',
      deletionPolicy: 'Retain',
      parameters: { method: 'save-volume' },
    });
    onTestFinished(() => void c.tryKubectl(['delete', 'volumesnapshotclass', cls, '--ignore-not-found']));
    apply(c, claim(c.namespace, 'data'));
    startPod(c, 'data-user', 'data');
    const sums = writeFiles(c, 'data-user', [100_000, 5000]);
    snapshot(c, 'kept', 'data', cls);
    waitSnapshotReady(c, 'kept');
    const { content, handle, node, record } = snapshotRecord('kept');
    deleteNow('volumesnapshot', 'kept');
    // The content and the snapshot on the node stay.
    expect(get(c, 'volumesnapshotcontent', content.metadata.name, false).metadata.uid).toBe(content.metadata.uid);
    c.kubectl(['delete', 'volumesnapshotcontent', content.metadata.name, '--wait=true', '--timeout=120s']);
    expect(record()).toMatchObject({ phase: 'ready', sourceVolumeId: volumeOf(c, 'data').volumeHandle });

    const imported = `imported-${c.namespace}`;
    onTestFinished(() => void c.tryKubectl(['delete', 'volumesnapshotcontent', imported, '--ignore-not-found']));
    const yaml = readFileSync(join(EXAMPLES, 'pre-provisioned-snapshot.yaml'), 'utf8')
      .replaceAll('SNAPSHOT_HANDLE', handle)
      .replaceAll('NAMESPACE', c.namespace)
      .replaceAll('imported-content', imported);
    c.kubectl(['apply', '-f', '-'], yaml);
    waitSnapshotReady(c, 'imported-snap');
    expect(get(c, 'volumesnapshot', 'imported-snap').status?.restoreSize).toBe('64Mi');
    expect(
      get(c, 'volumesnapshotcontent', imported, false).metadata.labels?.['snapshot.storage.kubernetes.io/managed-by'],
    ).toBe(node);
    apply(c, claim(c.namespace, 'from-imported', { dataSource: fromSnapshot('imported-snap') }));
    startPod(c, 'imported-reader', 'from-imported');
    expect(fileSums(c, 'imported-reader')).toEqual(sums);
    await stopPod(c, 'imported-reader');
    deleteNow('pvc', 'from-imported');
    // Clean the retained snapshot up on the node through the imported content, made Delete.
    deleteNow('volumesnapshot', 'imported-snap');
    c.kubectl([
      'patch',
      'volumesnapshotcontent',
      imported,
      '--type=merge',
      '-p',
      '{"spec":{"deletionPolicy":"Delete"}}',
    ]);
    await waitGone(c, 'volumesnapshotcontent', imported, false);
    await waitFor('the retained snapshot deleted on the node', () => record() === undefined, {
      timeoutMs: 60_000,
      intervalMs: 500,
    });
  });

  it('1-5 - Delete policy: deleting the VolumeSnapshot deletes its content and the snapshot on the node', async () => {
    snapshot(c, 'data-snap', 'data');
    waitSnapshotReady(c, 'data-snap');
    const { content, record } = snapshotRecord('data-snap');
    expect(record()).toMatchObject({ phase: 'ready' });
    deleteNow('volumesnapshot', 'data-snap');
    await waitGone(c, 'volumesnapshotcontent', content.metadata.name, false);
    expect(record()).toBeUndefined();
  });

  it('1-6 - a claim deleted while it has snapshots: they stay usable, its volume goes with the last of them', async () => {
    apply(c, claim(c.namespace, 'src6'));
    startPod(c, 'src6-user', 'src6');
    const sums = writeFiles(c, 'src6-user', [120_000]);
    snapshot(c, 's6a', 'src6', 'loopsnap');
    snapshot(c, 's6b', 'src6', 'loopsnap-meta-bitmap');
    waitSnapshotReady(c, 's6a');
    waitSnapshotReady(c, 's6b');
    const { pvName } = volumeOf(c, 'src6');
    await stopPod(c, 'src6-user');
    deleteNow('pvc', 'src6');
    // The PV is released; the plugin refuses to delete a volume with snapshots, which is reported on the PV.
    await waitEvent(c, pvName, 'VolumeFailedDelete', { namespace: 'default' });
    expect(get(c, 'pv', pvName, false).status?.phase).toBe('Released');
    apply(c, claim(c.namespace, 'r6', { dataSource: fromSnapshot('s6a') }));
    startPod(c, 'r6-reader', 'r6');
    expect(fileSums(c, 'r6-reader')).toEqual(sums);
    await stopPod(c, 'r6-reader');
    deleteNow('volumesnapshot', 's6a', 's6b');
    await waitGone(c, 'pv', pvName, false);
  });

  it('1-7 - snapshots deleted in any order while writable restored claims are in use keep every volume intact', async () => {
    apply(c, claim(c.namespace, 'src7'));
    startPod(c, 'src7-user', 'src7');
    writeFiles(c, 'src7-user', [50_000], 'gen1');
    snapshot(c, 's7a', 'src7', 'loopsnap');
    waitSnapshotReady(c, 's7a');
    const gen2 = writeFiles(c, 'src7-user', [70_000, 10_000], 'gen2');
    snapshot(c, 's7b', 'src7', 'loopsnap-meta-bitmap');
    waitSnapshotReady(c, 's7b');
    apply(c, claim(c.namespace, 'r7a', { dataSource: fromSnapshot('s7a') }));
    apply(c, claim(c.namespace, 'r7b', { dataSource: fromSnapshot('s7b') }));
    startPod(c, 'r7a-user', 'r7a');
    startPod(c, 'r7b-user', 'r7b');
    const wa = writeFiles(c, 'r7a-user', [30_000], 'wa');
    // The older snapshot first, then the newer one, while both restored claims are mounted read-write.
    c.kubectl(['-n', c.namespace, 'delete', 'volumesnapshot', 's7a', 's7b', '--wait=false']);
    await waitGone(c, 'volumesnapshot', 's7a');
    await waitGone(c, 'volumesnapshot', 's7b');
    expect(fileSums(c, 'r7b-user')).toMatchObject(gen2);
    expect(fileSums(c, 'r7a-user')).toMatchObject(wa);
    const more = writeFiles(c, 'r7b-user', [20_000], 'more');
    expect(fileSums(c, 'r7b-user')).toMatchObject({ ...gen2, ...more });
    expect(fileSums(c, 'src7-user')).toMatchObject(gen2);
  });

  it('1-8 - WaitForFirstConsumer: nothing is provisioned until the scheduler places a pod; then it is provisioned on its node', async () => {
    apply(c, claim(c.namespace, 'wffc'));
    // The PV controller's word that the claim waits for a pod.
    await waitEvent(c, 'wffc', 'WaitForFirstConsumer');
    const pending = get(c, 'pvc', 'wffc');
    expect(pending.status?.phase).toBe('Pending');
    expect(pending.metadata.annotations?.['volume.kubernetes.io/selected-node']).toBeUndefined();
    expect(pending.metadata.annotations?.['loopsnap.dev/provisioning-node']).toBeUndefined();
    startPod(c, 'consumer', 'wffc');
    const node = get(c, 'pod', 'consumer').spec.nodeName as string;
    const bound = await waitBound(c, 'wffc');
    expect(bound.metadata.annotations?.['volume.kubernetes.io/selected-node']).toBe(node);
    expect(bound.metadata.annotations?.['loopsnap.dev/provisioning-node']).toBe(node);
    expect(volumeOf(c, 'wffc').node).toBe(node);
  });

  it('1-10 - the controller`s /metrics: upstream and loopsnap series of the work above', () => {
    const metrics = componentMetrics(c, 'controller');
    expect(
      metricValue(metrics, 'snapshot_controller_operation_total_seconds_count', {
        driver_name: 'csi.loopsnap.dev',
        operation_name: 'CreateSnapshotAndReady',
        operation_status: 'success',
        snapshot_type: 'dynamic',
      }),
    ).toBeGreaterThan(0);
    expect(
      metricValue(metrics, 'loopsnap_reconcile_total', { controller: 'volumesnapshotcontent', result: 'success' }),
    ).toBeGreaterThan(0);
    expect(metrics).toMatch(/loopsnap_reconcile_duration_seconds_bucket\{le="[^"]+",controller="volumesnapshot"\}/);
    expect(metrics).toMatch(/loopsnap_workqueue_depth\{controller="persistentvolumeclaim"\} \d/);
    expect(metricValue(metrics, 'loopsnap_nodes_ready')).toBe(c.nodes.length);
  });
});
