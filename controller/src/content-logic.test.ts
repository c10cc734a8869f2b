// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from 'vitest';
import { type ContentAction, type ContentWorld, decideContentAction } from './content-logic.js';
import { content, DRIVER, vs, vsClass } from './fixtures.testing.js';
import { ANN_BEING_CREATED, ANN_BEING_DELETED, ANN_SNAPSHOT_INVALID } from './names.js';

const BC = { [ANN_BEING_CREATED]: 'yes' };
const liveVs = vs('snap', { cls: 'gold' });
const w = (over: Partial<ContentWorld>): ContentWorld => ({
  driver: DRIVER,
  content: content('c1', { cls: 'gold', node: 'node-a' }),
  snapshot: liveVs,
  cls: vsClass('gold'),
  ...over,
});

const cases: Array<{ name: string; w: ContentWorld; want: ContentAction }> = [
  {
    name: '1-1 - ignores contents of other drivers',
    w: w({ content: content('c1', { driver: 'x' }) }),
    want: { type: 'ignore' },
  },
  {
    name: '1-2 - adds the bound-protection finalizer',
    w: w({ content: content('c1', { finalizers: [] }) }),
    want: { type: 'addFinalizer' },
  },
  { name: '2-1 - persists being-created before the first CreateSnapshot', w: w({}), want: { type: 'setBeingCreated' } },
  {
    name: '2-2 - calls CreateSnapshot once being-created is persisted',
    w: w({ content: content('c1', { annotations: BC }) }),
    want: { type: 'createSnapshot' },
  },
  {
    name: '2-3 - keeps calling CreateSnapshot while the snapshot is not ready (clone copy running)',
    w: w({ content: content('c1', { status: { snapshotHandle: 'h', readyToUse: false } }) }),
    want: { type: 'createSnapshot' },
  },
  {
    name: '2-4 - retries after a final error (annotation already removed) by setting being-created again',
    w: w({ content: content('c1', { status: { error: { message: 'INVALID_ARGUMENT' } } }) }),
    want: { type: 'setBeingCreated' },
  },
  {
    name: '2-5 - a ready content that still carries being-created resolves it with CreateSnapshot',
    w: w({ content: content('c1', { annotations: BC, status: { snapshotHandle: 'h', readyToUse: true } }) }),
    want: { type: 'createSnapshot' },
  },
  {
    name: '2-6 - a ready content is only watched (is it still ready on the node?)',
    w: w({ content: content('c1', { status: { snapshotHandle: 'h', readyToUse: true } }) }),
    want: { type: 'watchHealth', snapshotHandle: 'h' },
  },
  {
    name: '2-7 - an invalidated snapshot is neither polled nor re-created',
    w: w({
      content: content('c1', {
        annotations: { [ANN_SNAPSHOT_INVALID]: '2026-01-01T00:00:00Z' },
        status: { snapshotHandle: 'h', readyToUse: false, error: { message: 'invalidated' } },
      }),
    }),
    want: { type: 'done' },
  },
  {
    name: '2-8 - an invalidated snapshot is still deleted with its VolumeSnapshot',
    w: w({
      content: content('c1', {
        deleting: true,
        annotations: { [ANN_SNAPSHOT_INVALID]: '2026-01-01T00:00:00Z' },
        status: { snapshotHandle: 'h1', readyToUse: false },
      }),
      snapshot: undefined,
    }),
    want: { type: 'deleteSnapshot', snapshotHandle: 'h1' },
  },
  {
    name: '3-1 - imports a pre-provisioned handle',
    w: w({ content: content('c1', { handle: 'h9', vsUid: null }), snapshot: undefined }),
    want: { type: 'importSnapshot' },
  },
  {
    name: '3-2 - an imported ready pre-provisioned content is only watched',
    w: w({ content: content('c1', { handle: 'h9', status: { snapshotHandle: 'h9', readyToUse: true } }) }),
    want: { type: 'watchHealth', snapshotHandle: 'h9' },
  },
  {
    name: '4-1 - deletes the object when its snapshot is gone and the policy is Delete',
    w: w({ content: content('c1', { status: { snapshotHandle: 'h', readyToUse: true } }), snapshot: undefined }),
    want: { type: 'deleteObject' },
  },
  {
    name: '4-2 - keeps a Retain content whose snapshot is gone',
    w: w({
      content: content('c1', { policy: 'Retain', status: { snapshotHandle: 'h', readyToUse: true } }),
      snapshot: undefined,
    }),
    want: { type: 'done' },
  },
  {
    name: '4-3 - a snapshot re-created under the same name (new UID) counts as gone',
    w: w({
      content: content('c1', { status: { snapshotHandle: 'h', readyToUse: true } }),
      snapshot: vs('snap', { uid: 'new-uid' }),
    }),
    want: { type: 'deleteObject' },
  },
  {
    name: '4-4 - never deletes the object while a CreateSnapshot may be in flight',
    w: w({ content: content('c1', { annotations: BC }), snapshot: undefined }),
    want: { type: 'createSnapshot' },
  },
  {
    name: '5-1 - deleted while being created: first learn the handle with CreateSnapshot',
    w: w({
      content: content('c1', { deleting: true, annotations: { ...BC, [ANN_BEING_DELETED]: 'yes' } }),
      snapshot: undefined,
    }),
    want: { type: 'createSnapshot' },
  },
  {
    name: '5-2 - deleted with policy Delete: DeleteSnapshot on the node',
    w: w({
      content: content('c1', { deleting: true, status: { snapshotHandle: 'h1', readyToUse: true } }),
      snapshot: undefined,
    }),
    want: { type: 'deleteSnapshot', snapshotHandle: 'h1' },
  },
  {
    name: '5-3 - deleted with policy Retain: only the finalizer goes',
    w: w({
      content: content('c1', { deleting: true, policy: 'Retain', status: { snapshotHandle: 'h1', readyToUse: true } }),
      snapshot: undefined,
    }),
    want: { type: 'removeFinalizer' },
  },
  {
    name: '5-4 - a bound content deleted directly waits for its snapshot to be deleted',
    w: w({ content: content('c1', { deleting: true, status: { snapshotHandle: 'h1', readyToUse: true } }) }),
    want: { type: 'waitForSnapshot' },
  },
  {
    name: '5-5 - with being-deleted set by the snapshot controller the content is deleted although the snapshot still exists',
    w: w({
      content: content('c1', {
        deleting: true,
        annotations: { [ANN_BEING_DELETED]: 'yes' },
        status: { snapshotHandle: 'h1', readyToUse: true },
      }),
    }),
    want: { type: 'deleteSnapshot', snapshotHandle: 'h1' },
  },
  {
    name: '5-6 - a deleted content that never got a handle just loses its finalizer',
    w: w({ content: content('c1', { deleting: true }), snapshot: undefined }),
    want: { type: 'removeFinalizer' },
  },
  {
    name: '5-7 - deleted pre-provisioned content (policy Delete) deletes the snapshot by its spec handle',
    w: w({ content: content('c1', { deleting: true, handle: 'h9', vsUid: null }), snapshot: undefined }),
    want: { type: 'deleteSnapshot', snapshotHandle: 'h9' },
  },
];

describe('decideContentAction', () => {
  it.each(cases)('$name', ({ w: world, want }) => {
    expect(decideContentAction(world)).toEqual(want);
  });
});
