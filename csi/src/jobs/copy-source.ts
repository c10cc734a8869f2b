// SPDX-License-Identifier: Apache-2.0
// CopySource adapters over an engine volume: an RO snapshot (a clone-method image's internal cut) or an RW
// snapshot (a thin clone being hydrated). Each pins its view until release(), so it cannot be deleted (or
// refreshed) while a copy reads it.
import type { SnapshotVolume } from '../engine/volume.js';
import type { CopySource } from './extent-copy.js';

export function snapshotSource(volume: SnapshotVolume, snapshotId: number): CopySource {
  const info = volume.getSnapshot(snapshotId);
  const release = volume.pinSnapshot(snapshotId);
  return {
    blockSize: volume.blockSize,
    sizeBytes: info.sizeBytes,
    allocatedExtents: (startingOffset, maxResults) =>
      volume.allocatedExtents(snapshotId, { startingOffset, maxResults }),
    read: (offset, into) => volume.readSnapshotInto(snapshotId, offset, into),
    release,
  };
}

export function rwSource(volume: SnapshotVolume, rwId: number): CopySource {
  const info = volume.getRw(rwId);
  const release = volume.pinRw(rwId);
  return {
    blockSize: volume.blockSize,
    sizeBytes: info.sizeBytes,
    allocatedExtents: (startingOffset, maxResults) => volume.allocatedRwExtents(rwId, { startingOffset, maxResults }),
    read: (offset, into) => volume.readRwInto(rwId, offset, into),
    release,
  };
}
