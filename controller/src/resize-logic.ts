// SPDX-License-Identifier: Apache-2.0
// Pure decisions of the resizer: what kubernetes-csi/external-resizer does for a driver, with the
// RecoverVolumeExpansionFailure protocol (beta, on by default in Kubernetes 1.33) that a 1.33 kubelet reads
// before it runs NodeExpandVolume. No I/O; unit-tested in resize-logic.test.ts, executed by resizer.ts.
//
// Who writes what on the PVC (status subresource) and the PV:
//   resizer  allocatedResources.storage = the size it expands to, allocatedResourceStatuses.storage =
//            ControllerResizeInProgress, condition Resizing            (before ControllerExpandVolume)
//   resizer  PV spec.capacity.storage = the size the plugin answered   (after it succeeded)
//   resizer  node_expansion_required: allocatedResourceStatuses.storage = NodeResizePending, condition
//            FileSystemResizePending; otherwise status.capacity = the size, the storage status and every
//            resize condition removed (done)
//   resizer  on an infeasible error (INVALID_ARGUMENT, OUT_OF_RANGE, NOT_FOUND): ControllerResizeInfeasible
//            and condition ControllerResizeError; on another final error the condition only (the status
//            stays ControllerResizeInProgress and the call is retried with backoff); transient errors
//            (ABORTED, UNAVAILABLE, ...) change nothing but an event
//   kubelet  sees PV capacity > the size it mounted and NodeResizePending (or NodeResizeInProgress): writes
//            NodeResizeInProgress, calls NodeExpandVolume with allocatedResources, then status.capacity =
//            allocatedResources, the storage status and every resize condition removed; on an infeasible
//            node error NodeResizeInfeasible + NodeResizeError, on another final one NodeResizeError; a
//            FAILED_PRECONDITION answer stops its online attempts until the volume is mounted again
// A size the plugin refused as infeasible is not retried until the user changes the request (KEP 1790: a
// smaller request than the failed one, still above status.capacity, recovers).
import type { PersistentVolume, PersistentVolumeClaim, PvcCondition } from './kube/types.js';
import { requestedBytes } from './provision-logic.js';
import { formatQuantityBytes, parseQuantityBytes } from './quantity.js';
import { nodeOfPv } from './snapshot-logic.js';

/** pvc.status.allocatedResourceStatuses values (core/v1 ClaimResourceStatus, 1.33). */
export const ResizeStatus = {
  ControllerInProgress: 'ControllerResizeInProgress',
  ControllerInfeasible: 'ControllerResizeInfeasible',
  NodePending: 'NodeResizePending',
  NodeInProgress: 'NodeResizeInProgress',
  NodeInfeasible: 'NodeResizeInfeasible',
} as const;

/** PVC condition types of a resize (kubelet's knownResizeConditions, pkg/volume/util/resize_util.go). */
export const ResizeCondition = {
  Resizing: 'Resizing',
  FileSystemResizePending: 'FileSystemResizePending',
  ControllerResizeError: 'ControllerResizeError',
  NodeResizeError: 'NodeResizeError',
} as const;
const RESIZE_CONDITIONS: ReadonlySet<string> = new Set(Object.values(ResizeCondition));

export const FS_RESIZE_PENDING_MESSAGE =
  'Waiting for user to (re-)start a pod to finish file system resize of volume on node.';

export interface ResizeWorld {
  readonly driver: string;
  readonly pvc: PersistentVolumeClaim;
  readonly pv: PersistentVolume | undefined;
}

export type ResizeAction =
  /** Nothing to do for the resizer (`why` for logs and tests). */
  | { readonly type: 'none'; readonly why: string }
  /** The volume cannot be expanded as asked; reported, retried with backoff. */
  | { readonly type: 'fail'; readonly message: string }
  /**
   * ControllerExpandVolume to `newSize` on `node`. `markInProgress`: write ControllerResizeInProgress (and
   * reset the resize conditions) first; false when allocatedResources already is newSize (a retry), where
   * only allocatedResources is written and the conditions of the earlier attempt stay.
   */
  | {
      readonly type: 'expand';
      readonly node: string;
      readonly volumeHandle: string;
      readonly newSize: bigint;
      readonly markInProgress: boolean;
    };

function storageStatus(pvc: PersistentVolumeClaim): string {
  return pvc.status?.allocatedResourceStatuses?.storage ?? '';
}

function hasCondition(pvc: PersistentVolumeClaim, type: string): boolean {
  return (pvc.status?.conditions ?? []).some((c) => c.type === type && c.status === 'True');
}

/** The size to expand to, or why there is nothing to do (external-resizer's expandAndRecover). */
function targetSize(
  pvc: PersistentVolumeClaim,
  sizes: { spec: bigint; pv: bigint; allocated: bigint | undefined },
): bigint | string {
  const { spec, pv, allocated } = sizes;
  const status = storageStatus(pvc);
  const S = ResizeStatus;
  if (pv < spec) {
    switch (status) {
      case S.NodeInfeasible:
        return allocated ?? spec;
      case S.NodePending:
      case S.NodeInProgress: {
        const size = allocated ?? spec;
        return pv >= size ? `the node expands to ${formatQuantityBytes(size)} first` : size;
      }
      case S.ControllerInProgress:
        // After a final (non-infeasible) error the user may have changed the request: follow it.
        return hasCondition(pvc, ResizeCondition.ControllerResizeError) ? spec : (allocated ?? spec);
      default:
        return spec;
    }
  }
  switch (status) {
    case S.NodePending:
    case S.NodeInProgress:
      return 'the controller part is done; kubelet finishes on the node';
    case S.NodeInfeasible:
    case S.ControllerInProgress:
    case S.ControllerInfeasible:
      return allocated ?? spec;
    default:
      if (allocated !== undefined) return allocated;
      return hasCondition(pvc, ResizeCondition.FileSystemResizePending)
        ? 'the controller part is done; kubelet finishes on the node'
        : spec;
  }
}

/** The resizer's next step for one bound PVC. */
export function decideResizeAction(w: ResizeWorld): ResizeAction {
  const { pvc, pv } = w;
  const none = (why: string): ResizeAction => ({ type: 'none', why });
  if (!pvc.spec.volumeName || pvc.status?.phase !== 'Bound') return none('the claim is not bound');
  if (!pv || pv.spec.csi?.driver !== w.driver) return none(`the volume is not a ${w.driver} volume`);
  const ref = pv.spec.claimRef;
  if (!ref || ref.namespace !== pvc.metadata.namespace || ref.uid !== pvc.metadata.uid) {
    return none(`PersistentVolume "${pv.metadata.name}" is not bound to this claim`);
  }
  let sizes: { spec: bigint; status: bigint; pv: bigint; allocated: bigint | undefined };
  try {
    const allocated = pvc.status.allocatedResources?.storage;
    sizes = {
      spec: requestedBytes(pvc),
      status: parseQuantityBytes(pvc.status.capacity?.storage ?? '0'),
      pv: parseQuantityBytes(pv.spec.capacity?.storage ?? '0'),
      allocated: allocated === undefined ? undefined : parseQuantityBytes(allocated),
    };
  } catch (err) {
    return none(`a size does not parse: ${(err as Error).message}`);
  }
  if (sizes.spec <= sizes.status) return none('no expansion requested');
  const target = targetSize(pvc, sizes);
  if (typeof target === 'string') return none(target);
  const retry = sizes.allocated === target;
  if (retry && storageStatus(pvc) === ResizeStatus.ControllerInfeasible) {
    return none(
      `the plugin refused ${formatQuantityBytes(target)} as infeasible; change the requested size to try again`,
    );
  }
  const node = nodeOfPv(pv);
  if (!node) return { type: 'fail', message: `cannot tell which node holds PersistentVolume "${pv.metadata.name}"` };
  return { type: 'expand', node, volumeHandle: pv.spec.csi.volumeHandle, newSize: target, markInProgress: !retry };
}

// ----- status changes (merge-patch bodies of pvc.status) ----------------------------------------------------

export interface PvcStatusPatch {
  conditions: PvcCondition[];
  capacity?: { storage: string };
  allocatedResources?: { storage: string };
  /** `storage: null` removes the entry (merge patch). */
  allocatedResourceStatuses?: { storage: string | null };
}

/**
 * Port of MergeResizeConditionOnPVC: conditions of other types stay; a resize condition in `next` replaces
 * one of its type (keeping the old one, transition time included, when its status did not change); other
 * resize conditions stay only with `keepOld`.
 */
export function mergeResizeConditions(
  old: readonly PvcCondition[],
  next: readonly PvcCondition[],
  keepOld: boolean,
): PvcCondition[] {
  const pending = new Map(next.map((c) => [c.type, c]));
  const out: PvcCondition[] = [];
  for (const c of old) {
    if (!RESIZE_CONDITIONS.has(c.type)) {
      out.push(c);
      continue;
    }
    const n = pending.get(c.type);
    if (n) {
      out.push(n.status !== c.status ? n : c);
      pending.delete(c.type);
    } else if (keepOld) out.push(c);
  }
  return [...out, ...pending.values()];
}

function condition(type: string, now: string, message?: string): PvcCondition {
  return { type, status: 'True', lastTransitionTime: now, ...(message === undefined ? {} : { message }) };
}

/** Before ControllerExpandVolume (external-resizer markControllerResizeInProgress). */
export function controllerResizeInProgress(
  pvc: PersistentVolumeClaim,
  newSize: bigint,
  markInProgress: boolean,
  now: string,
): PvcStatusPatch {
  const conditions = mergeResizeConditions(
    pvc.status?.conditions ?? [],
    [condition(ResizeCondition.Resizing, now)],
    !markInProgress,
  );
  return {
    conditions,
    allocatedResources: { storage: formatQuantityBytes(newSize) },
    ...(markInProgress ? { allocatedResourceStatuses: { storage: ResizeStatus.ControllerInProgress } } : {}),
  };
}

/** ControllerExpandVolume succeeded and said node_expansion_required (markForPendingNodeExpansion). */
export function nodeResizePending(pvc: PersistentVolumeClaim, now: string): PvcStatusPatch {
  return {
    conditions: mergeResizeConditions(
      pvc.status?.conditions ?? [],
      [condition(ResizeCondition.FileSystemResizePending, now, FS_RESIZE_PENDING_MESSAGE)],
      true,
    ),
    allocatedResourceStatuses: { storage: ResizeStatus.NodePending },
  };
}

/** The whole expansion is done (markOverallExpansionAsFinished; kubelet's MarkNodeExpansionFinishedWithRecovery). */
export function resizeFinished(pvc: PersistentVolumeClaim, size: bigint): PvcStatusPatch {
  return {
    conditions: mergeResizeConditions(pvc.status?.conditions ?? [], [], false),
    capacity: { storage: formatQuantityBytes(size) },
    allocatedResourceStatuses: { storage: null },
  };
}

/** ControllerExpandVolume failed with a final error; `infeasible` also marks the size as refused. */
export function controllerResizeFailed(
  pvc: PersistentVolumeClaim,
  message: string,
  infeasible: boolean,
  now: string,
): PvcStatusPatch {
  return {
    conditions: mergeResizeConditions(
      pvc.status?.conditions ?? [],
      [condition(ResizeCondition.ControllerResizeError, now, `failed to expand pvc with ${message}`)],
      true,
    ),
    ...(infeasible ? { allocatedResourceStatuses: { storage: ResizeStatus.ControllerInfeasible } } : {}),
  };
}
