// SPDX-License-Identifier: Apache-2.0
// The port between the CSI driver layer and the node's storage: the snapshot engine (volumes, snapshots,
// RW clones, clone-method images, background copies, in-place restore, changed-block tracking) together with
// the data path (views on the FUSE mount, loop devices, consistent cuts). engine-backend.ts implements it on
// csi/src/engine + csi/src/store + csi/src/jobs + csi/src/frontend; memory-backend.testing.ts in memory.
//
// Ids: `volumeId` is our CSI volume id. It is backed by an engine volume of its own (same id), by an RW
// snapshot tagged with it (a thin clone of a snapshot, a volume or a clone-method image), or, while it is
// hydrated, by both (engine-volumes.ts). `engineSnapshotId` is the id of a snapshot in a volume's queue;
// `imageId` is the CSI id of a clone-method snapshot, whose image is an engine volume of its own.
// Missing-item semantics are stated per method. Operations on one volume are serialised by the caller
// (driver/locks.ts).
import type { LoopDevice } from '../mount/loop-device.js';
import type { JobSample, VolumeGaugeSample } from '../metrics.js';
import type { BackingKind, CloneSource, JobDoneListener } from './engine-volumes.js';

export type { BackingKind, CloneSource, JobDoneListener } from './engine-volumes.js';

/** Engine tag of the hidden snapshot an interim full-copy clone copied from (still cleaned up at start). */
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
  /** Internal (clone bases, copy sources, deferred deletions). */
  readonly hidden: boolean;
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
  /** Thin RW clones of a snapshot or volume (OP-7). */
  readonly rwClones: boolean;
  /** `clone`-method snapshots: independent images filled in the background. */
  readonly cloneImages: boolean;
  /** Growing a volume while its view is exposed (the data path resizes the view). */
  readonly onlineResize: boolean;
}

export interface VolumeCondition {
  readonly abnormal: boolean;
  readonly message: string;
}

export interface Progress {
  readonly doneBytes: number;
  readonly totalBytes: number;
}

export type ImageState = Progress & { readonly state: 'absent' | 'copying' | 'ready' };

export interface VolumeBackend {
  readonly features: BackendFeatures;
  /**
   * True when this process took over the live data path of a predecessor (csi/src/keeper/): loop devices,
   * mounts and the stage/publish records of the previous process still hold.
   */
  readonly adopted: boolean;
  /** Block size of new volumes; capacities are multiples of it. */
  readonly blockSizeBytes: number;

  /** Creates and opens an empty volume. Fails with STORE_VOLUME_EXISTS when the id is taken. */
  createVolume(volumeId: string, sizeBytes: number): Promise<void>;
  /** Makes `volumeId` a thin RW clone (instant) of a snapshot of one of this node's volumes, or of an image. */
  createRwClone(volumeId: string, source: CloneSource, sizeBytes: number): Promise<void>;
  /**
   * Makes `volumeId` a thin clone of live volume `sourceVolumeId`: a hidden snapshot (frozen when mounted at
   * `mountpoint`) and an RW snapshot on it, in one commit. Returns the hidden snapshot's engine id.
   */
  cloneVolume(
    volumeId: string,
    sourceVolumeId: string,
    sizeBytes: number,
    opts: { mountpoint?: string },
  ): Promise<number>;
  /** Copies the current content of volume `src` (any backing) into the new, empty volume `dst`. */
  copyVolumeInto(srcVolumeId: string, dstVolumeId: string, signal?: AbortSignal): Promise<{ copiedBytes: number }>;
  /** What backs `volumeId`, or undefined when nothing does. */
  backing(volumeId: string): BackingKind | undefined;
  /** Bytes of the live volume that may hold data: written and not discarded since (granule resolution). */
  liveUsedBytes(volumeId: string): number;
  /** CSI volumes that are thin clones of volume `volumeId`. */
  rwClonesOf(volumeId: string): string[];
  /**
   * Deletes the storage of a volume. A volume thin clones still read is retired instead: its engine volume
   * stays, hidden, and goes with the last of them. Not an error when nothing backs the id.
   */
  deleteVolume(volumeId: string): Promise<'deleted' | 'retired' | 'absent'>;
  hasVolume(volumeId: string): boolean;
  /** Current size; NOT_FOUND when the volume does not exist. */
  volumeSizeBytes(volumeId: string): number;
  /**
   * Grows a volume or a thin clone (never shrinks: ENGINE_SHRINK_UNSUPPORTED); while it is attached, its view
   * and loop device grow with it (features.onlineResize). CSI_ERR_IN_USE while a hydration or an in-place
   * restore copies a fixed range of it.
   */
  resizeVolume(volumeId: string, sizeBytes: number): Promise<void>;

  /**
   * Cuts a snapshot of a volume with its own engine volume (thin clones: CSI_ERR_THIN_CLONE). With
   * `mountpoint` (a file system on the volume's loop device is mounted there) the file system is frozen
   * around the cut and always thawed.
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
  /**
   * Deletes a snapshot (OP-11). While thin clones or a restore still need it the deletion is deferred: the
   * snapshot is hidden now and goes with its last dependant. Not an error when it does not exist.
   */
  deleteSnapshot(volumeId: string, engineSnapshotId: number): Promise<void>;

  /** A clone-method snapshot: hidden cut (frozen when mounted), image volume, background copy. */
  createImage(
    snapshotId: string,
    volumeId: string,
    opts: { mountpoint?: string },
  ): Promise<{ engineSnapshotId: number; sizeBytes: number; createdAt: number }>;
  imageState(snapshotId: string): ImageState;
  /** Deletes an image (cancels its copy); retired while thin clones read it. */
  deleteImage(snapshotId: string): Promise<'deleted' | 'retired' | 'absent'>;
  /** Clone-method snapshots of `volumeId` whose copy still runs. */
  imagesCopyingFrom(volumeId: string): string[];

  /** Starts turning thin clone `volumeId` into a volume of its own in the background (idempotent). */
  startHydration(volumeId: string): Promise<void>;
  hydrationState(volumeId: string): Progress | undefined;

  /** Starts an online in-place restore of `volumeId` (engine OP-13); the copy runs in the background. */
  startRestore(
    volumeId: string,
    source: { engineSnapshotId: number } | { rwCloneVolumeId: string },
    order?: 'old-then-new' | 'new-then-old',
  ): Promise<void>;
  /** Progress of the running in-place restore of `volumeId`, undefined when none runs. */
  restoreState(volumeId: string): Progress | undefined;
  /**
   * OP-10 for thin clone `volumeId`: onto a snapshot of its base volume, or onto a new hidden snapshot of it
   * (frozen when the base is mounted at `mountpoint`). The volume keeps its id; its content is replaced.
   */
  refreshVolume(
    volumeId: string,
    target: { engineSnapshotId: number } | 'new',
    opts: { mountpoint?: string },
  ): Promise<{ baseVolumeId: string; engineSnapshotId: number }>;
  /** Called when a hydration, an image copy or a restore finished durably. */
  onJobDone(listener: JobDoneListener): void;

  /** OP-18: extents of the snapshot that may hold data (everything else reads as zeros). */
  allocatedExtents(volumeId: string, engineSnapshotId: number, q: ExtentQuery): ByteExtent[];
  /** OP-14/16: extents of `target` that may differ from `base` (base older than target, same volume). */
  changedExtents(volumeId: string, base: number, target: number, q: ExtentQuery): ByteExtent[];
  /** Reads bytes of a snapshot (OP-6). */
  readSnapshot(volumeId: string, engineSnapshotId: number, offset: number, into: Uint8Array): Promise<void>;

  /** Exposes the volume's view on the FUSE mount and attaches a loop device to it (idempotent). */
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
  /** Background jobs (restore, clone, hydrate) and their progress. */
  jobSamples(): JobSample[];
  /** True while the data path and the engine are usable. */
  healthy(): boolean;
  /** Stops the background jobs, closes every volume (flush + checkpoint) and stops the data path. */
  close(): Promise<void>;
}
