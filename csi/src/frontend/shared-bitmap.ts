// SPDX-License-Identifier: Apache-2.0
// Bit sets over an Int32Array that may sit on a SharedArrayBuffer, read by data-path workers and written by
// the main thread. Bit i lives in word i >> 5 at position i & 31; on little-endian machines this is the same
// layout as an LSB-first Uint8Array bit set over the same memory, so an engine bit map kept as bytes can be
// viewed here without copying (byte length a multiple of 4).
//
// Writers use Atomics.or / Atomics.and (whole-word read-modify-write, so concurrent writers of neighbouring
// bits do not lose updates); readers use Atomics.load, so a bit set before a release (Atomics.store/notify)
// is seen after the matching acquire.

/** Word arrays the helpers accept; Atomics work on both, and `&` results are compared as int32. */
export type BitWords = Int32Array | Uint32Array;

export function bitmapWords(bits: number): number {
  return Math.ceil(bits / 32);
}

export function createSharedBitmap(bits: number): Int32Array {
  return new Int32Array(new SharedArrayBuffer(Math.max(4, bitmapWords(bits) * 4)));
}

/** True when every bit in [first, last] (inclusive) is set: the engine's, which owns the fast-path protocol. */
export { allSet } from '../engine/shared-state.js';

export function testBit(words: BitWords, i: number): boolean {
  return (Atomics.load(words, i >>> 5) & (1 << (i & 31))) !== 0;
}

/** True when no bit in [first, last] (inclusive) is set. */
export function noneSet(words: BitWords, first: number, last: number): boolean {
  let i = first;
  while (i <= last) {
    const w = i >>> 5;
    const lo = i & 31;
    const hi = Math.min(31, last - (w << 5));
    const mask = hi - lo === 31 ? -1 : ((1 << (hi - lo + 1)) - 1) << lo;
    if ((Atomics.load(words, w) & mask) !== 0) return false;
    i = (w + 1) << 5;
  }
  return true;
}

export function setBit(words: BitWords, i: number): void {
  Atomics.or(words, i >>> 5, 1 << (i & 31));
}

export function clearBit(words: BitWords, i: number): void {
  Atomics.and(words, i >>> 5, ~(1 << (i & 31)));
}

/** Sets (value true) or clears every bit in [first, last] (inclusive). */
export function fillBits(words: BitWords, first: number, last: number, value: boolean): void {
  let i = first;
  while (i <= last) {
    const w = i >>> 5;
    const lo = i & 31;
    const hi = Math.min(31, last - (w << 5));
    const mask = hi - lo === 31 ? -1 : ((1 << (hi - lo + 1)) - 1) << lo;
    if (value) Atomics.or(words, w, mask);
    else Atomics.and(words, w, ~mask);
    i = (w + 1) << 5;
  }
}

/** Clears every bit. Only safe when no writer runs concurrently (callers hold the view's gate). */
export function clearAll(words: BitWords): void {
  for (let w = 0; w < words.length; w++) Atomics.store(words, w, 0);
}
