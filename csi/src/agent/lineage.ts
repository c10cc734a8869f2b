// SPDX-License-Identifier: Apache-2.0
// A volume's lineage on this node: the volume, the volume its content came from (the source volume of the
// snapshot it was restored from, or the volume it was cloned from), that volume's source, and so on. Known
// from the driver records: the volume record's parentVolumeId (kept when the snapshot or the source volume is
// deleted); for records written before that field existed, a thin clone's base volume, else the content
// source's snapshot record while it exists. A parent whose own record is gone ends the chain (it is listed).
import type { DriverState } from '../state/driver-state.js';

const MAX_DEPTH = 64;

/** The volume this volume was made from, when the records say. */
export function parentOf(state: DriverState, volumeId: string): string | undefined {
  const rec = state.volume(volumeId);
  if (!rec) return undefined;
  if (rec.parentVolumeId !== undefined) return rec.parentVolumeId;
  if (rec.origin.kind === 'rw-clone' && rec.origin.image !== true) return rec.origin.baseVolumeId;
  const src = rec.contentSource;
  if (!src) return undefined;
  return src.kind === 'volume' ? src.volumeId : state.snapshot(src.snapshotId)?.sourceVolumeId;
}

/** `volumeId` first, then its ancestors, nearest first. */
export function lineageOf(state: DriverState, volumeId: string): string[] {
  const out = [volumeId];
  for (let cur = parentOf(state, volumeId); cur !== undefined && out.length < MAX_DEPTH; cur = parentOf(state, cur)) {
    if (out.includes(cur)) break;
    out.push(cur);
  }
  return out;
}
