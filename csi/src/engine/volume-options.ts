// SPDX-License-Identifier: Apache-2.0
// Options, result types and argument checks of the SnapshotVolume API (volume.ts).

import type { BlockDevice, MetaStore } from './block-device.js';
import { heapWords, sharedWords, type WordAllocator } from './bits.js';
import { engineError } from './errors.js';
import type { SnapshotMethod, SnapshotState } from './layout.js';

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

export type ViewRef = { kind: 'live' } | { kind: 'snapshot'; id: number };

export interface SnapshotInfo {
  id: number;
  method: SnapshotMethod;
  state: SnapshotState;
  tag: string;
  createdAt: number;
  sizeBytes: number;
  /** Before-images this entry holds in the save pool. */
  savedBlocks: number;
  pins: number;
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
  journalBytes: number;
  checkpointsTotal: number;
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
