// SPDX-License-Identifier: Apache-2.0
// What data-path worker threads may do without the engine thread, and the contract that keeps it safe.
//
// The engine (one thread: "the engine thread") owns every structure. With `shared: true` it allocates three
// arrays on SharedArrayBuffers and publishes them through `SnapshotVolume.sharedState()`:
//   control  Int32Array  [CTL_GATE, CTL_INFLIGHT, CTL_GENERATION, CTL_FLAGS, ...]
//   settled  Uint32Array one bit per block (bit b in word b >>> 5): 1 = a production write of b needs no
//                        engine work: no snapshot needs b's before-image, b's granule is valid in MBM_P,
//                        no engine write of b is in flight. Set by the engine after it wrote b; cleared for
//                        all blocks at snapshot creation, for discarded granules, and (issue 4) at restore.
//   meta     Uint32Array MBM_P, one bit per granule of 2^granuleShift blocks (1 = valid).
//
// Worker protocol (the functions below implement it; the data-path workers, frontend/data-plane.ts, and the
// engine's tests use them):
// - Direct production write of blocks [b, b + n): Atomics.add(control, CTL_INFLIGHT, 1); then, only if
//   control[CTL_GATE] = 0, control[CTL_GENERATION] equals the generation the worker's arrays came from and
//   every settled bit of the range is 1, pwrite clone.img (whole or partial blocks, no read-modify-write);
//   finally Atomics.sub(control, CTL_INFLIGHT, 1). Otherwise undo the increment and send the write to the
//   engine thread. Increment-before-check (both sequentially consistent) means an exclusive section that saw
//   CTL_INFLIGHT = 0 after setting CTL_GATE = 1 cannot race with a direct write decided on stale bits.
// - Production read of block b: if CTL_FLAGS has FLAG_READS_VIA_ENGINE, ask the engine; else if the meta bit
//   of b's granule is 0, return zeros; else pread clone.img. Reads need no gate: a read concurrent with an
//   unacknowledged write may see either version, as on any block device.
// - Everything else (writes to unsettled blocks, discards, snapshot and RW views, flush) goes to the engine
//   thread. FUSE FSYNC must call the engine's flush(): it fsyncs clone.img, which covers direct writes.
// - When CTL_GENERATION changes (resize replaced the arrays), fetch sharedState() again before any direct
//   write; a stale worker simply fails the generation check and routes to the engine.
// Why it is safe: settled[b] = 1 implies no valid snapshot reads b from the clone (its walk either stops at
// a saved copy or the snapshot treats b as unused and reads zeros), so overwriting clone block b in place is
// exactly what the engine would do.

import { testBit } from './bits.js';

export const CTL_GATE = 0;
export const CTL_INFLIGHT = 1;
export const CTL_GENERATION = 2;
export const CTL_FLAGS = 3;
export const CONTROL_WORDS = 8;
/** Set while production reads must go to the engine (an online restore switched the volume). */
export const FLAG_READS_VIA_ENGINE = 1;

export interface SharedVolumeState {
  readonly control: Int32Array;
  readonly settled: Uint32Array;
  readonly meta: Uint32Array;
  readonly blockSize: number;
  readonly blockCount: number;
  readonly granuleShift: number;
  /** Value of control[CTL_GENERATION] when these arrays were current. */
  readonly generation: number;
}

export type ReadRoute = 'zeros' | 'clone' | 'engine';

/** True when every bit in [first, last] (inclusive) of `words` is set (atomic word loads). */
export function allSet(words: Int32Array | Uint32Array, first: number, last: number): boolean {
  let i = first;
  while (i <= last) {
    const w = i >>> 5;
    const lo = i & 31;
    const hi = Math.min(31, last - (w << 5));
    const mask = hi - lo === 31 ? -1 : ((1 << (hi - lo + 1)) - 1) << lo;
    if ((Atomics.load(words, w) & mask) !== mask) return false;
    i = (w + 1) << 5;
  }
  return true;
}

/**
 * Enters a direct production write of blocks [first, last]: true when the caller may pwrite them to
 * clone.img now, and must call leaveDirectWrite() afterwards; false (nothing held) routes it to the engine.
 */
export function enterDirectWrite(s: SharedVolumeState, first: number, last: number): boolean {
  const { control, settled, blockCount } = s;
  Atomics.add(control, CTL_INFLIGHT, 1);
  const ok =
    Atomics.load(control, CTL_GATE) === 0 &&
    Atomics.load(control, CTL_GENERATION) === s.generation &&
    first >= 0 &&
    first <= last &&
    last < blockCount &&
    allSet(settled, first, last);
  if (!ok) Atomics.sub(control, CTL_INFLIGHT, 1);
  return ok;
}

export function leaveDirectWrite(s: SharedVolumeState): void {
  Atomics.sub(s.control, CTL_INFLIGHT, 1);
}

/** The engine replaced its arrays (resize): fetch sharedState() again before any direct I/O. */
export function staleGeneration(s: SharedVolumeState): boolean {
  return Atomics.load(s.control, CTL_GENERATION) !== s.generation;
}

/** False while the engine routes production reads to itself (online restore) or after it replaced its arrays. */
export function readsDirect(s: SharedVolumeState): boolean {
  return (Atomics.load(s.control, CTL_FLAGS) & FLAG_READS_VIA_ENGINE) === 0 && !staleGeneration(s);
}

/** Where a production read of `block` is served from. */
export function readRoute(s: SharedVolumeState, block: number): ReadRoute {
  if (!readsDirect(s)) return 'engine';
  return testBit(s.meta, Math.floor(block / 2 ** s.granuleShift)) ? 'clone' : 'zeros';
}
