// SPDX-License-Identifier: Apache-2.0
// A volume's lineage on this node: the volume, the volume its content came from (the source volume of the
// snapshot it was restored from, or the volume it was cloned from), that volume's source, and so on. Known
// from the driver records; a link whose snapshot record was deleted ends the chain there.
import type { DriverState } from '../state/driver-state.js';

const MAX_DEPTH = 64;

/** The volume this volume was made from, when the records still say. */
export function parentOf(state: DriverState, volumeId: string): string | undefined {
  const src = state.volume(volumeId)?.contentSource;
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
