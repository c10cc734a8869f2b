// SPDX-License-Identifier: Apache-2.0
// Adapters from the engine's SnapshotVolume to the data path's view ports (datapath.ts).
import type { SnapshotVolume } from '../engine/volume.js';
import type { LiveVolumePort, RwViewPort, SnapshotViewPort } from './datapath.js';

/** The live (production) view of `volume`; `clonePath` is the file behind its clone BlockDevice. */
export function livePort(volume: SnapshotVolume, clonePath: string): LiveVolumePort {
  return {
    get sizeBytes() {
      return volume.sizeBytes;
    },
    blockSize: volume.blockSize,
    clonePath,
    fastPath: () => volume.sharedState(),
    read: (offset, into) => volume.readInto(offset, into),
    write: (offset, data) => volume.write(offset, data),
    discard: (offset, length) => volume.discard(offset, length),
    flush: () => volume.flush(),
  };
}

/** The read-only view of snapshot `snapshotId` of `volume`. */
export function snapshotPort(volume: SnapshotVolume, snapshotId: number): SnapshotViewPort {
  const info = volume.getSnapshot(snapshotId);
  return {
    sizeBytes: info.sizeBytes,
    blockSize: volume.blockSize,
    read: (offset, into) => volume.readSnapshotInto(snapshotId, offset, into),
  };
}

/**
 * The read-write view of RW snapshot `rwId` of `volume` (OP-8/OP-9: its writes never reach the clone or
 * another view). FUSE FSYNC calls flush, the engine's durability barrier for every view of the volume.
 * `sizeBytes` follows the RW snapshot (it grows with resizeRw).
 */
export function rwPort(volume: SnapshotVolume, rwId: number): RwViewPort {
  return {
    get sizeBytes() {
      return volume.getRw(rwId).sizeBytes;
    },
    blockSize: volume.blockSize,
    read: (offset, into) => volume.readRwInto(rwId, offset, into),
    write: (offset, data) => volume.writeRw(rwId, offset, data),
    discard: (offset, length) => volume.discardRw(rwId, offset, length),
    flush: () => volume.flush(),
  };
}
