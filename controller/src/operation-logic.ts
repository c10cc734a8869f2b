// SPDX-License-Identifier: Apache-2.0
// Pure decisions of the VolumeRestore / VolumeRefresh controller (loopsnap.dev/v1alpha1; docs/restore.md):
// given what the cache holds about one object, which single step comes next, and how a node operation's state
// reads as the object's status. No I/O; unit-tested in operation-logic.test.ts.
//
// Protocol: the object gets the finalizer `loopsnap.dev/operation-protection`; status.operationId
// (`<kind>-<UID>`, the node's idempotency key), nodeName and volumeHandle are persisted before the node is
// asked to start, so a crash of the controller at any point finds the same operation again. Start is
// idempotent on the node; afterwards GetOperation is polled. A deleted object keeps its finalizer while its
// node operation is running (the copy must finish for the volume's content to be consistent; condition
// DeletionDeferred says so), then the node's record is forgotten and the finalizer removed.
import type { AgentOperation } from './csi-client/agent-client.js';
import type {
  KubeObject,
  PersistentVolume,
  PersistentVolumeClaim,
  VolumeSnapshot,
  VolumeSnapshotContent,
} from './kube/types.js';
import { LABEL_MANAGED_BY } from './names.js';
import { nodeOfPv } from './snapshot-logic.js';

export const FIN_OPERATION = 'loopsnap.dev/operation-protection';
export const LOOPSNAP_API_VERSION = 'loopsnap.dev/v1alpha1';

export type OperationKind = 'restore' | 'refresh';
export type Phase = 'Pending' | 'Restoring' | 'Refreshing' | 'Completed' | 'Failed';

export interface Condition {
  type: string;
  status: 'True' | 'False' | 'Unknown';
  reason: string;
  message: string;
  lastTransitionTime: string;
  observedGeneration?: number;
}

export interface OperationStatus {
  phase?: Phase;
  progress?: string;
  blocksDone?: number;
  blocksTotal?: number;
  blockSizeBytes?: number;
  startTime?: string;
  completionTime?: string;
  nodeName?: string;
  volumeHandle?: string;
  operationId?: string;
  observedGeneration?: number;
  message?: string;
  restorePointSnapshot?: string;
  sourceSnapshot?: string;
  sourceVolumeHandle?: string;
  conditions?: Condition[];
}

export interface VolumeOperationObject extends KubeObject {
  spec: { pvcName: string; volumeSnapshotName?: string; keepRestorePoint?: boolean; fromSource?: boolean };
  status?: OperationStatus;
}

export interface OperationWorld {
  readonly kind: OperationKind;
  readonly driver: string;
  readonly obj: VolumeOperationObject;
  readonly pvc?: PersistentVolumeClaim | undefined;
  readonly pv?: PersistentVolume | undefined;
  readonly snapshot?: VolumeSnapshot | undefined;
  readonly content?: VolumeSnapshotContent | undefined;
  /** Whether the node of status.nodeName (or of the PV when not started) is ready now. */
  readonly nodeReady: boolean;
  /** Other VolumeRestores/VolumeRefreshes of the same namespace (any state). */
  readonly siblings: ReadonlyArray<{ readonly kind: OperationKind; readonly obj: VolumeOperationObject }>;
}

export interface StartArgs {
  readonly nodeId: string;
  readonly operationId: string;
  readonly volumeId: string;
  /** CSI snapshot handle; undefined for a refresh from the source. */
  readonly snapshotHandle?: string;
  readonly keepRestorePoint: boolean;
  readonly restorePointName: string;
  readonly fromSource: boolean;
}

export type OperationAction =
  | { readonly type: 'done' }
  | { readonly type: 'addFinalizer' }
  | { readonly type: 'removeFinalizer' }
  /** Deleted: look at the node operation; keep the finalizer while it must finish. */
  | { readonly type: 'finishBeforeDelete' }
  /** Not started: record the refusal or the wait in status (terminal when `final`). */
  | {
      readonly type: 'setWaiting';
      readonly final: boolean;
      readonly reason: string;
      readonly message: string;
      readonly retryMs: number;
    }
  | { readonly type: 'start'; readonly args: StartArgs }
  | { readonly type: 'poll' };

export const activePhase = (k: OperationKind): Phase => (k === 'restore' ? 'Restoring' : 'Refreshing');
export const kindName = (k: OperationKind): string => (k === 'restore' ? 'VolumeRestore' : 'VolumeRefresh');
export const operationIdFor = (k: OperationKind, uid: string): string => `${k}-${uid}`;

export function isTerminal(o: VolumeOperationObject): boolean {
  return o.status?.phase === 'Completed' || o.status?.phase === 'Failed';
}

/** Name of the VolumeSnapshot that holds a restore's restore point. */
export function restorePointName(o: VolumeOperationObject): string {
  return `${o.metadata.name.slice(0, 253 - '-restore-point'.length)}-restore-point`;
}

export function restorePointContentName(uid: string): string {
  return `vrp-${uid}`;
}

function olderThan(a: KubeObject, b: KubeObject): boolean {
  const ta = a.metadata.creationTimestamp ?? '';
  const tb = b.metadata.creationTimestamp ?? '';
  return ta !== tb ? ta < tb : a.metadata.name < b.metadata.name;
}

/** Another operation that holds the PVC: started and not finished, or waiting and created before this one. */
export function blockingSibling(w: OperationWorld): { kind: OperationKind; name: string } | undefined {
  for (const s of w.siblings) {
    const o = s.obj;
    if (o.metadata.uid === w.obj.metadata.uid || o.spec.pvcName !== w.obj.spec.pvcName || isTerminal(o)) continue;
    if (o.status?.operationId || (!o.metadata.deletionTimestamp && olderThan(o, w.obj))) {
      return { kind: s.kind, name: o.metadata.name };
    }
  }
  return undefined;
}

export function decideOperationAction(w: OperationWorld): OperationAction {
  const o = w.obj;
  const hasFinalizer = o.metadata.finalizers?.includes(FIN_OPERATION) ?? false;
  if (o.metadata.deletionTimestamp) {
    if (!hasFinalizer) return { type: 'done' };
    return o.status?.operationId ? { type: 'finishBeforeDelete' } : { type: 'removeFinalizer' };
  }
  if (!hasFinalizer) return { type: 'addFinalizer' };
  if (isTerminal(o)) return { type: 'done' };
  if (o.status?.operationId && o.status.phase !== 'Pending') return { type: 'poll' };
  const what = kindName(w.kind);
  const wait = (reason: string, message: string, retryMs = 5_000): OperationAction => ({
    type: 'setWaiting',
    final: false,
    reason,
    message,
    retryMs,
  });
  const fail = (reason: string, message: string): OperationAction => ({
    type: 'setWaiting',
    final: true,
    reason,
    message,
    retryMs: 0,
  });
  const other = o.status?.operationId ? undefined : blockingSibling(w);
  if (other) {
    return fail(
      'ConcurrentOperation',
      `${kindName(other.kind)} ${other.name} is already working on PersistentVolumeClaim ${o.spec.pvcName}; one operation per PVC at a time: create this one again once it has finished`,
    );
  }
  const pvc = w.pvc;
  if (!pvc) return wait('PvcNotFound', `PersistentVolumeClaim ${o.spec.pvcName} does not exist`, 10_000);
  if (pvc.metadata.deletionTimestamp)
    return fail('PvcDeleting', `PersistentVolumeClaim ${o.spec.pvcName} is being deleted`);
  if (!pvc.spec.volumeName || !w.pv) {
    return wait('PvcNotBound', `PersistentVolumeClaim ${o.spec.pvcName} is not bound to a volume yet`);
  }
  const csi = w.pv.spec.csi;
  if (csi?.driver !== w.driver) {
    return fail(
      'UnsupportedVolume',
      `PersistentVolumeClaim ${o.spec.pvcName} is bound to a volume of driver ${csi?.driver ?? '(none: not a CSI volume)'}; only ${w.driver} volumes can be ${w.kind === 'restore' ? 'restored' : 'refreshed'} in place`,
    );
  }
  const nodeId = o.status?.nodeName ?? nodeOfPv(w.pv);
  if (!nodeId)
    return fail('UnsupportedVolume', `PersistentVolume ${w.pv.metadata.name} has no node affinity on our topology key`);
  let snapshotHandle: string | undefined;
  const fromSource = w.kind === 'refresh' && o.spec.fromSource === true;
  if (!fromSource) {
    const vsName = o.spec.volumeSnapshotName ?? '';
    const vs = w.snapshot;
    if (!vs)
      return wait(
        'SnapshotNotFound',
        `VolumeSnapshot ${vsName} does not exist in namespace ${o.metadata.namespace}`,
        10_000,
      );
    if (vs.metadata.deletionTimestamp) return fail('SnapshotDeleting', `VolumeSnapshot ${vsName} is being deleted`);
    if (vs.status?.readyToUse !== true || !w.content) {
      return wait('SnapshotNotReady', `VolumeSnapshot ${vsName} is not ready to use yet`);
    }
    if (w.content.spec.driver !== w.driver) {
      return fail(
        'SnapshotOfOtherDriver',
        `VolumeSnapshot ${vsName} belongs to driver ${w.content.spec.driver}, not ${w.driver}`,
      );
    }
    const snapNode = w.content.metadata.labels?.[LABEL_MANAGED_BY];
    if (snapNode && snapNode !== nodeId) {
      return fail(
        'NotInLineage',
        `VolumeSnapshot ${vsName} is held by node ${snapNode}, but PersistentVolumeClaim ${o.spec.pvcName}'s volume is on node ${nodeId}: it is a snapshot of another volume, not of this volume's lineage`,
      );
    }
    snapshotHandle = w.content.status?.snapshotHandle ?? w.content.spec.source.snapshotHandle;
    if (!snapshotHandle) return wait('SnapshotNotReady', `VolumeSnapshot ${vsName} has no snapshot handle yet`);
  }
  if (!w.nodeReady) {
    return wait(
      'NodeUnavailable',
      `the node plugin on node ${nodeId}, which holds the volume, is not ready; ${what} waits for it`,
    );
  }
  return {
    type: 'start',
    args: {
      nodeId,
      operationId: operationIdFor(w.kind, o.metadata.uid ?? ''),
      volumeId: csi.volumeHandle,
      ...(snapshotHandle ? { snapshotHandle } : {}),
      keepRestorePoint: w.kind === 'restore' && o.spec.keepRestorePoint === true,
      restorePointName: w.kind === 'restore' ? `restorepoint-${o.metadata.uid ?? ''}` : '',
      fromSource,
    },
  };
}

// ----- status ---------------------------------------------------------------------------------------------

/** Sets a condition, keeping lastTransitionTime when the status did not change. */
export function setCondition(
  list: readonly Condition[] | undefined,
  c: Omit<Condition, 'lastTransitionTime'>,
  now: string,
): Condition[] {
  const out = [...(list ?? [])];
  const i = out.findIndex((x) => x.type === c.type);
  const prev = i >= 0 ? out[i] : undefined;
  const next: Condition = {
    ...c,
    lastTransitionTime: prev && prev.status === c.status ? prev.lastTransitionTime : now,
  };
  if (i >= 0) out[i] = next;
  else out.push(next);
  return out;
}

const iso = (ms: number): string | undefined =>
  ms > 0 ? new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z') : undefined;

/** Status for a not-yet-started object that waits (or is refused for good). */
export function waitingStatus(
  w: OperationWorld,
  a: { final: boolean; reason: string; message: string },
  now: string,
): OperationStatus {
  const o = w.obj;
  const gen = o.metadata.generation;
  let conditions = setCondition(
    o.status?.conditions,
    {
      type: 'Accepted',
      status: 'False',
      reason: a.reason,
      message: a.message,
      ...(gen ? { observedGeneration: gen } : {}),
    },
    now,
  );
  if (a.final) {
    conditions = setCondition(
      conditions,
      { type: 'Failed', status: 'True', reason: a.reason, message: a.message },
      now,
    );
  }
  return {
    ...o.status,
    phase: a.final ? 'Failed' : 'Pending',
    message: a.message,
    ...(gen ? { observedGeneration: gen } : {}),
    ...(a.final ? { completionTime: now } : {}),
    conditions,
  };
}

/** Status that mirrors the node operation. */
export function statusFromOperation(
  w: Pick<OperationWorld, 'kind' | 'obj'>,
  op: AgentOperation,
  now: string,
  extra: { restorePointSnapshot?: string; sourceSnapshot?: string } = {},
): OperationStatus {
  const o = w.obj;
  const gen = o.metadata.generation;
  let c = setCondition(
    o.status?.conditions,
    { type: 'Accepted', status: 'True', reason: 'Accepted', message: `node operation ${op.operationId}` },
    now,
  );
  let phase: Phase;
  const pct = op.blocksTotal > 0 ? Math.floor((op.blocksDone / op.blocksTotal) * 100) : 0;
  switch (op.state) {
    case 'PENDING':
      phase = 'Pending';
      c = setCondition(c, { type: 'Progressing', status: 'True', reason: 'Starting', message: op.message }, now);
      break;
    case 'RUNNING':
      phase = activePhase(w.kind);
      c = setCondition(
        c,
        { type: 'Progressing', status: 'True', reason: 'Copying', message: `${pct}% of ${op.blocksTotal} blocks` },
        now,
      );
      break;
    case 'COMPLETED':
      phase = 'Completed';
      c = setCondition(c, { type: 'Progressing', status: 'False', reason: 'Completed', message: op.message }, now);
      c = setCondition(c, { type: 'Complete', status: 'True', reason: 'Completed', message: op.message }, now);
      break;
    case 'FAILED':
      phase = 'Failed';
      c = setCondition(c, { type: 'Progressing', status: 'False', reason: 'Failed', message: op.message }, now);
      c = setCondition(c, { type: 'Failed', status: 'True', reason: reasonOf(op.errorCode), message: op.message }, now);
      break;
  }
  if (o.metadata.deletionTimestamp && op.mustFinish) {
    c = setCondition(
      c,
      {
        type: 'DeletionDeferred',
        status: 'True',
        reason: 'CopyMustFinish',
        message: `the ${kindName(w.kind)} was deleted while its copy runs; the copy must finish for the volume's content to be consistent, and the object goes away when it does`,
      },
      now,
    );
  }
  return {
    ...o.status,
    phase,
    progress: `${op.blocksDone}/${op.blocksTotal}`,
    blocksDone: op.blocksDone,
    blocksTotal: op.blocksTotal,
    blockSizeBytes: op.blockSizeBytes,
    ...(iso(op.startTimeMs) ? { startTime: iso(op.startTimeMs) } : {}),
    ...(iso(op.completionTimeMs) ? { completionTime: iso(op.completionTimeMs) } : {}),
    message: op.message,
    ...(w.kind === 'refresh' ? { sourceVolumeHandle: op.sourceVolumeId } : {}),
    ...extra,
    ...(gen ? { observedGeneration: gen } : {}),
    conditions: c,
  };
}

/** CamelCase condition reason of a node error code (AGENT_ERR_NOT_IN_LINEAGE -> NotInLineage). */
export function reasonOf(code: string): string {
  const parts = code
    .replace(/^[A-Z]+_ERR_/, '')
    .toLowerCase()
    .split('_')
    .filter(Boolean);
  const r = parts.map((p) => p[0]?.toUpperCase() + p.slice(1)).join('');
  return r === '' ? 'Failed' : r;
}
