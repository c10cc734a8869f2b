// SPDX-License-Identifier: Apache-2.0
// Bit helpers over Uint32Array words (bit i lives in word i >>> 5 at position i & 31) and the injectable
// allocator through which every bit map of the engine gets its words. With `sharedWords` the words sit on a
// SharedArrayBuffer, so worker threads can read the same maps (see shared-state.ts).

export interface WordAllocator {
  /** True when `words()` returns views on a SharedArrayBuffer. */
  readonly shared: boolean;
  /** A zero-filled array of `count` 32-bit words. */
  words(count: number): Uint32Array;
}

export const heapWords: WordAllocator = {
  shared: false,
  words: (count) => new Uint32Array(count),
};

export const sharedWords: WordAllocator = {
  shared: true,
  words: (count) => new Uint32Array(new SharedArrayBuffer(Math.max(1, count) * 4)),
};

export function popcount32(x: number): number {
  let v = x - ((x >>> 1) & 0x55555555);
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return (((v + (v >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

/** Index (0..31) of the lowest set bit of a non-zero word. */
export function lowestBit(x: number): number {
  return 31 - Math.clz32(x & -x);
}

/** Mask of the bits below position `bit` (0..32). */
export function lowMask(bit: number): number {
  return bit <= 0 ? 0 : bit >= 32 ? 0xffffffff : 0xffffffff >>> (32 - bit);
}

export function testBit(words: Uint32Array, i: number): boolean {
  return ((words[i >>> 5]! >>> (i & 31)) & 1) === 1;
}

export function setBit(words: Uint32Array, i: number): void {
  words[i >>> 5]! |= 1 << (i & 31);
}

export function clearBit(words: Uint32Array, i: number): void {
  words[i >>> 5]! &= ~(1 << (i & 31));
}

/** Sets bits [from, to). */
export function setRange(words: Uint32Array, from: number, to: number): void {
  fillRange(words, from, to, true);
}

/** Clears bits [from, to). */
export function clearRange(words: Uint32Array, from: number, to: number): void {
  fillRange(words, from, to, false);
}

function fillRange(words: Uint32Array, from: number, to: number, value: boolean): void {
  if (to <= from) return;
  const w0 = from >>> 5;
  const w1 = (to - 1) >>> 5;
  for (let w = w0; w <= w1; w++) {
    const lo = w === w0 ? from & 31 : 0;
    const hi = w === w1 ? ((to - 1) & 31) + 1 : 32;
    const mask = (lowMask(hi) & ~lowMask(lo)) >>> 0;
    if (value) words[w]! |= mask;
    else words[w]! &= ~mask;
  }
}

/** First set bit in [from, limit), or -1. */
export function nextSetBit(words: Uint32Array, from: number, limit: number): number {
  if (from >= limit) return -1;
  let w = from >>> 5;
  let word = words[w]! & ~lowMask(from & 31);
  const lastWord = (limit - 1) >>> 5;
  for (;;) {
    if (word !== 0) {
      const i = w * 32 + lowestBit(word);
      return i < limit ? i : -1;
    }
    if (++w > lastWord) return -1;
    word = words[w]!;
  }
}

/** First clear bit in [from, limit), or -1. */
export function nextClearBit(words: Uint32Array, from: number, limit: number): number {
  if (from >= limit) return -1;
  let w = from >>> 5;
  let word = ~words[w]! & ~lowMask(from & 31);
  const lastWord = (limit - 1) >>> 5;
  for (;;) {
    if (word !== 0) {
      const i = w * 32 + lowestBit(word);
      return i < limit ? i : -1;
    }
    if (++w > lastWord) return -1;
    word = ~words[w]!;
  }
}

export function allZero(words: Uint32Array): boolean {
  for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false;
  return true;
}

export function allOnes(words: Uint32Array): boolean {
  for (let i = 0; i < words.length; i++) if (words[i] !== 0xffffffff) return false;
  return true;
}
