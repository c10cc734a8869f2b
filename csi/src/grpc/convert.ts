// SPDX-License-Identifier: Apache-2.0
// Driver records -> csi.v1 response messages.
import type { ContentSource, SnapshotRecord, VolumeRecord } from '../state/records.js';
import { type CsiSnapshot, type CsiVolume, timestamp, type Topology, type VolumeContentSource } from './csi-types.js';

export function toContentSource(src: ContentSource | null): VolumeContentSource | null {
  if (src === null) return null;
  return src.kind === 'snapshot'
    ? { snapshot: { snapshot_id: src.snapshotId } }
    : { volume: { volume_id: src.volumeId } };
}

export function toCsiVolume(rec: VolumeRecord, topology: Topology): CsiVolume {
  return {
    capacity_bytes: String(rec.capacityBytes),
    volume_id: rec.volumeId,
    volume_context: {},
    content_source: toContentSource(rec.contentSource),
    accessible_topology: [topology],
  };
}

export function toCsiSnapshot(rec: SnapshotRecord): CsiSnapshot {
  return {
    size_bytes: String(rec.sizeBytes),
    snapshot_id: rec.snapshotId,
    source_volume_id: rec.sourceVolumeId,
    creation_time: timestamp(rec.createdAt),
    ready_to_use: rec.readyToUse,
    group_snapshot_id: '',
  };
}
