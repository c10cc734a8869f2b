// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from 'vitest';
import { ErrorCode } from './errors.js';
import { content, DRIVER, node, pv, pvc, storageClass, vs } from './fixtures.testing.js';
import { ANN_PROVISIONING_NODE, ANN_SELECTED_NODE, FIN_PVC_PROVISIONING, TOPOLOGY_KEY } from './names.js';
import { buildPv, classifySource, decideProvisionAction, type ProvisionWorld } from './provision-logic.js';
import { decidePvAction } from './pv-controller.js';

const GiB = 1024n ** 3n;
const chosen = (n: string) => ({ annotations: { [ANN_PROVISIONING_NODE]: n }, finalizers: [FIN_PVC_PROVISIONING] });
const snapSource = { apiGroup: 'snapshot.storage.k8s.io', kind: 'VolumeSnapshot', name: 'snap' };
const readySnap = vs('snap', { status: { readyToUse: true, boundVolumeSnapshotContentName: 'sc1' } });
const snapContent = content('sc1', {
  node: 'node-b',
  status: { snapshotHandle: 'h1', readyToUse: true, restoreSize: Number(GiB) },
});
snapContent.spec.sourceVolumeMode = 'Filesystem';

const w = (over: Partial<ProvisionWorld>): ProvisionWorld => ({
  driver: DRIVER,
  defaultFsType: 'ext4',
  pvc: pvc('p1'),
  storageClass: storageClass(),
  source: { kind: 'none' },
  nodes: [node('node-a', { capacity: 10n * GiB }), node('node-b', { capacity: 50n * GiB })],
  ...over,
});
const snapWorld = (p = pvc('r1', { dataSource: snapSource })) =>
  w({
    pvc: p,
    source: { kind: 'snapshot', name: 'snap', snapshot: readySnap, content: snapContent, nodes: ['node-b'] },
  });

describe('decideProvisionAction', () => {
  it('1-1 - ignores PVCs of other provisioners', () => {
    expect(decideProvisionAction(w({ storageClass: storageClass('x', { provisioner: 'other' }) }))).toEqual({
      type: 'ignore',
    });
  });

  it('1-2 - picks the ready node with the most free space', () => {
    expect(decideProvisionAction(w({}))).toEqual({ type: 'chooseNode', node: 'node-b' });
  });

  it('1-3 - skips nodes that are down or too small and says why when none fits', () => {
    const got = decideProvisionAction(
      w({
        pvc: pvc('p1', { size: '20Gi' }),
        nodes: [node('node-a', { capacity: 10n * GiB }), node('node-b', { ready: false })],
      }),
    );
    expect(got).toMatchObject({ type: 'fail', code: ErrorCode.NoSuitableNode });
    if (got.type === 'fail') {
      expect(got.message).toContain('node-a: 10Gi free < 20Gi requested');
      expect(got.message).toContain('node-b: Lease not renewed');
    }
  });

  it('1-4 - says so when no node plugin is registered at all', () => {
    expect(decideProvisionAction(w({ nodes: [] }))).toMatchObject({
      type: 'fail',
      message: expect.stringContaining('no node plugin is registered'),
    });
  });

  it('1-5 - honours the StorageClass allowedTopologies', () => {
    expect(decideProvisionAction(w({ storageClass: storageClass('loopsnap', { allowed: ['node-a'] }) }))).toEqual({
      type: 'chooseNode',
      node: 'node-a',
    });
  });

  it('2-1 - WaitForFirstConsumer waits for the selected-node annotation', () => {
    expect(decideProvisionAction(w({ storageClass: storageClass('loopsnap', { wffc: true }) }))).toEqual({
      type: 'done',
    });
  });

  it('2-2 - WaitForFirstConsumer uses the node the scheduler selected', () => {
    const p = pvc('p1', { annotations: { [ANN_SELECTED_NODE]: 'node-a' } });
    expect(decideProvisionAction(w({ pvc: p, storageClass: storageClass('loopsnap', { wffc: true }) }))).toEqual({
      type: 'chooseNode',
      node: 'node-a',
    });
  });

  it('3-1 - once the node is persisted, provisions there with the topology requirement', () => {
    const got = decideProvisionAction(w({ pvc: pvc('p1', chosen('node-a')) }));
    expect(got).toMatchObject({
      type: 'provision',
      node: 'node-a',
      fsType: 'ext4',
      request: { name: 'pvc-uid-p1', requiredBytes: GiB, topology: { [TOPOLOGY_KEY]: 'node-a' } },
    });
  });

  it('3-2 - releases its finalizer once the PV exists', () => {
    expect(decideProvisionAction(w({ pvc: pvc('p1', chosen('node-a')), pv: pv('pvc-uid-p1') }))).toEqual({
      type: 'releaseFinalizer',
    });
  });

  it('3-3 - a PVC deleted between CreateVolume and the PV cleans up the volume with the same request', () => {
    const p = pvc('p1', { ...chosen('node-a'), deleting: true });
    expect(decideProvisionAction(w({ pvc: p }))).toMatchObject({
      type: 'cleanupAbandoned',
      node: 'node-a',
      request: { name: 'pvc-uid-p1' },
    });
  });

  it('4-1 - restore: waits for the snapshot to be ready', () => {
    const notReady = vs('snap', { status: { readyToUse: false } });
    const got = decideProvisionAction(
      w({
        pvc: pvc('r1', { dataSource: snapSource }),
        source: { kind: 'snapshot', name: 'snap', snapshot: notReady, nodes: [] },
      }),
    );
    expect(got).toMatchObject({ type: 'fail', code: ErrorCode.DataSourceNotReady });
  });

  it('4-2 - restore: goes to the node that holds the snapshot, whatever its free space', () => {
    expect(decideProvisionAction(snapWorld())).toEqual({ type: 'chooseNode', node: 'node-b' });
  });

  it('4-3 - restore: passes the snapshot handle as the content source', () => {
    const p = pvc('r1', { dataSource: snapSource, ...chosen('node-b') });
    expect(decideProvisionAction(snapWorld(p))).toMatchObject({
      type: 'provision',
      request: { source: { snapshotId: 'h1' } },
    });
  });

  it('4-4 - restore: refuses a size below the restore size', () => {
    expect(decideProvisionAction(snapWorld(pvc('r1', { dataSource: snapSource, size: '512Mi' })))).toMatchObject({
      type: 'fail',
      code: ErrorCode.InvalidSpec,
    });
  });

  it('4-5 - restore: refuses a volume mode change unless the content allows it', () => {
    expect(decideProvisionAction(snapWorld(pvc('r1', { dataSource: snapSource, mode: 'Block' })))).toMatchObject({
      type: 'fail',
      code: ErrorCode.DataSourceInvalid,
    });
  });

  it('4-6 - restore: a scheduler choice that does not hold the snapshot is an error that names both', () => {
    const p = pvc('r1', { dataSource: snapSource, annotations: { [ANN_SELECTED_NODE]: 'node-a' } });
    const got = decideProvisionAction({ ...snapWorld(p), storageClass: storageClass('loopsnap', { wffc: true }) });
    expect(got).toMatchObject({ type: 'fail', message: expect.stringContaining('"node-a"') });
  });

  it("5-1 - clone: goes to the source PV's node with the source volume id", () => {
    const src = pvc('data', { bound: 'pv-1' });
    const p = pvc('c1', { dataSource: { kind: 'PersistentVolumeClaim', name: 'data' } });
    const world = w({
      pvc: p,
      source: { kind: 'pvc', name: 'data', pvc: src, pv: pv('pv-1', { node: 'node-a', handle: 'vol-9' }) },
    });
    expect(decideProvisionAction(world)).toEqual({ type: 'chooseNode', node: 'node-a' });
    const p2 = pvc('c1', { dataSource: { kind: 'PersistentVolumeClaim', name: 'data' }, ...chosen('node-a') });
    expect(decideProvisionAction({ ...world, pvc: p2 })).toMatchObject({
      type: 'provision',
      request: { source: { volumeId: 'vol-9' } },
    });
  });

  it('5-2 - clone: waits for an unbound source PVC', () => {
    const p = pvc('c1', { dataSource: { kind: 'PersistentVolumeClaim', name: 'data' } });
    expect(decideProvisionAction(w({ pvc: p, source: { kind: 'pvc', name: 'data', pvc: pvc('data') } }))).toMatchObject(
      { type: 'fail', code: ErrorCode.DataSourceNotReady },
    );
  });

  it('6-1 - unsupported data sources are reported, not ignored', () => {
    const p = pvc('x', { dataSource: { apiGroup: 'example.com', kind: 'Backup', name: 'b' } });
    expect(classifySource(p)).toMatchObject({ kind: 'unsupported' });
    expect(decideProvisionAction(w({ pvc: p, source: classifySource(p) as ProvisionWorld['source'] }))).toMatchObject({
      type: 'fail',
      code: ErrorCode.DataSourceInvalid,
    });
  });

  it('6-2 - reports a missing StorageClass for a PVC annotated for our driver', () => {
    const p = pvc('p1', { sc: 'gone', annotations: { 'volume.kubernetes.io/storage-provisioner': DRIVER } });
    expect(decideProvisionAction(w({ pvc: p, storageClass: undefined }))).toMatchObject({
      type: 'fail',
      code: ErrorCode.ClassNotFound,
    });
  });
});

describe('buildPv', () => {
  it('7-1 - builds a pre-bound PV with CSI source, node affinity, reclaim policy and our finalizer', () => {
    const got = buildPv(
      w({ pvc: pvc('p1', chosen('node-a')) }),
      'node-a',
      { volumeId: 'v1', capacityBytes: GiB, volumeContext: { k: 'v' } },
      'ext4',
    );
    expect(got).toMatchObject({
      metadata: {
        name: 'pvc-uid-p1',
        annotations: { 'pv.kubernetes.io/provisioned-by': DRIVER },
        finalizers: ['external-provisioner.volume.kubernetes.io/finalizer'],
      },
      spec: {
        capacity: { storage: '1Gi' },
        persistentVolumeReclaimPolicy: 'Delete',
        storageClassName: 'loopsnap',
        claimRef: { name: 'p1', namespace: 'ns1', uid: 'uid-p1' },
        csi: { driver: DRIVER, volumeHandle: 'v1', fsType: 'ext4', volumeAttributes: { k: 'v' } },
        nodeAffinity: {
          required: {
            nodeSelectorTerms: [{ matchExpressions: [{ key: TOPOLOGY_KEY, operator: 'In', values: ['node-a'] }] }],
          },
        },
      },
    });
  });
});

describe('decidePvAction', () => {
  const ours = (o: Parameters<typeof pv>[1]) => {
    const p = pv('pvc-1', o);
    p.metadata.annotations = { 'pv.kubernetes.io/provisioned-by': DRIVER };
    p.metadata.finalizers = ['external-provisioner.volume.kubernetes.io/finalizer'];
    return p;
  };
  it.each([
    [
      '8-1 - a Released PV with policy Delete deletes its volume and then itself',
      ours({ phase: 'Released' }),
      { type: 'deleteVolume', thenDeleteObject: true },
    ],
    ['8-2 - a Released PV with policy Retain is kept', ours({ phase: 'Released', policy: 'Retain' }), { type: 'done' }],
    ['8-3 - a bound PV is left alone', ours({ phase: 'Bound' }), { type: 'done' }],
    ['8-4 - PVs not provisioned by us are ignored', pv('x', { phase: 'Released' }), { type: 'ignore' }],
  ])('%s', (_n, p, want) => {
    expect(decidePvAction(p, DRIVER)).toEqual(want);
  });

  it('8-5 - a deleted PV: DeleteVolume for Delete, just the finalizer for Retain', () => {
    const del = ours({ phase: 'Released' });
    del.metadata.deletionTimestamp = 't';
    expect(decidePvAction(del, DRIVER)).toEqual({ type: 'deleteVolume', thenDeleteObject: false });
    const ret = ours({ phase: 'Released', policy: 'Retain' });
    ret.metadata.deletionTimestamp = 't';
    expect(decidePvAction(ret, DRIVER)).toEqual({ type: 'removeFinalizer' });
  });
});
