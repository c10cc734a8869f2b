// SPDX-License-Identifier: Apache-2.0
// What the node agent needs of the storage backend to change a volume's content in place. EngineBackend
// implements it (additive driver-level methods over the engine's public volume API); unit tests use an
// in-memory implementation. Every write and discard goes through the engine's copy-on-write path, so the
// volume's other snapshots (and the restore point) keep their content.
import type { ByteExtent, ExtentQuery } from '../driver/backend.js';

export interface ContentPort {
  blockSize(volumeId: string): number;
  volumeSizeBytes(volumeId: string): number;
  /** Extents of the live volume that may hold data (everything else reads as zeros). */
  liveAllocatedExtents(volumeId: string, q: ExtentQuery): ByteExtent[];
  /** Extents of a snapshot that may hold data. */
  allocatedExtents(volumeId: string, engineSnapshotId: number, q: ExtentQuery): ByteExtent[];
  readSnapshot(volumeId: string, engineSnapshotId: number, offset: number, into: Uint8Array): Promise<void>;
  readLive(volumeId: string, offset: number, into: Uint8Array): Promise<void>;
  writeLive(volumeId: string, offset: number, data: Uint8Array): Promise<void>;
  /** The range reads as zeros afterwards. */
  discardLive(volumeId: string, offset: number, length: number): Promise<void>;
  /** Makes every acknowledged write and discard durable. */
  flushLive(volumeId: string): Promise<void>;
}

/** Every extent of a volume or snapshot, following the query's pagination. */
export function allExtents(page: (q: ExtentQuery) => ByteExtent[]): ByteExtent[] {
  const out: ByteExtent[] = [];
  let offset = 0;
  for (;;) {
    const batch = page({ startingOffset: offset, maxResults: 4096 });
    if (batch.length === 0) return out;
    for (const e of batch) {
      const start = Math.max(e.offset, offset);
      if (e.offset + e.length > start) out.push({ offset: start, length: e.offset + e.length - start });
    }
    const last = batch[batch.length - 1] as ByteExtent;
    offset = last.offset + last.length;
  }
}
