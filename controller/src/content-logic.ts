// SPDX-License-Identifier: Apache-2.0
// Pure decisions of the VolumeSnapshotContent controller (upstream's csi-snapshotter sidecar plus the
// content half of snapshot-controller). No I/O; unit-tested in content-logic.test.ts.
//
// Crash safety: before CreateSnapshot is called the content carries `volumesnapshot-being-created: yes`.
// It is removed only once the CSI handle is persisted in status.snapshotHandle, or after a final gRPC
// error. While it is present the content is never released: a deleted content first calls CreateSnapshot
// again (idempotent by name) to learn the handle, then DeleteSnapshot. So a crash or timeout anywhere
// neither leaks a snapshot on the node nor creates a second one.
import type { VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotContent } from './kube/types.js';
import { ANN_BEING_CREATED, ANN_BEING_DELETED, ANN_SNAPSHOT_INVALID, FIN_CONTENT_BOUND } from './names.js';

export interface ContentWorld {
  readonly driver: string;
  readonly content: VolumeSnapshotContent;
  /** The VolumeSnapshot named by spec.volumeSnapshotRef, when it exists (any UID). */
  readonly snapshot?: VolumeSnapshot | undefined;
  /** The content's class, when it names one that exists. */
  readonly cls?: VolumeSnapshotClass | undefined;
}

export type ContentAction =
  | { readonly type: 'ignore' }
  | { readonly type: 'done' }
  /** Ready: nothing to do but to ask the node now and then whether the snapshot still is (save pool full). */
  | { readonly type: 'watchHealth'; readonly snapshotHandle: string }
  | { readonly type: 'addFinalizer' }
  | { readonly type: 'removeFinalizer' }
  /** Its snapshot is gone and the policy is Delete: delete this content object. */
  | { readonly type: 'deleteObject' }
  /** Deleted while still bound to a live snapshot: wait until the snapshot is deleted. */
  | { readonly type: 'waitForSnapshot' }
  | { readonly type: 'setBeingCreated' }
  /** Call CreateSnapshot (first time, retry, poll until ready, or to learn the handle before deleting). */
  | { readonly type: 'createSnapshot' }
  /** Pre-provisioned: verify the handle with the node plugin and import size, time, readiness. */
  | { readonly type: 'importSnapshot' }
  | { readonly type: 'deleteSnapshot'; readonly snapshotHandle: string };

export function snapshotHandleOf(c: VolumeSnapshotContent): string | undefined {
  return c.status?.snapshotHandle ?? c.spec.source.snapshotHandle;
}

export function isBeingCreated(c: VolumeSnapshotContent): boolean {
  return c.metadata.annotations?.[ANN_BEING_CREATED] === 'yes';
}

/** The snapshot the content is bound to still exists (same UID) and is not being deleted. */
function boundSnapshotAlive(w: ContentWorld): boolean {
  const ref = w.content.spec.volumeSnapshotRef;
  return !!ref.uid && w.snapshot?.metadata.uid === ref.uid && !w.snapshot.metadata.deletionTimestamp;
}

/** Bound (UID set) to a snapshot that no longer exists under that UID. */
export function boundSnapshotGone(w: ContentWorld): boolean {
  const ref = w.content.spec.volumeSnapshotRef;
  return !!ref.uid && (w.snapshot === undefined || w.snapshot.metadata.uid !== ref.uid);
}

function decideDeletion(w: ContentWorld): ContentAction {
  const c = w.content;
  const hasFinalizer = c.metadata.finalizers?.includes(FIN_CONTENT_BOUND) ?? false;
  if (!hasFinalizer) return { type: 'done' };
  if (isBeingCreated(c) && c.spec.source.volumeHandle) return { type: 'createSnapshot' };
  if (boundSnapshotAlive(w) && c.metadata.annotations?.[ANN_BEING_DELETED] !== 'yes')
    return { type: 'waitForSnapshot' };
  const handle = snapshotHandleOf(c);
  if (c.spec.deletionPolicy === 'Delete' && handle) return { type: 'deleteSnapshot', snapshotHandle: handle };
  return { type: 'removeFinalizer' };
}

/** The next step for one VolumeSnapshotContent. */
export function decideContentAction(w: ContentWorld): ContentAction {
  const c = w.content;
  if (c.spec.driver !== w.driver) return { type: 'ignore' };
  if (c.metadata.deletionTimestamp) return decideDeletion(w);
  if (!c.metadata.finalizers?.includes(FIN_CONTENT_BOUND)) return { type: 'addFinalizer' };
  if (boundSnapshotGone(w) && c.spec.deletionPolicy === 'Delete' && !isBeingCreated(c)) return { type: 'deleteObject' };
  // Invalidated by the engine (EC-5): only deletion is left; never poll or re-create it.
  if (c.metadata.annotations?.[ANN_SNAPSHOT_INVALID] && !isBeingCreated(c)) return { type: 'done' };

  if (c.spec.source.volumeHandle) {
    if (c.status?.snapshotHandle && c.status.readyToUse === true) {
      if (isBeingCreated(c)) return { type: 'createSnapshot' };
      return boundSnapshotGone(w) ? { type: 'done' } : { type: 'watchHealth', snapshotHandle: c.status.snapshotHandle };
    }
    // A dynamic content whose snapshot is gone is not created at all (it is about to be deleted).
    if (boundSnapshotGone(w) && !isBeingCreated(c)) return { type: 'done' };
    if (!isBeingCreated(c) && !c.status?.snapshotHandle) return { type: 'setBeingCreated' };
    return { type: 'createSnapshot' };
  }
  if (c.spec.source.snapshotHandle) {
    return c.status?.readyToUse === true && c.status.snapshotHandle
      ? { type: 'watchHealth', snapshotHandle: c.status.snapshotHandle }
      : { type: 'importSnapshot' };
  }
  return { type: 'done' };
}
