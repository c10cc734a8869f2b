// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from 'vitest';
import type { AgentOperation } from './csi-client/agent-client.js';
import type { PersistentVolume, PersistentVolumeClaim, VolumeSnapshot, VolumeSnapshotContent } from './kube/types.js';
import {
  blockingSibling,
  decideOperationAction,
  FIN_OPERATION,
  type OperationWorld,
  reasonOf,
  statusFromOperation,
  type VolumeOperationObject,
  waitingStatus,
} from './operation-logic.js';

const DRIVER = 'csi.loopsnap.dev';
const NOW = '2026-01-01T00:00:00Z';

function vr(over: Partial<VolumeOperationObject> = {}, spec: Partial<VolumeOperationObject['spec']> = {}) {
  return {
    metadata: {
      name: 'r1',
      namespace: 'ns',
      uid: 'u1',
      finalizers: [FIN_OPERATION],
      creationTimestamp: '2026-01-01T00:00:01Z',
    },
    spec: { pvcName: 'data', volumeSnapshotName: 's1', ...spec },
    ...over,
  } as VolumeOperationObject;
}
const pvc = { metadata: { name: 'data', namespace: 'ns' }, spec: { volumeName: 'pv1' } } as PersistentVolumeClaim;
const pv = {
  metadata: { name: 'pv1' },
  spec: {
    csi: { driver: DRIVER, volumeHandle: 'vol-1' },
    nodeAffinity: {
      required: {
        nodeSelectorTerms: [
          { matchExpressions: [{ key: 'topology.loopsnap.dev/node', operator: 'In', values: ['node-a'] }] },
        ],
      },
    },
  },
} as PersistentVolume;
const vs = {
  metadata: { name: 's1', namespace: 'ns' },
  spec: { source: {} },
  status: { readyToUse: true, boundVolumeSnapshotContentName: 'c1' },
} as VolumeSnapshot;
const content = {
  metadata: { name: 'c1' },
  spec: { driver: DRIVER, deletionPolicy: 'Delete', source: {}, volumeSnapshotRef: {} },
  status: { snapshotHandle: 'snap-1' },
} as VolumeSnapshotContent;

function world(over: Partial<OperationWorld> = {}): OperationWorld {
  return {
    kind: 'restore',
    driver: DRIVER,
    obj: vr(),
    pvc,
    pv,
    snapshot: vs,
    content,
    nodeReady: true,
    siblings: [],
    ...over,
  };
}

const op = (over: Partial<AgentOperation> = {}): AgentOperation => ({
  operationId: 'restore-u1',
  kind: 'restore',
  volumeId: 'vol-1',
  sourceSnapshotId: 'snap-1',
  sourceVolumeId: 'vol-1',
  state: 'RUNNING',
  blocksDone: 5,
  blocksTotal: 20,
  blockSizeBytes: 4096,
  startTimeMs: Date.parse(NOW),
  completionTimeMs: 0,
  restorePointSnapshotId: '',
  restorePointSizeBytes: 0,
  restorePointCreationTimeMs: 0,
  mustFinish: true,
  mode: 'copy',
  message: 'copying',
  errorCode: '',
  ...over,
});

describe('decideOperationAction', () => {
  it('starts a valid restore on the node of the PV with the snapshot handle', () => {
    expect(decideOperationAction(world({ obj: vr({}, { keepRestorePoint: true }) }))).toEqual({
      type: 'start',
      args: {
        nodeId: 'node-a',
        operationId: 'restore-u1',
        volumeId: 'vol-1',
        snapshotHandle: 'snap-1',
        keepRestorePoint: true,
        restorePointName: 'restorepoint-u1',
        fromSource: false,
      },
    });
  });

  it.each([
    [
      'no finalizer yet',
      world({ obj: vr({ metadata: { name: 'r1', namespace: 'ns', uid: 'u1' } }) }),
      'addFinalizer',
      undefined,
    ],
    ['PVC missing', world({ pvc: undefined }), 'setWaiting', 'PvcNotFound'],
    ['PVC unbound', world({ pv: undefined }), 'setWaiting', 'PvcNotBound'],
    ['snapshot missing', world({ snapshot: undefined }), 'setWaiting', 'SnapshotNotFound'],
    [
      'snapshot not ready',
      world({ snapshot: { ...vs, status: { readyToUse: false } } }),
      'setWaiting',
      'SnapshotNotReady',
    ],
    ['node down', world({ nodeReady: false }), 'setWaiting', 'NodeUnavailable'],
    [
      'other driver',
      world({ pv: { ...pv, spec: { ...pv.spec, csi: { driver: 'other', volumeHandle: 'x' } } } }),
      'setWaiting',
      'UnsupportedVolume',
    ],
  ])('%s', (_n, w, type, reason) => {
    const a = decideOperationAction(w);
    expect(a.type).toBe(type);
    if (reason) expect(a).toMatchObject({ reason });
  });

  it('refuses a snapshot held by another node than the volume (not in its lineage)', () => {
    const other = {
      ...content,
      metadata: { name: 'c1', labels: { 'snapshot.storage.kubernetes.io/managed-by': 'node-b' } },
    };
    expect(decideOperationAction(world({ content: other }))).toMatchObject({
      type: 'setWaiting',
      final: true,
      reason: 'NotInLineage',
    });
  });

  it('refuses a second operation on the same PVC for good, naming the first', () => {
    const first = vr({
      metadata: { name: 'r0', namespace: 'ns', uid: 'u0', creationTimestamp: '2026-01-01T00:00:00Z' },
      status: { operationId: 'restore-u0', phase: 'Restoring' },
    });
    const w = world({ siblings: [{ kind: 'restore', obj: first }] });
    expect(blockingSibling(w)).toEqual({ kind: 'restore', name: 'r0' });
    const a = decideOperationAction(w);
    expect(a).toMatchObject({ type: 'setWaiting', final: true, reason: 'ConcurrentOperation' });
    expect((a as { message: string }).message).toMatch(
      /VolumeRestore r0 is already working on PersistentVolumeClaim data/,
    );
    // A finished one does not block; an operation on another PVC does not either.
    expect(
      blockingSibling(world({ siblings: [{ kind: 'refresh', obj: { ...first, status: { phase: 'Completed' } } }] })),
    ).toBeUndefined();
    expect(
      blockingSibling(world({ siblings: [{ kind: 'refresh', obj: { ...first, spec: { pvcName: 'other' } } }] })),
    ).toBeUndefined();
  });

  it('polls once started; a deleted object waits for its node operation', () => {
    const started = vr({ status: { operationId: 'restore-u1', phase: 'Restoring', nodeName: 'node-a' } });
    expect(decideOperationAction(world({ obj: started }))).toEqual({ type: 'poll' });
    const deleted = { ...started, metadata: { ...started.metadata, deletionTimestamp: NOW } };
    expect(decideOperationAction(world({ obj: deleted }))).toEqual({ type: 'finishBeforeDelete' });
    const never = vr({ metadata: { ...started.metadata, deletionTimestamp: NOW } });
    expect(decideOperationAction(world({ obj: never }))).toEqual({ type: 'removeFinalizer' });
    expect(decideOperationAction(world({ obj: vr({ status: { phase: 'Completed' } }) }))).toEqual({ type: 'done' });
  });

  it('refresh from the source needs no snapshot', () => {
    const w = world({
      kind: 'refresh',
      obj: vr({}, { volumeSnapshotName: undefined, fromSource: true }),
      snapshot: undefined,
      content: undefined,
    });
    expect(decideOperationAction(w)).toMatchObject({
      type: 'start',
      args: { fromSource: true, operationId: 'refresh-u1' },
    });
  });
});

describe('status', () => {
  it('mirrors a running, a completed and a failed node operation', () => {
    const running = statusFromOperation(world(), op(), NOW);
    expect(running).toMatchObject({
      phase: 'Restoring',
      progress: '5/20',
      blocksDone: 5,
      blocksTotal: 20,
      startTime: NOW,
    });
    const done = statusFromOperation(
      world(),
      op({ state: 'COMPLETED', blocksDone: 20, completionTimeMs: Date.parse(NOW) + 2000, mustFinish: false }),
      NOW,
      { restorePointSnapshot: 'r1-restore-point' },
    );
    expect(done).toMatchObject({
      phase: 'Completed',
      progress: '20/20',
      completionTime: '2026-01-01T00:00:02Z',
      restorePointSnapshot: 'r1-restore-point',
    });
    expect(done.conditions?.find((c) => c.type === 'Complete')?.status).toBe('True');
    const failed = statusFromOperation(
      world(),
      op({ state: 'FAILED', errorCode: 'AGENT_ERR_NOT_IN_LINEAGE', message: 'nope' }),
      NOW,
    );
    expect(failed.conditions?.find((c) => c.type === 'Failed')).toMatchObject({
      reason: 'NotInLineage',
      message: 'nope',
    });
    const refresh = statusFromOperation({ kind: 'refresh', obj: vr() }, op({ kind: 'refresh' }), NOW);
    expect(refresh.phase).toBe('Refreshing');
  });

  it('says why deletion waits while the copy must finish', () => {
    const obj = vr({ metadata: { name: 'r1', namespace: 'ns', uid: 'u1', deletionTimestamp: NOW } });
    const s = statusFromOperation(world({ obj }), op(), NOW);
    expect(s.conditions?.find((c) => c.type === 'DeletionDeferred')).toMatchObject({
      status: 'True',
      reason: 'CopyMustFinish',
    });
  });

  it('keeps lastTransitionTime while a condition keeps its status; waiting status is Pending or Failed', () => {
    const w1 = waitingStatus(world(), { final: false, reason: 'VolumeInUse', message: 'staged' }, NOW);
    expect(w1.phase).toBe('Pending');
    const w2 = waitingStatus(
      world({ obj: vr({ status: w1 }) }),
      { final: true, reason: 'NotInLineage', message: 'x' },
      '2026-01-01T00:01:00Z',
    );
    expect(w2.phase).toBe('Failed');
    expect(w2.conditions?.find((c) => c.type === 'Accepted')?.lastTransitionTime).toBe(NOW);
    expect(reasonOf('AGENT_ERR_IN_USE')).toBe('InUse');
    expect(reasonOf('')).toBe('Failed');
  });
});
