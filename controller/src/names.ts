// SPDX-License-Identifier: Apache-2.0
// Names shared with upstream Kubernetes components. Finalizers, annotations and labels of the snapshot
// API are external-snapshotter's (pkg/utils/util.go) so that tools written for upstream (Velero, Kasten,
// dashboards) see the same objects; the provisioner's are external-provisioner's and kube-controller-
// manager's. Our own keys live under loopsnap.dev/.

export const DEFAULT_DRIVER_NAME = 'csi.loopsnap.dev';
export const TOPOLOGY_KEY = 'topology.loopsnap.dev/node';

export const SNAPSHOT_GROUP = 'snapshot.storage.k8s.io';
export const SNAPSHOT_API_VERSION = 'snapshot.storage.k8s.io/v1';

// VolumeSnapshot / VolumeSnapshotContent / PVC finalizers.
export const FIN_CONTENT_BOUND = 'snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection';
export const FIN_SNAPSHOT_BOUND = 'snapshot.storage.kubernetes.io/volumesnapshot-bound-protection';
export const FIN_SNAPSHOT_AS_SOURCE = 'snapshot.storage.kubernetes.io/volumesnapshot-as-source-protection';
export const FIN_PVC_AS_SOURCE = 'snapshot.storage.kubernetes.io/pvc-as-source-protection';

// VolumeSnapshotContent annotations.
/** Set before CreateSnapshot; removed on success or a final error; keeps the content from being deleted. */
export const ANN_BEING_CREATED = 'snapshot.storage.kubernetes.io/volumesnapshot-being-created';
/** Set on the content by the snapshot controller when the VolumeSnapshot is deleted (policy Delete). */
export const ANN_BEING_DELETED = 'snapshot.storage.kubernetes.io/volumesnapshot-being-deleted';
/**
 * Ours: set when the node reports a once-ready snapshot as no longer ready (the engine invalidated it, EC-5);
 * value: when, RFC 3339. An invalidated snapshot is never polled or re-created again; it can only be deleted.
 */
export const ANN_SNAPSHOT_INVALID = 'loopsnap.dev/snapshot-invalidated';
/** On a PV: the abnormal VolumeCondition message last reported as an event (volume-health-logic.ts). */
export const ANN_VOLUME_CONDITION = 'loopsnap.dev/volume-condition';
export const ANN_DEFAULT_SNAPSHOT_CLASS = 'snapshot.storage.kubernetes.io/is-default-class';
/** Node that owns a node-local volume's snapshots (upstream "distributed snapshotting"). */
export const LABEL_MANAGED_BY = 'snapshot.storage.kubernetes.io/managed-by';

// Provisioning (kube-controller-manager and external-provisioner).
export const ANN_STORAGE_PROVISIONER = 'volume.kubernetes.io/storage-provisioner';
export const ANN_BETA_STORAGE_PROVISIONER = 'volume.beta.kubernetes.io/storage-provisioner';
export const ANN_SELECTED_NODE = 'volume.kubernetes.io/selected-node';
export const ANN_PROVISIONED_BY = 'pv.kubernetes.io/provisioned-by';
export const ANN_STORAGE_RESIZER = 'volume.kubernetes.io/storage-resizer';
export const ANN_DEFAULT_STORAGE_CLASS = 'storageclass.kubernetes.io/is-default-class';
export const FIN_PV_PROVISIONER = 'external-provisioner.volume.kubernetes.io/finalizer';

// Ours.
/** Node chosen for a PVC, persisted before CreateVolume so a retry goes to the same node. */
export const ANN_PROVISIONING_NODE = 'loopsnap.dev/provisioning-node';
/** Held on a PVC from the node choice until its PV exists, so a volume is never orphaned. */
export const FIN_PVC_PROVISIONING = 'loopsnap.dev/provisioning-protection';

/** StorageClass / VolumeSnapshotClass parameters with this prefix are for us, not for the driver. */
export const RESERVED_PARAMETER_PREFIX = 'csi.storage.k8s.io/';
export const PARAM_FSTYPE = 'csi.storage.k8s.io/fstype';

export function contentNameFor(snapshotUid: string): string {
  return `snapcontent-${snapshotUid}`;
}

export function csiSnapshotNameFor(prefix: string, snapshotUid: string): string {
  return `${prefix}-${snapshotUid}`;
}

export function pvNameFor(pvcUid: string): string {
  return `pvc-${pvcUid}`;
}

/** Event reasons. The snapshot ones are upstream's, so existing alerts keep matching. */
export const Reason = {
  SnapshotValidationError: 'SnapshotValidationError',
  SnapshotFinalizerError: 'SnapshotFinalizerError',
  SnapshotContentMissing: 'SnapshotContentMissing',
  SnapshotBindFailed: 'SnapshotBindFailed',
  SnapshotPVCSourceMissing: 'SnapshotPVCSourceMissing',
  SnapshotContentCreationFailed: 'SnapshotContentCreationFailed',
  CreateSnapshotContentFailed: 'CreateSnapshotContentFailed',
  SnapshotDeletePending: 'SnapshotDeletePending',
  SnapshotContentObjectDeleteError: 'SnapshotContentObjectDeleteError',
  ContentValidationError: 'ContentValidationError',
  SnapshotCreated: 'SnapshotCreated',
  SnapshotReady: 'SnapshotReady',
  SnapshotCreationFailed: 'SnapshotCreationFailed',
  SnapshotContentCheckandUpdateFailed: 'SnapshotContentCheckandUpdateFailed',
  SnapshotDeleteError: 'SnapshotDeleteError',
  NodeUnavailable: 'NodeUnavailable',
  SnapshotInvalidated: 'SnapshotInvalidated',
  Provisioning: 'Provisioning',
  ProvisioningSucceeded: 'ProvisioningSucceeded',
  ProvisioningFailed: 'ProvisioningFailed',
  VolumeDeleted: 'VolumeDeleted',
  VolumeFailedDelete: 'VolumeFailedDelete',
  Resizing: 'Resizing',
  VolumeResizeFailed: 'VolumeResizeFailed',
  VolumeResizeSuccessful: 'VolumeResizeSuccessful',
  FileSystemResizeRequired: 'FileSystemResizeRequired',
  /** external-health-monitor's reasons, so alerts on them keep matching. */
  VolumeConditionAbnormal: 'VolumeConditionAbnormal',
  VolumeConditionNormal: 'VolumeConditionNormal',
} as const;
export type Reason = (typeof Reason)[keyof typeof Reason];
