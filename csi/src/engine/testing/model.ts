// SPDX-License-Identifier: Apache-2.0
// The array oracle of spec §5: what a perfect block device with meta bit maps returns. Production content
// per block (zeros wherever the granule is invalid), granule validity, and a frozen copy of both at every
// snapshot; RW snapshots as writable images of the same kind (INV-3, INV-14); an in-place restore as the
// instant replacement of production by the source (INV-2, INV-12), with its restore point. Used by the
// property, golden and crash tests; it knows nothing about the engine's structures.

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
  hidden?: boolean;
  autoDelete?: boolean;
  /** Restore point of the running restore (unreadable until it completes). */
  restoring?: boolean;
}

/** A writable image: an RW snapshot (or the production volume's content and validity). */
export interface ModelRw {
  id: number;
  base: number;
  tag: string;
  blockCount: number;
  blocks: Uint8Array[];
  valid: boolean[];
}

export interface ModelRestore {
  source: { kind: 'snapshot' | 'rw'; id: number };
  rpId: number;
  keep: boolean;
}

/** Content and validity of a view (a snapshot or an RW snapshot), for the helpers below. */
interface Image {
  blockCount: number;
  blocks: Uint8Array[];
  valid: boolean[];
}

export class VolumeModel {
  blocks: Uint8Array[] = [];
  valid: boolean[] = [];
  readonly snapshots: ModelSnapshot[] = [];
  /** Event counter; bumped by every write, discard and cut. */
  clock = 0;
  /** Events after which differentials need not be tight (discards, restores). */
  discards: number[] = [];
  readonly rws = new Map<number, ModelRw>();
  restore: ModelRestore | null = null;

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
  touched(offset: number, length: number, img: Image = this): number[] {
    const bs = this.blockSize;
    const out = new Set<number>();
    for (let b = Math.floor(offset / bs); b * bs < offset + length; b++) {
      const g = this.granuleOf(b);
      if (!img.valid[g]) {
        for (let x = g * this.granuleBlocks; x < Math.min((g + 1) * this.granuleBlocks, img.blockCount); x++) {
          out.add(x);
        }
      } else out.add(b);
    }
    return [...out].sort((a, b) => a - b);
  }

  write(offset: number, data: Uint8Array): void {
    this.clock++;
    writeImage(this, this, offset, data, (b) => this.markWritten(b));
  }

  discard(offset: number, length: number): void {
    this.clock++;
    this.discards.push(this.clock);
    discardImage(this, this, offset, length, (b) => this.markWritten(b));
  }

  // ---- RW snapshots ---------------------------------------------------------------------------------

  /** OP-7: an RW snapshot equal to snapshot `base`, `blockCount` blocks (>= the base's). */
  rwCreate(id: number, base: number, blockCount: number, tag = ''): ModelRw {
    const s = this.find(base);
    const rw: ModelRw = { id, base, tag, blockCount, blocks: [], valid: [] };
    this.rebase(rw, s, blockCount);
    this.rws.set(id, rw);
    return rw;
  }

  private rebase(rw: ModelRw, s: ModelSnapshot, blockCount: number): void {
    rw.base = s.id;
    rw.blockCount = Math.max(blockCount, s.blockCount);
    rw.blocks = Array.from(
      { length: rw.blockCount },
      (_, b) => s.content[b]?.slice() ?? new Uint8Array(this.blockSize),
    );
    rw.valid = Array.from(
      { length: Math.ceil(rw.blockCount / this.granuleBlocks) },
      (_, g) => s.validGranules[g] === true,
    );
  }

  rw(id: number): ModelRw {
    const rw = this.rws.get(id);
    if (rw === undefined) throw new Error(`model has no RW snapshot ${id}`);
    return rw;
  }

  rwWrite(id: number, offset: number, data: Uint8Array): void {
    this.clock++;
    writeImage(this, this.rw(id), offset, data, () => {});
  }

  rwDiscard(id: number, offset: number, length: number): void {
    this.clock++;
    discardImage(this, this.rw(id), offset, length, () => {});
  }

  rwResize(id: number, blockCount: number): void {
    const rw = this.rw(id);
    while (rw.blocks.length < blockCount) rw.blocks.push(new Uint8Array(this.blockSize));
    while (rw.valid.length < Math.ceil(blockCount / this.granuleBlocks)) rw.valid.push(false);
    rw.blockCount = blockCount;
  }

  /** OP-12; returns the auto-delete snapshots that went with it. */
  rwDelete(id: number): number[] {
    this.rw(id);
    this.rws.delete(id);
    return this.collect();
  }

  /** OP-10 onto snapshot `base` (already in the model); keeps id and tag. */
  rwRefresh(id: number, base: number): number[] {
    const rw = this.rw(id);
    this.rebase(rw, this.find(base), rw.blockCount);
    return this.collect();
  }

  // ---- dependants, deferred deletion ------------------------------------------------------------------

  /** RW children, the running restore (source, source's base, restore point). */
  pinned(id: number): boolean {
    for (const rw of this.rws.values()) if (rw.base === id) return true;
    const r = this.restore;
    if (r === null) return false;
    if (r.rpId === id) return true;
    if (r.source.kind === 'snapshot') return r.source.id === id;
    return this.rws.get(r.source.id)?.base === id;
  }

  /** Deferred deletion: hidden now, deleted with its last dependant. */
  deleteWhenUnpinned(id: number): boolean {
    if (!this.pinned(id)) {
      this.delete(id);
      return false;
    }
    const s = this.find(id);
    s.hidden = true;
    s.autoDelete = true;
    return true;
  }

  /** Deletes auto-delete snapshots nothing depends on; returns their ids. */
  collect(): number[] {
    const out: number[] = [];
    for (const s of [...this.snapshots]) {
      if (s.autoDelete === true && !this.pinned(s.id)) {
        this.delete(s.id);
        out.push(s.id);
      }
    }
    return out;
  }

  // ---- in-place restore -------------------------------------------------------------------------------

  /** The source X's content (snapshot or RW snapshot). */
  sourceImage(kind: 'snapshot' | 'rw', id: number): Image {
    if (kind === 'rw') return this.rw(id);
    const s = this.find(id);
    return { blockCount: s.blockCount, blocks: s.content, valid: s.validGranules };
  }

  /**
   * OP-13 as the user sees it: production becomes X at once (blocks past X's size read zeros, granules
   * past it invalid), then the restore point Rp = X is cut (hidden, unreadable until completion).
   */
  restoreStart(kind: 'snapshot' | 'rw', id: number, rpId: number, keep: boolean): void {
    const x = this.sourceImage(kind, id);
    this.clock++;
    this.discards.push(this.clock);
    const t0 = this.snapshots[this.snapshots.length - 1];
    for (let b = 0; b < this.blockCount; b++) t0?.periodWrites.add(b);
    this.blocks = this.blocks.map((_, b) => (b < x.blockCount ? x.blocks[b]!.slice() : new Uint8Array(this.blockSize)));
    this.valid = this.valid.map((_, g) => g < x.valid.length && x.valid[g] === true);
    this.snapshot(rpId, 'meta-bitmap');
    const rp = this.find(rpId);
    rp.hidden = true;
    rp.restoring = true;
    this.restore = { source: { kind, id }, rpId, keep };
  }

  /** OP-13 step 8: Rp kept as a visible snapshot or merged away; returns auto-deleted snapshot ids. */
  restoreEnd(): number[] {
    const r = this.restore;
    if (r === null) throw new Error('model: no restore running');
    this.restore = null;
    const rp = this.find(r.rpId);
    rp.restoring = false;
    if (r.keep) rp.hidden = false;
    else this.delete(r.rpId);
    return this.collect();
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

  rwContent(id: number): Uint8Array {
    const rw = this.rw(id);
    const out = new Uint8Array(rw.blockCount * this.blockSize);
    rw.blocks.forEach((b, i) => out.set(b, i * this.blockSize));
    return out;
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

/** Write with punch-hole/zero-fill semantics on an image (production or RW snapshot). */
function writeImage(m: VolumeModel, img: Image, offset: number, data: Uint8Array, mark: (b: number) => void): void {
  const bs = m.blockSize;
  for (const b of m.touched(offset, data.length, img)) {
    mark(b);
    if (!img.valid[m.granuleOf(b)]) img.blocks[b]!.fill(0);
  }
  for (let b = Math.floor(offset / bs); b * bs < offset + data.length; b++) {
    img.valid[m.granuleOf(b)] = true;
    const start = b * bs;
    const from = Math.max(start, offset);
    const to = Math.min(start + bs, offset + data.length);
    img.blocks[b]!.set(data.subarray(from - offset, to - offset), from - start);
  }
}

function discardImage(m: VolumeModel, img: Image, offset: number, length: number, mark: (b: number) => void): void {
  const bs = m.blockSize;
  const g = m.granuleBlocks;
  const end = offset + length;
  for (let gi = 0; gi < img.valid.length; gi++) {
    if (!img.valid[gi]) continue;
    const first = gi * g;
    const last = Math.min((gi + 1) * g, img.blockCount);
    const whole = first * bs >= offset && last * bs <= end;
    if (whole) {
      img.valid[gi] = false;
      for (let b = first; b < last; b++) img.blocks[b]!.fill(0);
      continue;
    }
    for (let b = first; b < last; b++) {
      const lo = Math.max(offset, b * bs);
      const hi = Math.min(end, (b + 1) * bs);
      if (hi <= lo) continue;
      mark(b);
      img.blocks[b]!.fill(0, lo - b * bs, hi - b * bs);
    }
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
