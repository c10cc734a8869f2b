// SPDX-License-Identifier: Apache-2.0
// Makes a live volume's content equal to a snapshot's (possibly of another volume of the same node), through
// the engine's write path:
//   copy set  = blocks the source snapshot may hold data in       -> read source, read live, write if different
//   zero set  = blocks the live volume may hold data in, minus the copy set (and everything past the
//               snapshot's size)                                     -> discard (reads as zeros afterwards)
// Idempotent: running it again after an interruption (crash, restart, abort) converges on the same content,
// and blocks already equal cost a read and no write (no copy-on-write of unchanged blocks, so the save pool
// does not grow for them). Progress counts blocks of both sets processed, in order.
import type { ContentPort } from './content-port.js';
import { allExtents } from './content-port.js';
import { type BlockRange, chunks, clip, countBlocks, subtract, toBlockRanges } from './extents.js';

/** Copy unit (the FUSE/loop maximum request size). */
export const COPY_CHUNK_BYTES = 1024 * 1024;
/** Discard unit: bounds the time one engine discard holds the volume. */
const DISCARD_CHUNK_BYTES = 64 * 1024 * 1024;

export interface CopySource {
  readonly volumeId: string;
  readonly engineSnapshotId: number;
  readonly sizeBytes: number;
}

export interface CopyPlan {
  readonly blockSize: number;
  readonly copy: BlockRange[];
  readonly zero: BlockRange[];
  readonly totalBlocks: number;
}

export interface CopyResult {
  readonly blocksWritten: number;
  readonly blocksEqual: number;
  readonly blocksZeroed: number;
  readonly bytesWritten: number;
}

export function planCopy(port: ContentPort, src: CopySource, dstVolumeId: string): CopyPlan {
  const blockSize = port.blockSize(dstVolumeId);
  const limit = Math.ceil(port.volumeSizeBytes(dstVolumeId) / blockSize);
  const srcBlocks = Math.ceil(src.sizeBytes / blockSize);
  const copy = clip(
    toBlockRanges(
      allExtents((q) => port.allocatedExtents(src.volumeId, src.engineSnapshotId, q)),
      blockSize,
    ),
    Math.min(limit, srcBlocks),
  );
  const live = toBlockRanges(
    allExtents((q) => port.liveAllocatedExtents(dstVolumeId, q)),
    blockSize,
  );
  const zero = subtract(live, copy);
  return { blockSize, copy, zero, totalBlocks: countBlocks(copy) + countBlocks(zero) };
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(a, b) === 0;
}

/**
 * Runs a plan. `onProgress` gets the blocks processed so far; `signal` stops it between chunks (the volume is
 * then partly converted: run the plan again to finish).
 */
export async function runCopy(
  port: ContentPort,
  src: CopySource,
  dstVolumeId: string,
  plan: CopyPlan,
  opts: { onProgress?: (blocksDone: number) => void; signal?: AbortSignal } = {},
): Promise<CopyResult> {
  const bs = plan.blockSize;
  let done = 0;
  let written = 0;
  let same = 0;
  let zeroed = 0;
  const stopIfAborted = (): void => {
    if (opts.signal?.aborted) throw opts.signal.reason ?? new Error('copy aborted');
  };
  const maxCopy = Math.max(1, Math.floor(COPY_CHUNK_BYTES / bs));
  for (const c of chunks(plan.copy, maxCopy)) {
    stopIfAborted();
    const len = (c.end - c.start) * bs;
    const offset = c.start * bs;
    const want = new Uint8Array(len);
    const have = new Uint8Array(len);
    await port.readSnapshot(src.volumeId, src.engineSnapshotId, offset, want);
    await port.readLive(dstVolumeId, offset, have);
    if (equal(want, have)) same += c.end - c.start;
    else {
      await port.writeLive(dstVolumeId, offset, want);
      written += c.end - c.start;
    }
    done += c.end - c.start;
    opts.onProgress?.(done);
  }
  const maxZero = Math.max(1, Math.floor(DISCARD_CHUNK_BYTES / bs));
  for (const c of chunks(plan.zero, maxZero)) {
    stopIfAborted();
    await port.discardLive(dstVolumeId, c.start * bs, (c.end - c.start) * bs);
    zeroed += c.end - c.start;
    done += c.end - c.start;
    opts.onProgress?.(done);
  }
  await port.flushLive(dstVolumeId);
  return { blocksWritten: written, blocksEqual: same, blocksZeroed: zeroed, bytesWritten: written * bs };
}
