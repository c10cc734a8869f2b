// SPDX-License-Identifier: Apache-2.0
// Object builders for the decision-function unit tests (plain JSON as the API server would send it).
import type {
  PersistentVolume,
  PersistentVolumeClaim,
  StorageClass,
  VolumeSnapshot,
  VolumeSnapshotClass,
  VolumeSnapshotContent,
} from './kube/types.js';
import {
  ANN_DEFAULT_SNAPSHOT_CLASS,
  DEFAULT_DRIVER_NAME,
  FIN_CONTENT_BOUND,
  FIN_SNAPSHOT_AS_SOURCE,
  FIN_SNAPSHOT_BOUND,
  LABEL_MANAGED_BY,
  TOPOLOGY_KEY,
} from './names.js';
import type { NodeInfo } from './node-registry.js';

export const DRIVER = DEFAULT_DRIVER_NAME;
export const NS = 'ns1';

export function vsClass(
  name: string,
  opts: { driver?: string; isDefault?: boolean; policy?: 'Delete' | 'Retain'; method?: string } = {},
): VolumeSnapshotClass {
  return {
    metadata: { name, ...(opts.isDefault ? { annotations: { [ANN_DEFAULT_SNAPSHOT_CLASS]: 'true' } } : {}) },
    driver: opts.driver ?? DRIVER,
    deletionPolicy: opts.policy ?? 'Delete',
    ...(opts.method ? { parameters: { method: opts.method } } : {}),
  };
}

export function pvc(
  name: string,
  opts: {
    bound?: string;
    sc?: string;
    size?: string;
    finalizers?: string[];
    deleting?: boolean;
    annotations?: Record<string, string>;
    dataSource?: PersistentVolumeClaim['spec']['dataSource'];
    mode?: 'Block' | 'Filesystem';
  } = {},
): PersistentVolumeClaim {
  return {
    metadata: {
      name,
      namespace: NS,
      uid: `uid-${name}`,
      resourceVersion: '10',
      ...(opts.finalizers ? { finalizers: opts.finalizers } : {}),
      ...(opts.deleting ? { deletionTimestamp: '2026-01-01T00:00:00Z' } : {}),
      ...(opts.annotations ? { annotations: opts.annotations } : {}),
    },
    spec: {
      accessModes: ['ReadWriteOnce'],
      resources: { requests: { storage: opts.size ?? '1Gi' } },
      storageClassName: opts.sc ?? 'loopsnap',
      ...(opts.bound ? { volumeName: opts.bound } : {}),
      ...(opts.dataSource ? { dataSource: opts.dataSource, dataSourceRef: opts.dataSource } : {}),
      ...(opts.mode ? { volumeMode: opts.mode } : {}),
    },
    status: opts.bound ? { phase: 'Bound', capacity: { storage: opts.size ?? '1Gi' } } : { phase: 'Pending' },
  };
}

export function pv(
  name: string,
  opts: {
    driver?: string;
    node?: string;
    handle?: string;
    claim?: string;
    phase?: 'Bound' | 'Released';
    policy?: 'Delete' | 'Retain';
    size?: string;
  } = {},
): PersistentVolume {
  return {
    metadata: { name, uid: `uid-${name}`, resourceVersion: '5' },
    spec: {
      capacity: { storage: opts.size ?? '1Gi' },
      persistentVolumeReclaimPolicy: opts.policy ?? 'Delete',
      csi: { driver: opts.driver ?? DRIVER, volumeHandle: opts.handle ?? `vol-${name}` },
      ...(opts.claim ? { claimRef: { name: opts.claim, namespace: NS, uid: `uid-${opts.claim}` } } : {}),
      nodeAffinity: {
        required: {
          nodeSelectorTerms: [
            { matchExpressions: [{ key: TOPOLOGY_KEY, operator: 'In', values: [opts.node ?? 'node-a'] }] },
          ],
        },
      },
    },
    status: { phase: opts.phase ?? 'Bound' },
  };
}

export function storageClass(
  name = 'loopsnap',
  opts: { provisioner?: string; wffc?: boolean; allowed?: string[] } = {},
): StorageClass {
  return {
    metadata: { name },
    provisioner: opts.provisioner ?? DRIVER,
    reclaimPolicy: 'Delete',
    volumeBindingMode: opts.wffc ? 'WaitForFirstConsumer' : 'Immediate',
    ...(opts.allowed
      ? { allowedTopologies: [{ matchLabelExpressions: [{ key: TOPOLOGY_KEY, values: opts.allowed }] }] }
      : {}),
  };
}

export function vs(
  name: string,
  opts: {
    pvc?: string;
    content?: string;
    cls?: string;
    finalizers?: string[];
    status?: VolumeSnapshot['status'];
    deleting?: boolean;
    uid?: string;
  } = {},
): VolumeSnapshot {
  return {
    metadata: {
      name,
      namespace: NS,
      uid: opts.uid ?? `uid-${name}`,
      resourceVersion: '20',
      finalizers: opts.finalizers ?? [FIN_SNAPSHOT_AS_SOURCE, FIN_SNAPSHOT_BOUND],
      ...(opts.deleting ? { deletionTimestamp: '2026-01-01T00:00:00Z' } : {}),
    },
    spec: {
      source: opts.content
        ? { volumeSnapshotContentName: opts.content }
        : { persistentVolumeClaimName: opts.pvc ?? 'data' },
      ...(opts.cls ? { volumeSnapshotClassName: opts.cls } : {}),
    },
    ...(opts.status ? { status: opts.status } : {}),
  };
}

export function content(
  name: string,
  opts: {
    vs?: string;
    vsUid?: string | null;
    driver?: string;
    handle?: string;
    volumeHandle?: string;
    policy?: 'Delete' | 'Retain';
    status?: VolumeSnapshotContent['status'];
    finalizers?: string[];
    annotations?: Record<string, string>;
    deleting?: boolean;
    node?: string;
    cls?: string;
  } = {},
): VolumeSnapshotContent {
  const ref = {
    name: opts.vs ?? 'snap',
    namespace: NS,
    ...(opts.vsUid === null ? {} : { uid: opts.vsUid ?? `uid-${opts.vs ?? 'snap'}` }),
  };
  return {
    metadata: {
      name,
      uid: `uid-${name}`,
      resourceVersion: '30',
      finalizers: opts.finalizers ?? [FIN_CONTENT_BOUND],
      ...(opts.annotations ? { annotations: opts.annotations } : {}),
      ...(opts.node ? { labels: { [LABEL_MANAGED_BY]: opts.node } } : {}),
      ...(opts.deleting ? { deletionTimestamp: '2026-01-01T00:00:00Z' } : {}),
    },
    spec: {
      deletionPolicy: opts.policy ?? 'Delete',
      driver: opts.driver ?? DRIVER,
      source: opts.handle ? { snapshotHandle: opts.handle } : { volumeHandle: opts.volumeHandle ?? 'vol-1' },
      volumeSnapshotRef: ref,
      ...(opts.cls ? { volumeSnapshotClassName: opts.cls } : {}),
    },
    ...(opts.status ? { status: opts.status } : {}),
  };
}

export function node(nodeId: string, opts: { ready?: boolean; capacity?: bigint } = {}): NodeInfo {
  const ready = opts.ready ?? true;
  return {
    nodeId,
    endpoint: ready ? '127.0.0.1:1' : undefined,
    capacityBytes: opts.capacity ?? 100n * 1024n ** 3n,
    version: '0.1.0',
    ready,
    notReadyReason: ready ? '' : 'Lease not renewed for 50s (duration 40s)',
  };
}
