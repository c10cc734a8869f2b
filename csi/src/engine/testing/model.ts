// SPDX-License-Identifier: Apache-2.0
// The array oracle of spec §5: what a perfect block device with meta bit maps returns. Production content
// per block (zeros wherever the granule is invalid), granule validity, and a frozen copy of both at every
// snapshot. Used by the property, golden and crash tests; it knows nothing about the engine's structures.

import type { SnapshotMethod } from '../layout.js';

export interface ModelSnapshot {
  id: number;
  method: SnapshotMethod;
  blockCount: number;
  content: Uint8Array[];
  validGranules: boolean[];
  /** Event counter at the cut. */
  cutAt: number;
  /** Blocks written while this entry (or an entry merged into it) was the tail (INV-5). */
  periodWrites: Set<number>;
  invalid: boolean;
}

export class VolumeModel {
  blocks: Uint8Array[] = [];
  valid: boolean[] = [];
  readonly snapshots: ModelSnapshot[] = [];
  /** Event counter; bumped by every write, discard and cut. */
  clock = 0;
  discards: number[] = [];

  constructor(
    readonly blockSize: number,
    blockCount: number,
    readonly granuleBlocks: number,
  ) {
    this.grow(blockCount);
  }

  get blockCount(): number {
    return this.blocks.length;
  }

  granuleOf(b: number): number {
    return Math.floor(b / this.granuleBlocks);
  }

  grow(blockCount: number): void {
    while (this.blocks.length < blockCount) {
      this.blocks.push(new Uint8Array(this.blockSize));
    }
    while (this.valid.length < Math.ceil(blockCount / this.granuleBlocks)) this.valid.push(false);
  }

  /** Blocks a write of [offset, offset + length) touches, including zero-filled blocks of invalid granules. */
  touched(offset: number, length: number): number[] {
    const bs = this.blockSize;
    const out = new Set<number>();
    for (let b = Math.floor(offset / bs); b * bs < offset + length; b++) {
      const g = this.granuleOf(b);
      if (!this.valid[g]) {
        for (let x = g * this.granuleBlocks; x < Math.min((g + 1) * this.granuleBlocks, this.blockCount); x++) {
          out.add(x);
        }
      } else out.add(b);
    }
    return [...out].sort((a, b) => a - b);
  }

  write(offset: number, data: Uint8Array): void {
    this.clock++;
    const bs = this.blockSize;
    for (const b of this.touched(offset, data.length)) {
      this.markWritten(b);
      const g = this.granuleOf(b);
      if (!this.valid[g]) this.blocks[b]!.fill(0);
    }
    for (let b = Math.floor(offset / bs); b * bs < offset + data.length; b++) {
      this.valid[this.granuleOf(b)] = true;
      const start = b * bs;
      const from = Math.max(start, offset);
      const to = Math.min(start + bs, offset + data.length);
      this.blocks[b]!.set(data.subarray(from - offset, to - offset), from - start);
    }
  }

  discard(offset: number, length: number): void {
    this.clock++;
    this.discards.push(this.clock);
    const bs = this.blockSize;
    const g = this.granuleBlocks;
    const end = offset + length;
    for (let gi = 0; gi < this.valid.length; gi++) {
      if (!this.valid[gi]) continue;
      const first = gi * g;
      const last = Math.min((gi + 1) * g, this.blockCount);
      const whole = first * bs >= offset && last * bs <= end;
      if (whole) {
        this.valid[gi] = false;
        for (let b = first; b < last; b++) this.blocks[b]!.fill(0);
        continue;
      }
      for (let b = first; b < last; b++) {
        const lo = Math.max(offset, b * bs);
        const hi = Math.min(end, (b + 1) * bs);
        if (hi <= lo) continue;
        this.markWritten(b);
        this.blocks[b]!.fill(0, lo - b * bs, hi - b * bs);
      }
    }
  }

  private markWritten(b: number): void {
    const tail = this.snapshots[this.snapshots.length - 1];
    tail?.periodWrites.add(b);
  }

  snapshot(id: number, method: SnapshotMethod): void {
    this.clock++;
    this.snapshots.push({
      id,
      method,
      blockCount: this.blockCount,
      content: this.blocks.map((b) => b.slice()),
      validGranules: this.valid.slice(),
      cutAt: this.clock,
      periodWrites: new Set(),
      invalid: false,
    });
  }

  delete(id: number): void {
    const pos = this.snapshots.findIndex((s) => s.id === id);
    if (pos < 0) throw new Error(`model has no snapshot ${id}`);
    const s = this.snapshots[pos]!;
    const older = this.snapshots[pos - 1];
    if (older !== undefined) for (const b of s.periodWrites) older.periodWrites.add(b);
    this.snapshots.splice(pos, 1);
  }

  find(id: number): ModelSnapshot {
    const s = this.snapshots.find((x) => x.id === id);
    if (s === undefined) throw new Error(`model has no snapshot ${id}`);
    return s;
  }

  validIn(view: { validGranules: boolean[]; blockCount: number } | 'live', b: number): boolean {
    if (view === 'live') return b < this.blockCount && this.valid[this.granuleOf(b)] === true;
    return b < view.blockCount && view.validGranules[this.granuleOf(b)] === true;
  }

  /** Whether a save-volume/meta snapshot would want b's before-image (INV-6 predicate). */
  anySnapshotValidFor(b: number): boolean {
    return this.snapshots.some(
      (s) => !s.invalid && b < s.blockCount && (s.method === 'save-volume' || s.validGranules[this.granuleOf(b)]),
    );
  }

  contentOf(view: ModelSnapshot | 'live'): Uint8Array {
    const blocks = view === 'live' ? this.blocks : view.content;
    const out = new Uint8Array(blocks.length * this.blockSize);
    blocks.forEach((b, i) => out.set(b, i * this.blockSize));
    return out;
  }
}

/** Deterministic pseudo-random bytes (xorshift32) for write payloads. */
export function pattern(seed: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed | 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** Expands byte extents to a sorted block list, checking they ascend and do not overlap. */
export function extentBlocks(extents: readonly { offset: number; length: number }[], blockSize: number): number[] {
  const out: number[] = [];
  let prevEnd = -1;
  for (const e of extents) {
    if (e.offset % blockSize !== 0 || e.length % blockSize !== 0 || e.length <= 0) {
      throw new Error(`extent ${e.offset}+${e.length} is not block aligned`);
    }
    if (e.offset <= prevEnd) throw new Error(`extents not strictly ascending at ${e.offset}`);
    prevEnd = e.offset + e.length;
    for (let b = e.offset / blockSize; b < (e.offset + e.length) / blockSize; b++) out.push(b);
  }
  return out;
}
