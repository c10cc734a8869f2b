// SPDX-License-Identifier: Apache-2.0
// The port between the CSI driver layer and the node's storage: the snapshot engine (volumes, snapshots,
// changed-block tracking) together with the data path (views on the FUSE mount, loop devices, consistent
// cuts). engine-backend.ts implements it on csi/src/engine + csi/src/store + csi/src/frontend.
//
// Ids: `volumeId` is our CSI volume id (also the engine store's directory name and the live view's name);
// `engineSnapshotId` is the id of a snapshot in that volume's queue. Missing-item semantics are stated per
// method. Operations on one volume are serialised by the caller (driver/locks.ts).
import type { LoopDevice } from '../mount/loop-device.js';
import type { JobSample, VolumeGaugeSample } from '../metrics.js';

/** Engine tag of the hidden snapshot a volume clone copies from: `clone-source:<new volume id>`. */
export const HIDDEN_CLONE_TAG_PREFIX = 'clone-source:';

export type EngineSnapshotMethod = 'save-volume' | 'meta-bitmap';

export interface EngineSnapshot {
  readonly engineSnapshotId: number;
  readonly method: EngineSnapshotMethod;
  /** 'invalid': lost before-images when the save pool was full (EC-5); can only be deleted. */
  readonly state: 'valid' | 'invalid';
  readonly tag: string;
  readonly createdAt: number;
  readonly sizeBytes: number;
}

/** Byte extent; results are ascending and non-overlapping. */
export interface ByteExtent {
  readonly offset: number;
  readonly length: number;
}

export interface ExtentQuery {
  readonly startingOffset: number;
  readonly maxResults: number;
}

export interface BackendFeatures {
  /** Thin RW clones of a snapshot (issue 4, OP-7). Without it, restores copy the allocated extents. */
  readonly rwClones: boolean;
  /** `clone`-method snapshots: independent images filled in the background (issue 4). */
  readonly cloneImages: boolean;
  /** Growing a volume while its view is exposed (the data path resizes the view). */
  readonly onlineResize: boolean;
}

export interface VolumeCondition {
  readonly abnormal: boolean;
  readonly message: string;
}

export interface VolumeBackend {
  readonly features: BackendFeatures;
  /** Block size of new volumes; capacities are multiples of it. */
  readonly blockSizeBytes: number;

  /** Creates and opens an empty volume. Fails with STORE_VOLUME_EXISTS when the id is taken. */
  createVolume(volumeId: string, sizeBytes: number): Promise<void>;
  /** Closes and removes a volume and all its snapshots. Not an error when it does not exist. */
  deleteVolume(volumeId: string): Promise<void>;
  hasVolume(volumeId: string): boolean;
  /** Current size; NOT_FOUND (STORE_VOLUME_NOT_FOUND) when the volume does not exist. */
  volumeSizeBytes(volumeId: string): number;
  /** Grows a volume (never shrinks: ENGINE_SHRINK_UNSUPPORTED). */
  resizeVolume(volumeId: string, sizeBytes: number): Promise<void>;

  /**
   * Cuts a snapshot of the live volume. With `mountpoint` (a file system on the volume's loop device is
   * mounted there) the file system is frozen around the cut and always thawed.
   */
  createSnapshot(
    volumeId: string,
    opts: { method: EngineSnapshotMethod; tag: string; mountpoint?: string },
  ): Promise<EngineSnapshot>;
  /** The snapshot, or undefined when the volume or snapshot does not exist. */
  getSnapshot(volumeId: string, engineSnapshotId: number): EngineSnapshot | undefined;
  findSnapshotByTag(volumeId: string, tag: string): EngineSnapshot | undefined;
  /** Every snapshot in the volume's queue, oldest first; empty when the volume does not exist. */
  listSnapshots(volumeId: string): EngineSnapshot[];
  /** Deletes a snapshot (merging its before-images). Not an error when it does not exist. */
  deleteSnapshot(volumeId: string, engineSnapshotId: number): Promise<void>;

  /** OP-18: extents of the snapshot that may hold data (everything else reads as zeros). */
  allocatedExtents(volumeId: string, engineSnapshotId: number, q: ExtentQuery): ByteExtent[];
  /** OP-14/16: extents of `target` that may differ from `base` (base older than target, same volume). */
  changedExtents(volumeId: string, base: number, target: number, q: ExtentQuery): ByteExtent[];
  /** Reads bytes of a snapshot (OP-6). */
  readSnapshot(volumeId: string, engineSnapshotId: number, offset: number, into: Uint8Array): Promise<void>;

  /**
   * Fills the empty volume `dstVolumeId` with the content of a snapshot by copying its allocated extents
   * (full-copy restore; used while thin RW clones are unavailable). Durable on resolve.
   */
  copySnapshotInto(
    src: { volumeId: string; engineSnapshotId: number },
    dstVolumeId: string,
    signal?: AbortSignal,
  ): Promise<{ copiedBytes: number }>;

  /** Exposes the live view on the FUSE mount and attaches a loop device to it (idempotent). */
  attachVolume(volumeId: string): Promise<LoopDevice>;
  /** Detaches the loop device and stops exposing the view. Not an error when not attached. */
  detachVolume(volumeId: string): Promise<void>;
  /** The loop device currently attached to the volume's view, if any. */
  attachedDevice(volumeId: string): Promise<LoopDevice | undefined>;
  /** Health of the volume and, when attached, of its data path. */
  condition(volumeId: string): Promise<VolumeCondition>;

  /** Free bytes for new volumes on the state dir's file system. */
  availableBytes(): Promise<number>;
  /** Engine numbers of every open volume (metrics). */
  volumeSamples(): VolumeGaugeSample[];
  jobSamples(): JobSample[];
  /** True while the data path and the engine are usable. */
  healthy(): boolean;
  /** Closes every volume (flush + checkpoint) and stops the data path. */
  close(): Promise<void>;
}
