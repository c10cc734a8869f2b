// SPDX-License-Identifier: Apache-2.0
// What the reconcilers are built from (passed in, never constructed inside them).
import type { Logger } from '../../common/src/log.js';
import type { CsiClientPool } from './csi-client/node-client.js';
import type { KubeClient } from './kube/client.js';
import type { EventSink } from './kube/events.js';
import type { Informer } from './kube/informer.js';
import type {
  Lease,
  PersistentVolume,
  PersistentVolumeClaim,
  StorageClass,
  VolumeSnapshot,
  VolumeSnapshotClass,
  VolumeSnapshotContent,
} from './kube/types.js';
import type { ControllerMetrics } from './metrics.js';
import type { NodeRegistry } from './node-registry.js';

export interface Caches {
  readonly snapshots: Informer<VolumeSnapshot>;
  readonly contents: Informer<VolumeSnapshotContent>;
  readonly snapshotClasses: Informer<VolumeSnapshotClass>;
  readonly pvcs: Informer<PersistentVolumeClaim>;
  readonly pvs: Informer<PersistentVolume>;
  readonly storageClasses: Informer<StorageClass>;
  readonly leases: Informer<Lease>;
}

export interface ReconcilerSettings {
  readonly driverName: string;
  readonly snapshotNamePrefix: string;
  readonly workers: number;
  readonly retryIntervalStartMs: number;
  readonly retryIntervalMaxMs: number;
  /** First delay between CreateSnapshot polls while a snapshot is not ready; doubles up to 10 s. */
  readonly readyPollIntervalMs: number;
  /** How often the node is asked whether a ready snapshot still is (0: never). */
  readonly snapshotHealthIntervalMs: number;
  /** How often the node is asked for the condition of each bound volume (0: never). */
  readonly volumeHealthIntervalMs: number;
  readonly defaultFsType: string;
}

export interface Deps {
  readonly settings: ReconcilerSettings;
  readonly kube: KubeClient;
  readonly caches: Caches;
  readonly events: EventSink;
  readonly nodes: NodeRegistry;
  readonly csi: CsiClientPool;
  readonly metrics: ControllerMetrics;
  readonly log: Logger;
}
