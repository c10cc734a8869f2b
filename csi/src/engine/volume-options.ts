// SPDX-License-Identifier: Apache-2.0
// Options, result types and argument checks of the SnapshotVolume API (volume.ts).

import type { BlockDevice, MetaStore } from './block-device.js';
import { heapWords, sharedWords, type WordAllocator } from './bits.js';
import { engineError } from './errors.js';
import type { RestoreOrder, RestoreSourceKind, SnapshotMethod, SnapshotState } from './layout.js';

export const BLOCK_SIZE_DEFAULT_BYTES = 4096;
export const MAX_SNAPSHOTS_DEFAULT = 256;
export const CHECKPOINT_JOURNAL_DEFAULT_BYTES = 8 * 1024 * 1024;

export interface VolumeDevices {
  clone: BlockDevice;
  save: BlockDevice;
  meta: MetaStore;
}

export interface VolumeRuntimeOptions {
  /** Allocate the production meta bit map, settled map and control words on SharedArrayBuffers. */
  shared?: boolean;
  /** Overrides `shared`. */
  allocator?: WordAllocator;
  /** Milliseconds since the epoch; default Date.now. */
  clock?: () => number;
  /** Runs `fn` after pending I/O callbacks (group-commit window); default setImmediate. */
  schedule?: (fn: () => void) => void;
  /** EC-6 limit; default 256. */
  maxSnapshots?: number;
  /** Journal size that triggers a checkpoint; default 8 MiB. */
  checkpointJournalBytes?: number;
}

export interface CreateVolumeOptions extends VolumeRuntimeOptions {
  sizeBytes: number;
  /** Power of two, 512 B .. 1 MiB; default 4096. */
  blockSize?: number;
  /** Blocks per meta bit map granule (power of two); default 1. */
  granuleBlocks?: number;
  /** Save pool quota in bytes; null or absent = grow until the device is full. */
  saveQuotaBytes?: number | null;
}

export type ViewRef = { kind: 'live' } | { kind: 'snapshot'; id: number } | { kind: 'rw'; id: number };

export interface SnapshotInfo {
  id: number;
  method: SnapshotMethod;
  state: SnapshotState;
  tag: string;
  createdAt: number;
  sizeBytes: number;
  /** Before-images this entry holds in the save pool. */
  savedBlocks: number;
  /** In-memory pins (readers, copy jobs). */
  pins: number;
  /** Internal snapshot (restore point, base of a clone of the live volume, deferred deletion). */
  hidden: boolean;
  /** Deleted as soon as nothing depends on it (EC-8 deferred deletion). */
  autoDelete: boolean;
  /** Restore point of the running in-place restore (not readable until it completes). */
  restoring: boolean;
  /** RW snapshots based on it. */
  rwChildren: number[];
}

export interface RwInfo {
  id: number;
  /** The RO snapshot it is based on (changes on refresh). */
  baseId: number;
  /** Identity kept across refreshes. */
  tag: string;
  createdAt: number;
  sizeBytes: number;
  /** Blocks of new data it holds in the save pool. */
  savedBlocks: number;
  pins: number;
  /** False when its base lost data (EC-5): reads and writes fail, it can only be deleted or refreshed. */
  valid: boolean;
}

export interface CreateRwOptions {
  /** Identity of the RW snapshot (e.g. a CSI volume id); kept across refreshes. */
  tag?: string;
  /** Size; at least the base's (default: the base's size). */
  sizeBytes?: number;
}

export interface CloneLiveOptions extends CreateRwOptions {
  /** Method of the hidden base snapshot; default meta-bitmap. */
  method?: SnapshotMethod;
}

/** OP-10 target: an existing RO snapshot, or (default) a new snapshot of the live volume. */
export interface RefreshOptions {
  snapshotId?: number;
  /** Method of the new base snapshot; default meta-bitmap. */
  method?: SnapshotMethod;
}

export interface RestoreOptions {
  source: { kind: RestoreSourceKind; id: number };
  /** OP-13 copy order (cl.14 or cl.15); default new-then-old (each block is written once). */
  order?: RestoreOrder;
  /** Keep the restore point (the volume's content at the restore instant = the source) as a snapshot. */
  keepRestorePoint?: boolean;
  /** Tag of the kept restore point. */
  tag?: string;
}

export interface RestoreStatus {
  source: { kind: RestoreSourceKind; id: number };
  order: RestoreOrder;
  /** Id of the restore point snapshot (Rp); a normal snapshot after completion when kept. */
  restorePointId: number;
  keepRestorePoint: boolean;
  tag: string;
  startedAt: number;
  totalBlocks: number;
  doneBlocks: number;
  totalBytes: number;
  doneBytes: number;
  /** The pass of the copy order the copier is in. */
  pass: 'first' | 'second';
}

export interface DeleteSnapshotOptions {
  /** When something depends on the snapshot, defer the deletion until the last dependant goes (EC-8). */
  whenUnpinned?: boolean;
}

/** Byte extent, ascending and non-overlapping in every result. */
export interface Extent {
  offset: number;
  length: number;
}

export interface ExtentOptions {
  /** Skip extents ending at or before this byte (rounded down to a block). */
  startingOffset?: number;
  maxResults?: number;
}

export interface VolumeStats {
  blockSize: number;
  blockCount: number;
  sizeBytes: number;
  granuleBlocks: number;
  snapshotCount: number;
  invalidSnapshotCount: number;
  savePoolUsedBytes: number;
  savePoolSizeBytes: number;
  saveQuotaBytes: number | null;
  cowCopiesTotal: number;
  snapshotsInvalidatedTotal: number;
  /** Unpinned snapshots sacrificed (invalidated, slots released) to make room, oldest first (ADR 0012). */
  snapshotsSacrificedTotal: number;
  /** Production writes refused with ENOSPC because only snapshots with dependants needed the space. */
  writesRefusedTotal: number;
  /** The last before-image found no space and its write was refused (ENOSPC); cleared by the next save. */
  outOfSpace: boolean;
  /** Save-pool bytes holding RW snapshots' own data (not bounded by the quota). */
  savePoolRwBytes: number;
  journalBytes: number;
  checkpointsTotal: number;
  rwSnapshotCount: number;
  /** Blocks placed by in-place restores since the volume was opened. */
  restoredBlocksTotal: number;
  /** Resident metadata of the volume itself (meta bit map, settled map, allocator). */
  volumeMetadataBytes: number;
  /** Resident metadata of all snapshots (bit/block maps, frozen meta pages counted once). */
  snapshotMetadataBytes: number;
}

export function isPow2(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

export function checkSize(sizeBytes: number, blockSize: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % blockSize !== 0) {
    throw engineError('ENGINE_BAD_ARGUMENT', `size ${sizeBytes} is not a positive multiple of ${blockSize} bytes`, {
      sizeBytes,
      blockSize,
    });
  }
}

export function allocatorOf(options: VolumeRuntimeOptions): WordAllocator {
  return options.allocator ?? (options.shared === true ? sharedWords : heapWords);
}
