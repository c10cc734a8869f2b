// SPDX-License-Identifier: Apache-2.0
// Table-driven cases of the VolumeSnapshot decisions, named like external-snapshotter's framework tests.
// Each case also runs the decision "until it settles" against a tiny in-memory world where that makes sense.
import { describe, expect, it } from 'vitest';
import { ErrorCode } from './errors.js';
import { content, DRIVER, pv, pvc, storageClass, vs, vsClass } from './fixtures.testing.js';
import {
  ANN_BEING_CREATED,
  FIN_CONTENT_BOUND,
  FIN_PVC_AS_SOURCE,
  FIN_SNAPSHOT_AS_SOURCE,
  FIN_SNAPSHOT_BOUND,
  LABEL_MANAGED_BY,
} from './names.js';
import { decideSnapshotAction, type SnapshotAction, type SnapshotWorld, statusFromContent } from './snapshot-logic.js';

function world(over: Partial<SnapshotWorld>): SnapshotWorld {
  return {
    driver: DRIVER,
    vs: vs('snap', { cls: 'gold' }),
    classes: [vsClass('gold'), vsClass('silver', { isDefault: true })],
    pvc: pvc('data', { bound: 'pv-1', finalizers: [FIN_PVC_AS_SOURCE] }),
    pv: pv('pv-1', { node: 'node-a', handle: 'vol-1' }),
    storageClass: storageClass(),
    restoringPvcs: [],
    pvcSnapshotsInProgress: 1,
    sourceNodeReady: true,
    ...over,
  };
}

const readyContent = content('snapcontent-uid-snap', {
  status: { snapshotHandle: 'h1', readyToUse: true, creationTime: 1_700_000_000_000_000_000, restoreSize: 1073741824 },
});

interface Case {
  readonly name: string;
  readonly w: SnapshotWorld;
  readonly expect: Partial<SnapshotAction> & { type: SnapshotAction['type'] };
  readonly code?: ErrorCode;
}

const cases: Case[] = [
  {
    name: '1-1 - ignores a snapshot whose class is of another driver',
    w: world({ vs: vs('snap', { cls: 'other' }), classes: [vsClass('other', { driver: 'hostpath.csi.k8s.io' })] }),
    expect: { type: 'ignore' },
  },
  {
    name: "1-2 - ignores a snapshot of another driver's PV when no class is named",
    w: world({ vs: vs('snap'), pv: pv('pv-1', { driver: 'ebs.csi.aws.com' }) }),
    expect: { type: 'ignore' },
  },
  {
    name: '1-3 - ignores a snapshot whose content is of another driver',
    w: world({ content: content('snapcontent-uid-snap', { driver: 'x' }) }),
    expect: { type: 'ignore' },
  },
  {
    name: '2-1 - fails with SnapshotContentCreationFailed for a non-existing class of our PVC',
    w: world({ vs: vs('snap', { cls: 'missing' }) }),
    expect: { type: 'fail', reason: 'SnapshotContentCreationFailed' },
    code: ErrorCode.ClassNotFound,
  },
  {
    name: '2-2 - fails when no default class exists for our driver',
    w: world({ vs: vs('snap'), classes: [vsClass('gold')] }),
    expect: { type: 'fail' },
    code: ErrorCode.NoDefaultClass,
  },
  {
    name: '2-3 - fails when our driver has two default classes',
    w: world({ vs: vs('snap'), classes: [vsClass('a', { isDefault: true }), vsClass('b', { isDefault: true })] }),
    expect: { type: 'fail' },
    code: ErrorCode.MultipleDefaultClasses,
  },
  {
    name: '2-4 - sets the default class together with the finalizers',
    w: world({ vs: vs('snap', { finalizers: [] }) }),
    expect: { type: 'addFinalizers', className: 'silver', finalizers: [FIN_SNAPSHOT_AS_SOURCE, FIN_SNAPSHOT_BOUND] },
  },
  {
    name: '3-1 - reports a missing source PVC with SnapshotPVCSourceMissing',
    w: world({ pvc: undefined, pv: undefined }),
    expect: { type: 'fail', reason: 'SnapshotPVCSourceMissing' },
    code: ErrorCode.PvcNotFound,
  },
  {
    name: '3-2 - waits (with an error) for a PVC that is not bound yet',
    w: world({ pvc: pvc('data'), pv: undefined }),
    expect: { type: 'fail' },
    code: ErrorCode.PvcNotBound,
  },
  {
    name: '3-3 - refuses a PVC that is being deleted',
    w: world({ pvc: pvc('data', { bound: 'pv-1', deleting: true }) }),
    expect: { type: 'fail' },
    code: ErrorCode.PvcDeleting,
  },
  {
    name: '3-4 - reports a missing class for a PVC whose StorageClass is ours even before it is bound',
    w: world({ vs: vs('snap', { cls: 'nope' }), pvc: pvc('data'), pv: undefined }),
    expect: { type: 'fail' },
    code: ErrorCode.ClassNotFound,
  },
  {
    name: '4-1 - protects the source PVC before creating the content',
    w: world({ pvc: pvc('data', { bound: 'pv-1' }) }),
    expect: { type: 'addPvcFinalizer' },
  },
  {
    name: '4-2 - creates snapcontent-<uid> with the class policy, the node label and being-created',
    w: world({}),
    expect: { type: 'createContent' },
  },
  {
    name: '5-1 - copies the content status into the snapshot with SnapshotCreated and SnapshotReady events',
    w: world({ content: readyContent }),
    expect: { type: 'updateStatus' },
  },
  {
    name: '5-2 - releases the source PVC once no snapshot of it is in progress',
    w: world({
      content: readyContent,
      vs: vs('snap', { cls: 'gold', status: statusFromContent(vs('snap'), readyContent) }),
      pvcSnapshotsInProgress: 0,
    }),
    expect: { type: 'removePvcFinalizer' },
  },
  {
    name: '5-3 - keeps the source PVC protected while another snapshot of it is in progress',
    w: world({
      content: readyContent,
      vs: vs('snap', { cls: 'gold', status: statusFromContent(vs('snap'), readyContent) }),
      pvcSnapshotsInProgress: 1,
    }),
    expect: { type: 'done' },
  },
  {
    name: '5-4 - refuses a content bound to another snapshot with the same name',
    w: world({ content: content('snapcontent-uid-snap', { vsUid: 'someone-else' }) }),
    expect: { type: 'fail', reason: 'SnapshotBindFailed' },
    code: ErrorCode.BindMismatch,
  },
  {
    name: '6-1 - binds a pre-provisioned content that names the snapshot without a UID',
    w: world({ vs: vs('snap', { content: 'pre-1' }), content: content('pre-1', { handle: 'h9', vsUid: null }) }),
    expect: { type: 'bindContent' },
  },
  {
    name: '6-2 - refuses a pre-provisioned content that names another snapshot',
    w: world({
      vs: vs('snap', { content: 'pre-1' }),
      content: content('pre-1', { handle: 'h9', vs: 'other', vsUid: null }),
    }),
    expect: { type: 'fail' },
    code: ErrorCode.BindMismatch,
  },
  {
    name: '6-3 - reports a missing pre-provisioned content when our driver has a default class',
    w: world({ vs: vs('snap', { content: 'gone' }), pvc: undefined, pv: undefined, storageClass: undefined }),
    expect: { type: 'fail', reason: 'SnapshotContentMissing' },
    code: ErrorCode.ContentMissing,
  },
  {
    name: '7-1 - deleting: waits while a PVC is being restored from the snapshot',
    w: world({ vs: vs('snap', { cls: 'gold', deleting: true }), content: readyContent, restoringPvcs: ['restore-1'] }),
    expect: { type: 'waitForRestores' },
  },
  {
    name: '7-2 - deleting: deletes a bound content with policy Delete',
    w: world({ vs: vs('snap', { cls: 'gold', deleting: true }), content: readyContent, pvcSnapshotsInProgress: 0 }),
    expect: { type: 'deleteContent' },
  },
  {
    name: '7-3 - deleting: keeps a Retain content and removes the snapshot finalizers',
    w: world({
      vs: vs('snap', { cls: 'gold', deleting: true }),
      content: content('snapcontent-uid-snap', {
        policy: 'Retain',
        status: { snapshotHandle: 'h1', readyToUse: true },
      }),
      pvc: pvc('data', { bound: 'pv-1' }),
      pvcSnapshotsInProgress: 0,
    }),
    expect: { type: 'removeFinalizers', finalizers: [FIN_SNAPSHOT_AS_SOURCE, FIN_SNAPSHOT_BOUND] },
  },
  {
    name: '7-4 - deleting: releases the source PVC of a snapshot deleted before it was ready',
    w: world({ vs: vs('snap', { cls: 'gold', deleting: true }), content: undefined, pvcSnapshotsInProgress: 0 }),
    expect: { type: 'removePvcFinalizer' },
  },
  {
    name: '7-5 - deleting: nothing left to do once the finalizers are gone',
    w: world({
      vs: vs('snap', { cls: 'gold', deleting: true, finalizers: [] }),
      pvc: pvc('data', { bound: 'pv-1' }),
      pvcSnapshotsInProgress: 0,
    }),
    expect: { type: 'done' },
  },
];

describe('decideSnapshotAction', () => {
  it.each(cases)('$name', ({ w, expect: want, code }) => {
    const got = decideSnapshotAction(w);
    expect(got).toMatchObject(want);
    if (code) expect(got).toMatchObject({ code });
  });

  it('4-2 - the created content carries the upstream fields, finalizer, node label and being-created', () => {
    const got = decideSnapshotAction(world({}));
    if (got.type !== 'createContent') throw new Error(`expected createContent, got ${got.type}`);
    expect(got.content).toMatchObject({
      metadata: {
        name: 'snapcontent-uid-snap',
        labels: { [LABEL_MANAGED_BY]: 'node-a' },
        finalizers: [FIN_CONTENT_BOUND],
        annotations: { [ANN_BEING_CREATED]: 'yes' },
      },
      spec: {
        deletionPolicy: 'Delete',
        driver: DRIVER,
        source: { volumeHandle: 'vol-1' },
        volumeSnapshotClassName: 'gold',
        sourceVolumeMode: 'Filesystem',
        volumeSnapshotRef: { name: 'snap', namespace: 'ns1', uid: 'uid-snap', kind: 'VolumeSnapshot' },
      },
    });
  });

  it('4-3 - does not promise being-created when the source node is down (nothing will be called yet)', () => {
    const got = decideSnapshotAction(world({ sourceNodeReady: false }));
    expect(got.type).toBe('createContent');
    if (got.type === 'createContent') expect(got.content.metadata.annotations?.[ANN_BEING_CREATED]).toBeUndefined();
  });

  it('5-1 - status carries handle-derived fields as upstream formats them and events on transitions', () => {
    const got = decideSnapshotAction(world({ content: readyContent }));
    expect(got).toMatchObject({
      type: 'updateStatus',
      status: {
        boundVolumeSnapshotContentName: 'snapcontent-uid-snap',
        readyToUse: true,
        restoreSize: '1Gi',
        creationTime: '2023-11-14T22:13:20Z',
      },
    });
    if (got.type === 'updateStatus')
      expect(got.events.map((e) => e.reason)).toEqual(['SnapshotCreated', 'SnapshotReady']);
  });

  it('5-5 - a content error reaches the snapshot status and clears when the content recovers', () => {
    const failing = content('snapcontent-uid-snap', { status: { error: { message: 'node down', time: 't' } } });
    const got = decideSnapshotAction(world({ content: failing }));
    expect(got).toMatchObject({ type: 'updateStatus', status: { readyToUse: false, error: { message: 'node down' } } });
    const withErr = vs('snap', {
      cls: 'gold',
      status: {
        boundVolumeSnapshotContentName: 'snapcontent-uid-snap',
        readyToUse: false,
        error: { message: 'node down' },
      },
    });
    const healed = decideSnapshotAction(world({ vs: withErr, content: readyContent }));
    expect(healed).toMatchObject({ type: 'updateStatus' });
    if (healed.type === 'updateStatus') expect(healed.status.error).toBeUndefined();
  });
});
