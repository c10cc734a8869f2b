// SPDX-License-Identifier: Apache-2.0
// Pure decisions of the provisioner (external-provisioner's job for PVCs of a StorageClass whose
// provisioner is our driver). No I/O; unit-tested in provision-logic.test.ts.
//
// Crash safety: the node is chosen once and persisted on the PVC (annotation loopsnap.dev/provisioning-node,
// together with the finalizer loopsnap.dev/provisioning-protection) before CreateVolume is called. CreateVolume
// is idempotent by name (`pvc-<PVC UID>`, also the PV name), so a retry after a crash gets the same volume on
// the same node. The finalizer goes once the PV exists; a PVC deleted before that first has its volume deleted.
import type { CreateVolumeArgs, CsiAccessMode, VolumeCapabilitySpec } from './csi-client/node-client.js';
import { ErrorCode } from './errors.js';
import type {
  PersistentVolume,
  PersistentVolumeClaim,
  StorageClass,
  VolumeSnapshot,
  VolumeSnapshotContent,
} from './kube/types.js';
import {
  ANN_BETA_STORAGE_PROVISIONER,
  ANN_PROVISIONED_BY,
  ANN_PROVISIONING_NODE,
  ANN_SELECTED_NODE,
  ANN_STORAGE_PROVISIONER,
  FIN_PV_PROVISIONER,
  FIN_PVC_PROVISIONING,
  LABEL_MANAGED_BY,
  PARAM_FSTYPE,
  pvNameFor,
  RESERVED_PARAMETER_PREFIX,
  SNAPSHOT_GROUP,
  TOPOLOGY_KEY,
} from './names.js';
import type { NodeInfo } from './node-registry.js';
import { formatQuantityBytes, parseQuantityBytes } from './quantity.js';
import { nodeOfPv } from './snapshot-logic.js';

export const ANN_ALLOW_VOLUME_MODE_CHANGE = 'snapshot.storage.kubernetes.io/allow-volume-mode-change';

export type DataSource =
  | { readonly kind: 'none' }
  | {
      readonly kind: 'snapshot';
      readonly name: string;
      readonly snapshot?: VolumeSnapshot | undefined;
      readonly content?: VolumeSnapshotContent | undefined;
      /** Nodes known to hold the snapshot (its managed-by node, plus nodes holding a clone-method image). */
      readonly nodes: readonly string[];
    }
  | {
      readonly kind: 'pvc';
      readonly name: string;
      readonly pvc?: PersistentVolumeClaim | undefined;
      readonly pv?: PersistentVolume | undefined;
    }
  | { readonly kind: 'unsupported'; readonly message: string };

export interface ProvisionWorld {
  readonly driver: string;
  readonly defaultFsType: string;
  readonly pvc: PersistentVolumeClaim;
  readonly storageClass?: StorageClass | undefined;
  /** The PV named pvc-<uid>, when it exists. */
  readonly pv?: PersistentVolume | undefined;
  readonly source: DataSource;
  readonly nodes: readonly NodeInfo[];
}

export type ProvisionAction =
  | { readonly type: 'ignore' }
  | { readonly type: 'done' }
  | { readonly type: 'fail'; readonly code: ErrorCode; readonly message: string }
  | { readonly type: 'chooseNode'; readonly node: string }
  | {
      readonly type: 'provision';
      readonly node: string;
      readonly request: CreateVolumeArgs;
      readonly fsType: string | undefined;
    }
  | { readonly type: 'releaseFinalizer' }
  /** Deleted before its PV existed: CreateVolume again (idempotent, learns the id), then DeleteVolume. */
  | { readonly type: 'cleanupAbandoned'; readonly node: string; readonly request: CreateVolumeArgs };

export function provisionerOf(pvc: PersistentVolumeClaim): string | undefined {
  const a = pvc.metadata.annotations ?? {};
  return a[ANN_STORAGE_PROVISIONER] ?? a[ANN_BETA_STORAGE_PROVISIONER];
}

/** Our PVC: its StorageClass names our driver (or KCM annotated it for us). */
export function isOurPvc(pvc: PersistentVolumeClaim, sc: StorageClass | undefined, driver: string): boolean {
  if (sc) return sc.provisioner === driver;
  return provisionerOf(pvc) === driver;
}

export function dataSourceRef(
  pvc: PersistentVolumeClaim,
): { kind: string; apiGroup?: string; name: string; namespace?: string } | undefined {
  return pvc.spec.dataSourceRef ?? pvc.spec.dataSource;
}

const ACCESS_MODES: Record<string, CsiAccessMode> = {
  ReadWriteOnce: 'SINGLE_NODE_WRITER',
  ReadWriteOncePod: 'SINGLE_NODE_SINGLE_WRITER',
  ReadOnlyMany: 'MULTI_NODE_READER_ONLY',
  ReadWriteMany: 'MULTI_NODE_MULTI_WRITER',
};

export function volumeCapabilities(
  pvc: PersistentVolumeClaim,
  sc: StorageClass | undefined,
  defaultFsType: string,
): VolumeCapabilitySpec[] {
  const block = pvc.spec.volumeMode === 'Block';
  const fsType = block ? undefined : (sc?.parameters?.[PARAM_FSTYPE] ?? defaultFsType);
  const modes = pvc.spec.accessModes?.length ? pvc.spec.accessModes : ['ReadWriteOnce'];
  return modes.map((m) => ({
    block,
    ...(fsType ? { fsType } : {}),
    ...(sc?.mountOptions ? { mountFlags: sc.mountOptions } : {}),
    accessMode: ACCESS_MODES[m] ?? 'SINGLE_NODE_WRITER',
  }));
}

export function requestedBytes(pvc: PersistentVolumeClaim): bigint {
  const q = pvc.spec.resources?.requests?.storage;
  if (!q) return 0n;
  return parseQuantityBytes(q);
}

function allowedByTopology(sc: StorageClass | undefined, node: string): boolean {
  const terms = sc?.allowedTopologies ?? [];
  if (terms.length === 0) return true;
  return terms.some((t) =>
    (t.matchLabelExpressions ?? []).every((e) => e.key !== TOPOLOGY_KEY || e.values.includes(node)),
  );
}

/**
 * Picks the node for a new volume: ready, allowed by the class topology, holding the data source when there
 * is one, with room for the request (thin restores and clones need none up front), most free space first.
 */
export function chooseNode(
  w: ProvisionWorld,
  opts: { readonly allowed?: readonly string[] | undefined; readonly needBytes: bigint },
): { node: string } | { error: string } {
  const rejected: string[] = [];
  let best: NodeInfo | undefined;
  const pool = opts.allowed
    ? opts.allowed.map(
        (id) =>
          w.nodes.find((n) => n.nodeId === id) ?? {
            nodeId: id,
            ready: false,
            capacityBytes: 0n,
            notReadyReason: 'no registry Lease',
            endpoint: undefined,
            version: undefined,
          },
      )
    : w.nodes;
  for (const n of pool) {
    if (!n.ready) rejected.push(`${n.nodeId}: ${n.notReadyReason}`);
    else if (!allowedByTopology(w.storageClass, n.nodeId))
      rejected.push(`${n.nodeId}: not in the StorageClass allowedTopologies`);
    else if (n.capacityBytes < opts.needBytes) {
      rejected.push(
        `${n.nodeId}: ${formatQuantityBytes(n.capacityBytes)} free < ${formatQuantityBytes(opts.needBytes)} requested`,
      );
    } else if (!best || n.capacityBytes > best.capacityBytes) best = n;
  }
  if (best) return { node: best.nodeId };
  if (pool.length === 0) return { error: 'no node plugin is registered (no loopsnap-node-* Lease)' };
  return { error: `no suitable node: ${rejected.join('; ')}` };
}

function fail(code: ErrorCode, message: string): ProvisionAction {
  return { type: 'fail', code, message };
}

/** The CreateVolume request (minus topology, added once the node is known) or why it cannot be made yet. */
export function buildRequest(w: ProvisionWorld, node: string): CreateVolumeArgs | { error: ProvisionAction } {
  const { pvc, storageClass: sc, source } = w;
  let required: bigint;
  try {
    required = requestedBytes(pvc);
  } catch (err) {
    return { error: fail(ErrorCode.InvalidSpec, (err as Error).message) };
  }
  const parameters: Record<string, string> = {};
  for (const [k, v] of Object.entries(sc?.parameters ?? {}))
    if (!k.startsWith(RESERVED_PARAMETER_PREFIX)) parameters[k] = v;
  const base = {
    name: pvNameFor(pvc.metadata.uid as string),
    requiredBytes: required,
    parameters,
    capabilities: volumeCapabilities(pvc, sc, w.defaultFsType),
    topology: { [TOPOLOGY_KEY]: node },
  };
  if (source.kind === 'snapshot') {
    const handle = source.content?.status?.snapshotHandle;
    if (!handle)
      return {
        error: fail(ErrorCode.DataSourceNotReady, `VolumeSnapshot "${source.name}" has no snapshot handle yet`),
      };
    const lock = source.content?.spec.source.volumeHandle;
    return { ...base, source: { snapshotId: handle }, ...(lock ? { lockVolumeId: lock } : {}) };
  }
  if (source.kind === 'pvc') {
    const handle = source.pv?.spec.csi?.volumeHandle;
    if (!handle)
      return { error: fail(ErrorCode.DataSourceNotReady, `PersistentVolumeClaim "${source.name}" is not bound yet`) };
    return { ...base, source: { volumeId: handle } };
  }
  return base;
}

/** Checks the data source and returns the nodes it restricts the volume to (undefined: any node). */
function checkSource(
  w: ProvisionWorld,
  required: bigint,
): { nodes?: readonly string[]; thin: boolean } | ProvisionAction {
  const { source, pvc } = w;
  if (source.kind === 'none') return { thin: false };
  if (source.kind === 'unsupported') return fail(ErrorCode.DataSourceInvalid, source.message);
  if (source.kind === 'snapshot') {
    const vs = source.snapshot;
    if (!vs) return fail(ErrorCode.DataSourceNotReady, `VolumeSnapshot "${source.name}" not found`);
    if (vs.metadata.deletionTimestamp)
      return fail(ErrorCode.DataSourceInvalid, `VolumeSnapshot "${source.name}" is being deleted`);
    if (vs.status?.readyToUse !== true || !source.content) {
      return fail(ErrorCode.DataSourceNotReady, `waiting for VolumeSnapshot "${source.name}" to be ready to use`);
    }
    if (source.content.spec.driver !== w.driver) {
      return fail(
        ErrorCode.DataSourceInvalid,
        `VolumeSnapshot "${source.name}" is not a snapshot of driver "${w.driver}"`,
      );
    }
    const restore = BigInt(source.content.status?.restoreSize ?? 0);
    if (required < restore) {
      return fail(
        ErrorCode.InvalidSpec,
        `requested size ${formatQuantityBytes(required)} is smaller than the snapshot's restore size ${formatQuantityBytes(restore)}`,
      );
    }
    const srcMode = source.content.spec.sourceVolumeMode;
    const mode = pvc.spec.volumeMode ?? 'Filesystem';
    if (srcMode && srcMode !== mode && source.content.metadata.annotations?.[ANN_ALLOW_VOLUME_MODE_CHANGE] !== 'true') {
      return fail(
        ErrorCode.DataSourceInvalid,
        `volume mode ${mode} differs from the snapshot's source mode ${srcMode} (annotate the VolumeSnapshotContent with ${ANN_ALLOW_VOLUME_MODE_CHANGE}: "true" to allow it)`,
      );
    }
    if (source.nodes.length === 0) {
      return fail(
        ErrorCode.DataSourceInvalid,
        `cannot tell which node holds VolumeSnapshot "${source.name}" (no ${LABEL_MANAGED_BY} label)`,
      );
    }
    return { nodes: source.nodes, thin: true };
  }
  const spvc = source.pvc;
  if (!spvc) return fail(ErrorCode.DataSourceNotReady, `source PersistentVolumeClaim "${source.name}" not found`);
  if (spvc.metadata.deletionTimestamp)
    return fail(ErrorCode.DataSourceInvalid, `source PersistentVolumeClaim "${source.name}" is being deleted`);
  if (!source.pv || spvc.status?.phase !== 'Bound') {
    return fail(ErrorCode.DataSourceNotReady, `waiting for source PersistentVolumeClaim "${source.name}" to be bound`);
  }
  if (source.pv.spec.csi?.driver !== w.driver) {
    return fail(
      ErrorCode.DataSourceInvalid,
      `source PersistentVolumeClaim "${source.name}" is not a "${w.driver}" volume`,
    );
  }
  const srcSize = parseQuantityBytes(spvc.status?.capacity?.storage ?? source.pv.spec.capacity?.storage ?? '0');
  if (required < srcSize) {
    return fail(
      ErrorCode.InvalidSpec,
      `requested size ${formatQuantityBytes(required)} is smaller than the source volume's ${formatQuantityBytes(srcSize)}`,
    );
  }
  if ((spvc.spec.volumeMode ?? 'Filesystem') !== (pvc.spec.volumeMode ?? 'Filesystem')) {
    return fail(
      ErrorCode.DataSourceInvalid,
      'a clone must have the same volumeMode as its source PersistentVolumeClaim',
    );
  }
  const node = nodeOfPv(source.pv);
  if (!node)
    return fail(
      ErrorCode.DataSourceInvalid,
      `cannot tell which node holds PersistentVolume "${source.pv.metadata.name}"`,
    );
  return { nodes: [node], thin: true };
}

/** The next provisioning step for one PVC. */
export function decideProvisionAction(w: ProvisionWorld): ProvisionAction {
  const { pvc, storageClass: sc } = w;
  if (!isOurPvc(pvc, sc, w.driver)) return { type: 'ignore' };
  const hasFin = pvc.metadata.finalizers?.includes(FIN_PVC_PROVISIONING) ?? false;
  const chosen = pvc.metadata.annotations?.[ANN_PROVISIONING_NODE];

  if (pvc.metadata.deletionTimestamp) {
    if (!hasFin) return { type: 'done' };
    if (w.pv || !chosen) return { type: 'releaseFinalizer' };
    // The same request as the original call, so the plugin's idempotency by name returns that volume.
    let req = buildRequest(w, chosen);
    if ('error' in req) req = buildRequest({ ...w, source: { kind: 'none' } }, chosen);
    if ('error' in req) return { type: 'releaseFinalizer' };
    return { type: 'cleanupAbandoned', node: chosen, request: req };
  }
  if (pvc.spec.volumeName || pvc.status?.phase === 'Bound')
    return hasFin ? { type: 'releaseFinalizer' } : { type: 'done' };
  if (w.pv) return hasFin ? { type: 'releaseFinalizer' } : { type: 'done' };
  if (!sc) {
    return fail(ErrorCode.ClassNotFound, `StorageClass "${pvc.spec.storageClassName ?? ''}" not found`);
  }

  let required: bigint;
  try {
    required = requestedBytes(pvc);
  } catch (err) {
    return fail(ErrorCode.InvalidSpec, (err as Error).message);
  }
  if (required <= 0n) return fail(ErrorCode.InvalidSpec, 'spec.resources.requests.storage must be set and positive');

  const src = checkSource(w, required);
  if ('type' in src) return src;

  if (!chosen) {
    const selected = pvc.metadata.annotations?.[ANN_SELECTED_NODE];
    if (sc.volumeBindingMode === 'WaitForFirstConsumer' && !selected) return { type: 'done' };
    let allowed = src.nodes;
    if (selected) {
      if (allowed && !allowed.includes(selected)) {
        return fail(
          ErrorCode.NoSuitableNode,
          `the scheduler selected node "${selected}", but the data source is only on ${allowed.map((n) => `"${n}"`).join(', ')}`,
        );
      }
      allowed = [selected];
    }
    const pick = chooseNode(w, { allowed, needBytes: src.thin ? 0n : required });
    if ('error' in pick) return fail(ErrorCode.NoSuitableNode, pick.error);
    return { type: 'chooseNode', node: pick.node };
  }
  const req = buildRequest(w, chosen);
  if ('error' in req) return req.error;
  const block = pvc.spec.volumeMode === 'Block';
  return {
    type: 'provision',
    node: chosen,
    request: req,
    fsType: block ? undefined : (sc.parameters?.[PARAM_FSTYPE] ?? w.defaultFsType),
  };
}

/** The PV for a volume created on `node`. */
export function buildPv(
  w: ProvisionWorld,
  node: string,
  vol: { volumeId: string; capacityBytes: bigint; volumeContext: Record<string, string> },
  fsType: string | undefined,
): PersistentVolume {
  const { pvc, storageClass: sc } = w;
  const required = requestedBytes(pvc);
  const size = vol.capacityBytes > 0n ? vol.capacityBytes : required;
  return {
    metadata: {
      name: pvNameFor(pvc.metadata.uid as string),
      annotations: { [ANN_PROVISIONED_BY]: w.driver },
      finalizers: [FIN_PV_PROVISIONER],
    },
    spec: {
      capacity: { storage: formatQuantityBytes(size) },
      accessModes: pvc.spec.accessModes?.length ? pvc.spec.accessModes : ['ReadWriteOnce'],
      persistentVolumeReclaimPolicy: sc?.reclaimPolicy ?? 'Delete',
      ...(sc ? { storageClassName: sc.metadata.name } : {}),
      volumeMode: pvc.spec.volumeMode ?? 'Filesystem',
      ...(sc?.mountOptions ? { mountOptions: sc.mountOptions } : {}),
      claimRef: {
        kind: 'PersistentVolumeClaim',
        apiVersion: 'v1',
        namespace: pvc.metadata.namespace as string,
        name: pvc.metadata.name,
        uid: pvc.metadata.uid as string,
        ...(pvc.metadata.resourceVersion ? { resourceVersion: pvc.metadata.resourceVersion } : {}),
      },
      csi: {
        driver: w.driver,
        volumeHandle: vol.volumeId,
        ...(fsType ? { fsType } : {}),
        volumeAttributes: { ...vol.volumeContext },
      },
      nodeAffinity: {
        required: {
          nodeSelectorTerms: [{ matchExpressions: [{ key: TOPOLOGY_KEY, operator: 'In', values: [node] }] }],
        },
      },
    },
  };
}

/** Data source kinds we understand; anything else is reported, not ignored. */
export function classifySource(
  pvc: PersistentVolumeClaim,
): { kind: 'none' } | { kind: 'snapshot' | 'pvc'; name: string } | { kind: 'unsupported'; message: string } {
  const ref = dataSourceRef(pvc);
  if (!ref) return { kind: 'none' };
  if (ref.namespace && ref.namespace !== pvc.metadata.namespace) {
    return {
      kind: 'unsupported',
      message: `cross-namespace data sources are not supported (dataSourceRef.namespace "${ref.namespace}")`,
    };
  }
  if (ref.kind === 'VolumeSnapshot' && ref.apiGroup === SNAPSHOT_GROUP) return { kind: 'snapshot', name: ref.name };
  if (ref.kind === 'PersistentVolumeClaim' && !ref.apiGroup) return { kind: 'pvc', name: ref.name };
  return {
    kind: 'unsupported',
    message: `unsupported data source ${ref.apiGroup ? `${ref.apiGroup}/` : ''}${ref.kind} "${ref.name}"`,
  };
}
