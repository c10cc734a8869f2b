// SPDX-License-Identifier: Apache-2.0
// Full copy of a volume's current content into a new, empty engine volume: the allocated extents (OP-18)
// read through whatever backs the source, all-zero chunks skipped (the new volume reads zeros there).
// Used for a clone of a thin clone (which has no snapshot queue of its own to cut a thin clone from); the
// caller holds the source's lock and refuses a staged source, so nothing writes it during the copy.
import type { SnapshotVolume } from '../engine/volume.js';
import { CsiError } from '../errors.js';
import type { VolumeContent } from './engine-volumes.js';

const CHUNK_BYTES = 1024 * 1024;

export async function copyContent(
  src: VolumeContent,
  dst: SnapshotVolume,
  signal?: AbortSignal,
): Promise<{ copiedBytes: number }> {
  let copied = 0;
  let offset = 0;
  for (;;) {
    const batch = src.allocatedExtents(offset, 256);
    if (batch.length === 0) break;
    for (const e of batch) {
      for (let pos = Math.max(e.offset, offset); pos < e.offset + e.length; pos += CHUNK_BYTES) {
        if (signal?.aborted) throw new CsiError('CSI_ERR_BUSY', 'copy cancelled by the client');
        const len = Math.min(CHUNK_BYTES, e.offset + e.length - pos);
        const buf = new Uint8Array(len);
        await src.read(pos, buf);
        if (!isZero(buf)) await dst.write(pos, buf);
        copied += len;
      }
      offset = e.offset + e.length;
    }
  }
  await dst.flush();
  return { copiedBytes: copied };
}

function isZero(buf: Uint8Array): boolean {
  for (let i = 0; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}
