// SPDX-License-Identifier: Apache-2.0
// Pure decisions of the VolumeSnapshot controller: given what the cache holds about one VolumeSnapshot,
// which single step comes next. No I/O; unit-tested table-driven in snapshot-logic.test.ts.
//
// Design (external-snapshotter's, kept): the binding is a bi-directional pointer,
// VolumeSnapshot.status.boundVolumeSnapshotContentName <-> VolumeSnapshotContent.spec.volumeSnapshotRef
// (with the snapshot's UID). Both sides are checked before the pair is used. A dynamic snapshot's content
// is named `snapcontent-<snapshot UID>`, so a crashed controller finds the content it created instead of
// creating a second one.
import { ErrorCode } from './errors.js';
import type {
  PersistentVolume,
  PersistentVolumeClaim,
  StorageClass,
  VolumeSnapshot,
  VolumeSnapshotClass,
  VolumeSnapshotContent,
} from './kube/types.js';
import {
  ANN_BEING_CREATED,
  ANN_DEFAULT_SNAPSHOT_CLASS,
  ANN_STORAGE_PROVISIONER,
  contentNameFor,
  FIN_CONTENT_BOUND,
  FIN_PVC_AS_SOURCE,
  FIN_SNAPSHOT_AS_SOURCE,
  FIN_SNAPSHOT_BOUND,
  LABEL_MANAGED_BY,
  Reason,
  SNAPSHOT_API_VERSION,
  TOPOLOGY_KEY,
} from './names.js';
import { formatQuantityBytes, nsToTime } from './quantity.js';

export interface SnapshotWorld {
  readonly driver: string;
  readonly vs: VolumeSnapshot;
  readonly classes: readonly VolumeSnapshotClass[];
  /** Dynamic source, when it exists. */
  readonly pvc?: PersistentVolumeClaim | undefined;
  readonly pv?: PersistentVolume | undefined;
  readonly storageClass?: StorageClass | undefined;
  /** The content the snapshot is (or will be) bound to, when it exists. */
  readonly content?: VolumeSnapshotContent | undefined;
  /** Pending PVCs that are being restored from this snapshot. */
  readonly restoringPvcs: readonly string[];
  /** Dynamic snapshots of the same PVC (this one included) still being created. */
  readonly pvcSnapshotsInProgress: number;
  /** Whether the node holding the source volume is ready now. */
  readonly sourceNodeReady: boolean;
}

export interface SnapshotEvent {
  readonly type: 'Normal' | 'Warning';
  readonly reason: string;
  readonly message: string;
}

export type SnapshotStatus = NonNullable<VolumeSnapshot['status']>;

export type SnapshotAction =
  | { readonly type: 'ignore' }
  | { readonly type: 'done' }
  | { readonly type: 'fail'; readonly code: ErrorCode; readonly reason: string; readonly message: string }
  | { readonly type: 'waitForRestores'; readonly pvcs: readonly string[] }
  | { readonly type: 'deleteContent'; readonly content: VolumeSnapshotContent }
  | { readonly type: 'removeFinalizers'; readonly finalizers: readonly string[] }
  | { readonly type: 'addFinalizers'; readonly finalizers: readonly string[]; readonly className?: string }
  | { readonly type: 'addPvcFinalizer'; readonly pvc: PersistentVolumeClaim }
  | { readonly type: 'removePvcFinalizer'; readonly pvc: PersistentVolumeClaim }
  | { readonly type: 'createContent'; readonly content: VolumeSnapshotContent }
  | { readonly type: 'bindContent'; readonly content: VolumeSnapshotContent }
  | { readonly type: 'updateStatus'; readonly status: SnapshotStatus; readonly events: readonly SnapshotEvent[] };

export function isDefaultClass(c: VolumeSnapshotClass): boolean {
  return c.metadata.annotations?.[ANN_DEFAULT_SNAPSHOT_CLASS] === 'true';
}

/** The node that holds a node-local PV (from its required node affinity on our topology key). */
export function nodeOfPv(pv: PersistentVolume | undefined): string | undefined {
  for (const term of pv?.spec.nodeAffinity?.required?.nodeSelectorTerms ?? []) {
    for (const e of term.matchExpressions ?? []) {
      if (e.key === TOPOLOGY_KEY && e.operator === 'In' && e.values?.length === 1) return e.values[0];
    }
  }
  return undefined;
}

export function isDynamic(vs: VolumeSnapshot): boolean {
  return vs.spec.source.persistentVolumeClaimName !== undefined;
}

/** Name of the content this snapshot is bound to, or will be. */
export function expectedContentName(vs: VolumeSnapshot): string | undefined {
  if (vs.status?.boundVolumeSnapshotContentName) return vs.status.boundVolumeSnapshotContentName;
  if (vs.spec.source.volumeSnapshotContentName) return vs.spec.source.volumeSnapshotContentName;
  return vs.metadata.uid ? contentNameFor(vs.metadata.uid) : undefined;
}

/** A dynamic snapshot still needs its source PVC while it is not ready and not being deleted. */
export function isInProgress(vs: VolumeSnapshot): boolean {
  return isDynamic(vs) && !vs.metadata.deletionTimestamp && vs.status?.readyToUse !== true;
}

type Ownership = { readonly ours: true; readonly cls?: VolumeSnapshotClass } | { readonly ours: false };

/**
 * Whether the snapshot belongs to our driver, and its class when one applies. Objects of other drivers are
 * never touched; when the driver cannot be known (the class and the source are both missing) the snapshot
 * is ours only if our driver has a default class, so that the user gets an event.
 */
export function ownership(w: SnapshotWorld): Ownership {
  const { vs, driver } = w;
  const named = vs.spec.volumeSnapshotClassName;
  const cls = named ? w.classes.find((c) => c.metadata.name === named) : undefined;
  if (w.content) return w.content.spec.driver === driver ? { ours: true, ...(cls ? { cls } : {}) } : { ours: false };
  if (cls) return cls.driver === driver ? { ours: true, cls } : { ours: false };
  const pvDriver = w.pv?.spec.csi?.driver;
  if (pvDriver !== undefined) return pvDriver === driver ? { ours: true } : { ours: false };
  const scProvisioner = w.storageClass?.provisioner ?? w.pvc?.metadata.annotations?.[ANN_STORAGE_PROVISIONER];
  if (scProvisioner !== undefined) return scProvisioner === driver ? { ours: true } : { ours: false };
  return w.classes.some((c) => c.driver === driver && isDefaultClass(c)) ? { ours: true } : { ours: false };
}

export type FailAction = Extract<SnapshotAction, { type: 'fail' }>;

function fail(code: ErrorCode, reason: string, message: string): FailAction {
  return { type: 'fail', code, reason, message };
}

/** The class a dynamic snapshot uses: the named one, or the single default class of our driver. */
export function resolveClass(
  w: SnapshotWorld,
): { readonly cls: VolumeSnapshotClass; readonly defaulted: boolean } | FailAction {
  const named = w.vs.spec.volumeSnapshotClassName;
  if (named) {
    const cls = w.classes.find((c) => c.metadata.name === named);
    if (!cls) {
      return fail(
        ErrorCode.ClassNotFound,
        Reason.SnapshotContentCreationFailed,
        `VolumeSnapshotClass "${named}" not found`,
      );
    }
    if (cls.driver !== w.driver) {
      return fail(
        ErrorCode.ClassDriverMismatch,
        Reason.SnapshotContentCreationFailed,
        `VolumeSnapshotClass "${named}" is for driver "${cls.driver}", but the volume is provisioned by "${w.driver}"`,
      );
    }
    return { cls, defaulted: false };
  }
  const defaults = w.classes.filter((c) => c.driver === w.driver && isDefaultClass(c));
  if (defaults.length === 0) {
    return fail(
      ErrorCode.NoDefaultClass,
      Reason.SnapshotContentCreationFailed,
      `no VolumeSnapshotClass is set and driver "${w.driver}" has no default class (annotation ${ANN_DEFAULT_SNAPSHOT_CLASS}: "true")`,
    );
  }
  if (defaults.length > 1) {
    const names = defaults.map((c) => c.metadata.name).sort();
    return fail(
      ErrorCode.MultipleDefaultClasses,
      Reason.SnapshotContentCreationFailed,
      `driver "${w.driver}" has ${defaults.length} default VolumeSnapshotClasses (${names.join(', ')}); set spec.volumeSnapshotClassName`,
    );
  }
  return { cls: defaults[0] as VolumeSnapshotClass, defaulted: true };
}

/** The status a bound snapshot shows: its content's, plus the binding. */
export function statusFromContent(vs: VolumeSnapshot, content: VolumeSnapshotContent): SnapshotStatus {
  const cs = content.status ?? {};
  const out: SnapshotStatus = {
    boundVolumeSnapshotContentName: content.metadata.name,
    readyToUse: cs.readyToUse === true,
  };
  if (cs.creationTime !== undefined && cs.creationTime > 0) out.creationTime = nsToTime(BigInt(cs.creationTime));
  if (cs.restoreSize !== undefined) out.restoreSize = formatQuantityBytes(BigInt(cs.restoreSize));
  if (cs.error) out.error = { ...cs.error };
  if (vs.status?.volumeGroupSnapshotName) out.volumeGroupSnapshotName = vs.status.volumeGroupSnapshotName;
  return out;
}

function sameStatus(a: SnapshotStatus | undefined, b: SnapshotStatus): boolean {
  const x = a ?? {};
  return (
    x.boundVolumeSnapshotContentName === b.boundVolumeSnapshotContentName &&
    (x.readyToUse ?? false) === (b.readyToUse ?? false) &&
    x.creationTime === b.creationTime &&
    x.restoreSize === b.restoreSize &&
    x.error?.message === b.error?.message
  );
}

function transitionEvents(vs: VolumeSnapshot, next: SnapshotStatus): SnapshotEvent[] {
  const events: SnapshotEvent[] = [];
  const name = `${vs.metadata.namespace}/${vs.metadata.name}`;
  if (!vs.status?.creationTime && next.creationTime) {
    events.push({
      type: 'Normal',
      reason: Reason.SnapshotCreated,
      message: `Snapshot ${name} was successfully created by the CSI driver.`,
    });
  }
  if (vs.status?.readyToUse !== true && next.readyToUse === true) {
    events.push({ type: 'Normal', reason: Reason.SnapshotReady, message: `Snapshot ${name} is ready to use.` });
  }
  return events;
}

export function buildContent(w: SnapshotWorld, cls: VolumeSnapshotClass, pv: PersistentVolume): VolumeSnapshotContent {
  const { vs } = w;
  const uid = vs.metadata.uid as string;
  const node = nodeOfPv(pv);
  const annotations: Record<string, string> = {};
  // Conservative: the annotation only promises that CreateSnapshot may have been called.
  if (w.sourceNodeReady) annotations[ANN_BEING_CREATED] = 'yes';
  return {
    metadata: {
      name: contentNameFor(uid),
      ...(node ? { labels: { [LABEL_MANAGED_BY]: node } } : {}),
      finalizers: [FIN_CONTENT_BOUND],
      annotations,
    },
    spec: {
      volumeSnapshotRef: {
        kind: 'VolumeSnapshot',
        apiVersion: SNAPSHOT_API_VERSION,
        name: vs.metadata.name,
        namespace: vs.metadata.namespace as string,
        uid,
        ...(vs.metadata.resourceVersion ? { resourceVersion: vs.metadata.resourceVersion } : {}),
      },
      source: { volumeHandle: pv.spec.csi?.volumeHandle as string },
      volumeSnapshotClassName: cls.metadata.name,
      deletionPolicy: cls.deletionPolicy,
      driver: w.driver,
      sourceVolumeMode: pv.spec.volumeMode ?? 'Filesystem',
    },
  };
}

function decideDeletion(w: SnapshotWorld): SnapshotAction {
  const { vs, content } = w;
  const ours = (vs.metadata.finalizers ?? []).filter((f) => f === FIN_SNAPSHOT_AS_SOURCE || f === FIN_SNAPSHOT_BOUND);
  if (ours.includes(FIN_SNAPSHOT_AS_SOURCE) && w.restoringPvcs.length > 0) {
    return { type: 'waitForRestores', pvcs: w.restoringPvcs };
  }
  const boundToUs = content && content.spec.volumeSnapshotRef.uid === vs.metadata.uid;
  if (content && boundToUs && content.spec.deletionPolicy === 'Delete' && !content.metadata.deletionTimestamp) {
    return { type: 'deleteContent', content };
  }
  if (w.pvc && w.pvc.metadata.finalizers?.includes(FIN_PVC_AS_SOURCE) && w.pvcSnapshotsInProgress === 0) {
    return { type: 'removePvcFinalizer', pvc: w.pvc };
  }
  if (ours.length > 0) return { type: 'removeFinalizers', finalizers: ours };
  return { type: 'done' };
}

function decideBound(w: SnapshotWorld, content: VolumeSnapshotContent): SnapshotAction {
  const { vs } = w;
  const ref = content.spec.volumeSnapshotRef;
  if (ref.name !== vs.metadata.name || ref.namespace !== vs.metadata.namespace) {
    return fail(
      ErrorCode.BindMismatch,
      Reason.SnapshotBindFailed,
      `VolumeSnapshotContent "${content.metadata.name}" refers to VolumeSnapshot ${ref.namespace}/${ref.name}, not to this snapshot`,
    );
  }
  if (!ref.uid) {
    if (isDynamic(vs)) {
      return fail(
        ErrorCode.BindMismatch,
        Reason.SnapshotBindFailed,
        `VolumeSnapshotContent "${content.metadata.name}" has no snapshot UID`,
      );
    }
    return { type: 'bindContent', content };
  }
  if (ref.uid !== vs.metadata.uid) {
    return fail(
      ErrorCode.BindMismatch,
      Reason.SnapshotBindFailed,
      `VolumeSnapshotContent "${content.metadata.name}" is bound to another VolumeSnapshot with the same name (UID ${ref.uid})`,
    );
  }
  const next = statusFromContent(vs, content);
  if (!sameStatus(vs.status, next)) return { type: 'updateStatus', status: next, events: transitionEvents(vs, next) };
  if (w.pvc?.metadata.finalizers?.includes(FIN_PVC_AS_SOURCE) && w.pvcSnapshotsInProgress === 0) {
    return { type: 'removePvcFinalizer', pvc: w.pvc };
  }
  return { type: 'done' };
}

/** The next step for one VolumeSnapshot. */
export function decideSnapshotAction(w: SnapshotWorld): SnapshotAction {
  const { vs } = w;
  const own = ownership(w);
  if (!own.ours) return { type: 'ignore' };
  if (vs.metadata.deletionTimestamp) return decideDeletion(w);

  const dynamic = isDynamic(vs);
  const preName = vs.spec.source.volumeSnapshotContentName;
  if (!dynamic && !preName) {
    return fail(
      ErrorCode.InvalidSpec,
      Reason.SnapshotValidationError,
      'exactly one of spec.source.persistentVolumeClaimName and spec.source.volumeSnapshotContentName must be set',
    );
  }

  let className: string | undefined;
  let cls: VolumeSnapshotClass | undefined;
  if (dynamic && !w.content) {
    const r = resolveClass(w);
    if ('type' in r) return r;
    cls = r.cls;
    if (r.defaulted) className = r.cls.metadata.name;
  }

  const missing = [FIN_SNAPSHOT_AS_SOURCE, FIN_SNAPSHOT_BOUND].filter((f) => !vs.metadata.finalizers?.includes(f));
  if (missing.length > 0 || className) {
    return { type: 'addFinalizers', finalizers: missing, ...(className ? { className } : {}) };
  }

  if (!dynamic) {
    if (!w.content) {
      return fail(
        ErrorCode.ContentMissing,
        Reason.SnapshotContentMissing,
        `VolumeSnapshotContent "${preName}" not found`,
      );
    }
    return decideBound(w, w.content);
  }

  if (w.content) return decideBound(w, w.content);

  // Dynamic snapshot without content yet: the source must be a bound PVC of our driver.
  const pvcName = vs.spec.source.persistentVolumeClaimName as string;
  if (!w.pvc) {
    return fail(ErrorCode.PvcNotFound, Reason.SnapshotPVCSourceMissing, `PersistentVolumeClaim "${pvcName}" not found`);
  }
  if (w.pvc.metadata.deletionTimestamp) {
    return fail(
      ErrorCode.PvcDeleting,
      Reason.SnapshotPVCSourceMissing,
      `PersistentVolumeClaim "${pvcName}" is being deleted`,
    );
  }
  if (!w.pvc.spec.volumeName || w.pvc.status?.phase !== 'Bound' || !w.pv) {
    return fail(
      ErrorCode.PvcNotBound,
      Reason.SnapshotPVCSourceMissing,
      `PersistentVolumeClaim "${pvcName}" is not bound to a PersistentVolume yet; the snapshot will be taken once it is`,
    );
  }
  if (w.pv.spec.csi?.driver !== w.driver || !w.pv.spec.csi.volumeHandle) {
    return fail(
      ErrorCode.ClassDriverMismatch,
      Reason.SnapshotContentCreationFailed,
      `PersistentVolume "${w.pv.metadata.name}" is not a "${w.driver}" volume`,
    );
  }
  if (!w.pvc.metadata.finalizers?.includes(FIN_PVC_AS_SOURCE)) return { type: 'addPvcFinalizer', pvc: w.pvc };
  return { type: 'createContent', content: buildContent(w, cls as VolumeSnapshotClass, w.pv) };
}
