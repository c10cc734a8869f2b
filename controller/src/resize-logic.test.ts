// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from 'vitest';
import { DRIVER, pv, pvc } from './fixtures.testing.js';
import type { PersistentVolume, PersistentVolumeClaim, PvcCondition } from './kube/types.js';
import {
  controllerResizeFailed,
  controllerResizeInProgress,
  decideResizeAction,
  FS_RESIZE_PENDING_MESSAGE,
  mergeResizeConditions,
  nodeResizePending,
  type ResizeAction,
  resizeFinished,
} from './resize-logic.js';

const GiB = 1024n ** 3n;
const NOW = '2026-12-01T10:00:00Z';
const EARLIER = '2026-12-01T09:00:00Z';

interface ClaimState {
  spec?: string;
  capacity?: string;
  allocated?: string;
  status?: string;
  conditions?: PvcCondition[];
}

/** A claim bound to PV `pv-1`, whose sizes and resize status are `s`. */
function claim(s: ClaimState = {}): PersistentVolumeClaim {
  const c = pvc('data', { bound: 'pv-1', size: s.capacity ?? '1Gi' });
  c.spec.resources = { requests: { storage: s.spec ?? '1Gi' } };
  c.status = {
    ...c.status,
    ...(s.allocated ? { allocatedResources: { storage: s.allocated } } : {}),
    ...(s.status ? { allocatedResourceStatuses: { storage: s.status } } : {}),
    ...(s.conditions ? { conditions: s.conditions } : {}),
  };
  return c;
}

function volume(size = '1Gi', over: Partial<PersistentVolume['spec']> = {}): PersistentVolume {
  const v = pv('pv-1', { claim: 'data', size, node: 'node-b', handle: 'vol-1' });
  v.spec = { ...v.spec, ...over };
  return v;
}

const cond = (type: string, extra: Partial<PvcCondition> = {}): PvcCondition => ({
  type,
  status: 'True',
  lastTransitionTime: EARLIER,
  ...extra,
});

const expand = (newSize: bigint, markInProgress: boolean): ResizeAction => ({
  type: 'expand',
  node: 'node-b',
  volumeHandle: 'vol-1',
  newSize,
  markInProgress,
});

describe('decideResizeAction', () => {
  it.each<[string, PersistentVolumeClaim, PersistentVolume | undefined, ResizeAction | RegExp]>([
    ['1-1 - a claim that is not bound is left alone', pvc('data'), volume(), /not bound/],
    ['1-2 - a volume of another driver is left alone', claim({ spec: '2Gi' }), pv('pv-1', { driver: 'x' }), /not a/],
    [
      '1-3 - a PV bound to another incarnation of the claim is left alone',
      claim({ spec: '2Gi' }),
      { ...volume(), spec: { ...volume().spec, claimRef: { name: 'data', namespace: 'ns1', uid: 'old' } } },
      /not bound to this claim/,
    ],
    ['1-4 - no request above status.capacity: nothing to do', claim({ spec: '1Gi' }), volume(), /no expansion/],
    [
      '1-5 - a new request is expanded to spec, marking ControllerResizeInProgress',
      claim({ spec: '2Gi' }),
      volume(),
      expand(2n * GiB, true),
    ],
    [
      '1-6 - a retry of an expansion in progress goes on to allocatedResources, not to a newer spec',
      claim({ spec: '3Gi', allocated: '2Gi', status: 'ControllerResizeInProgress' }),
      volume(),
      expand(2n * GiB, false),
    ],
    [
      '1-7 - after a final error the user may recover with a smaller request (still above capacity)',
      claim({
        spec: '1536Mi',
        allocated: '2Gi',
        status: 'ControllerResizeInProgress',
        conditions: [cond('ControllerResizeError')],
      }),
      volume(),
      expand(1536n * 1024n ** 2n, true),
    ],
    [
      '1-8 - a size refused as infeasible is not retried until the request changes',
      claim({ spec: '100Gi', allocated: '100Gi', status: 'ControllerResizeInfeasible' }),
      volume(),
      /refused 100Gi as infeasible; change the requested size/,
    ],
    [
      '1-9 - after an infeasible size a changed request is expanded',
      claim({ spec: '2Gi', allocated: '100Gi', status: 'ControllerResizeInfeasible' }),
      volume(),
      expand(2n * GiB, true),
    ],
    [
      '1-10 - NodeResizePending with the PV grown: kubelet finishes, the resizer waits',
      claim({ spec: '2Gi', allocated: '2Gi', status: 'NodeResizePending' }),
      volume('2Gi'),
      /kubelet finishes on the node/,
    ],
    [
      '1-11 - a larger request while the node expands: the node finishes the earlier size first',
      claim({ spec: '3Gi', allocated: '2Gi', status: 'NodeResizeInProgress' }),
      volume('2Gi'),
      /the node expands to 2Gi first/,
    ],
    [
      '1-12 - NodeResizeInfeasible: expanded again to allocatedResources so that kubelet may retry',
      claim({ spec: '2Gi', allocated: '2Gi', status: 'NodeResizeInfeasible' }),
      volume('2Gi'),
      expand(2n * GiB, false),
    ],
    [
      '1-13 - a crash after the PV was grown: the expansion is resumed to record the status',
      claim({ spec: '2Gi', allocated: '2Gi', status: 'ControllerResizeInProgress' }),
      volume('2Gi'),
      expand(2n * GiB, false),
    ],
    [
      '1-14 - a PV without a node affinity cannot be expanded',
      claim({ spec: '2Gi' }),
      volume('1Gi', { nodeAffinity: {} }),
      { type: 'fail', message: 'cannot tell which node holds PersistentVolume "pv-1"' },
    ],
    ['1-15 - a size that does not parse is reported, not acted on', claim({ spec: '2 gigs' }), volume(), /parse/],
  ])('%s', (_name, c, v, want) => {
    const got = decideResizeAction({ driver: DRIVER, pvc: c, pv: v });
    if (want instanceof RegExp) {
      expect(got.type).toBe('none');
      expect(got.type === 'none' ? got.why : '').toMatch(want);
    } else expect(got).toEqual(want);
  });
});

describe('PVC status changes of the resizer (merge-patch bodies)', () => {
  const bound = cond('Bound-ish');

  it('2-1 - in progress: allocatedResources, ControllerResizeInProgress, Resizing; older resize conditions go', () => {
    const c = claim({ spec: '2Gi', conditions: [bound, cond('FileSystemResizePending'), cond('NodeResizeError')] });
    expect(controllerResizeInProgress(c, 2n * GiB, true, NOW)).toEqual({
      conditions: [bound, { type: 'Resizing', status: 'True', lastTransitionTime: NOW }],
      allocatedResources: { storage: '2Gi' },
      allocatedResourceStatuses: { storage: 'ControllerResizeInProgress' },
    });
  });

  it('2-2 - a retry keeps the status and the error condition of the earlier attempt', () => {
    const c = claim({
      allocated: '2Gi',
      status: 'ControllerResizeInProgress',
      conditions: [cond('ControllerResizeError')],
    });
    expect(controllerResizeInProgress(c, 2n * GiB, false, NOW)).toEqual({
      conditions: [cond('ControllerResizeError'), { type: 'Resizing', status: 'True', lastTransitionTime: NOW }],
      allocatedResources: { storage: '2Gi' },
    });
  });

  it("2-3 - node expansion required: NodeResizePending and FileSystemResizePending with upstream's message", () => {
    const c = claim({ status: 'ControllerResizeInProgress', conditions: [bound, cond('Resizing')] });
    expect(nodeResizePending(c, NOW)).toEqual({
      conditions: [
        bound,
        cond('Resizing'),
        {
          type: 'FileSystemResizePending',
          status: 'True',
          lastTransitionTime: NOW,
          message: FS_RESIZE_PENDING_MESSAGE,
        },
      ],
      allocatedResourceStatuses: { storage: 'NodeResizePending' },
    });
  });

  it('2-4 - finished: status.capacity, the storage status removed, every resize condition removed', () => {
    const c = claim({
      status: 'ControllerResizeInProgress',
      conditions: [cond('Resizing'), bound, cond('ControllerResizeError'), cond('FileSystemResizePending')],
    });
    expect(resizeFinished(c, 2n * GiB)).toEqual({
      conditions: [bound],
      capacity: { storage: '2Gi' },
      allocatedResourceStatuses: { storage: null },
    });
  });

  it('2-5 - a final error adds ControllerResizeError; an infeasible one also ControllerResizeInfeasible', () => {
    const c = claim({ status: 'ControllerResizeInProgress', conditions: [cond('Resizing')] });
    const error = {
      type: 'ControllerResizeError',
      status: 'True',
      lastTransitionTime: NOW,
      message: 'failed to expand pvc with OUT_OF_RANGE: too big',
    };
    expect(controllerResizeFailed(c, 'OUT_OF_RANGE: too big', true, NOW)).toEqual({
      conditions: [cond('Resizing'), error],
      allocatedResourceStatuses: { storage: 'ControllerResizeInfeasible' },
    });
    expect(controllerResizeFailed(c, 'OUT_OF_RANGE: too big', false, NOW)).toEqual({
      conditions: [cond('Resizing'), error],
    });
  });

  it('2-6 - a condition whose status did not change keeps its transition time; one that did is replaced', () => {
    const old = [cond('Resizing'), cond('FileSystemResizePending', { status: 'False' })];
    const next = [
      { type: 'Resizing', status: 'True', lastTransitionTime: NOW },
      { type: 'FileSystemResizePending', status: 'True', lastTransitionTime: NOW },
    ];
    expect(mergeResizeConditions(old, next, false)).toEqual([cond('Resizing'), next[1]]);
  });
});
