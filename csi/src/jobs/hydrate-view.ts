// SPDX-License-Identifier: Apache-2.0
// The view of a volume while it is hydrated: an RW clone (the source, read-only from now on) being turned
// into a volume of its own (the target engine volume) by an ExtentCopyJob in the background.
//
//   read      per granule: the target when it holds the granule (meta bit set), else the source
//   write     goes to the target only; a write that covers part of a granule the target does not hold yet
//             first fills the rest of the granule from the source (copy-before-write)
//   discard   writes zeros (a real discard would clear the target's bit and expose the source's old bytes)
//   flush     the target (the source does not change)
// Reads take the range lock shared, writes and the copier's chunks exclusive, so the presence check and the
// copy of a granule are atomic with respect to user writes. Once the copier finished, switchToTarget() sends
// everything to the target, which is then the volume (discards become real discards again).
// Crash safety: the target's meta bit of a granule becomes durable only after its data (flush), so after a
// crash a granule reads either the target's durable data or the unchanged source: a write that was not
// flushed may be lost, as on any block device; nothing else changes.
import type { SnapshotVolume } from '../engine/volume.js';
import { RangeLock } from '../frontend/range-lock.js';
import type { CopySource } from './extent-copy.js';

export class HydrateView {
  readonly lock = new RangeLock();
  private switched = false;
  private readonly granuleBytes: number;

  constructor(
    private readonly source: CopySource,
    readonly target: SnapshotVolume,
  ) {
    this.granuleBytes = target.blockSize * target.granuleBlocks;
  }

  get sizeBytes(): number {
    return this.target.sizeBytes;
  }

  get blockSize(): number {
    return this.target.blockSize;
  }

  get isSwitched(): boolean {
    return this.switched;
  }

  /** The copy is complete: from now on the target alone is the volume. */
  switchToTarget(): void {
    this.switched = true;
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    if (this.switched) return this.target.readInto(offset, into);
    if (into.length === 0) return;
    const [first, last] = this.blocks(offset, into.length);
    await this.lock.with(first, last, 'shared', async () => {
      const g = this.granuleBytes;
      let pos = offset;
      const end = offset + into.length;
      while (pos < end) {
        const fromTarget = this.target.isAllocated(pos);
        let stop = Math.min(end, (Math.floor(pos / g) + 1) * g);
        while (stop < end && this.target.isAllocated(stop) === fromTarget) stop = Math.min(end, stop + g);
        const part = into.subarray(pos - offset, stop - offset);
        if (fromTarget) await this.target.readInto(pos, part);
        else await this.readSource(pos, part);
        pos = stop;
      }
    });
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    if (this.switched) return this.target.write(offset, data);
    if (data.length === 0) return;
    const [first, last] = this.blocks(offset, data.length);
    await this.lock.with(first, last, 'exclusive', async () => {
      const g = this.granuleBytes;
      const from = Math.floor(offset / g) * g;
      const to = Math.min(Math.ceil((offset + data.length) / g) * g, this.target.sizeBytes);
      const headMissing = from < offset && !this.target.isAllocated(from);
      const tailMissing = to > offset + data.length && !this.target.isAllocated(to - 1);
      if (!headMissing && !tailMissing) {
        await this.target.write(offset, data);
        return;
      }
      // Copy-before-write of the partly covered granules the target does not hold yet.
      const buf = new Uint8Array(to - from);
      for (let p = from; p < to; p += g) {
        const part = buf.subarray(p - from, Math.min(p + g, to) - from);
        if (this.target.isAllocated(p)) await this.target.readInto(p, part);
        else await this.readSource(p, part);
      }
      buf.set(data, offset - from);
      await this.target.write(from, buf);
    });
  }

  async discard(offset: number, length: number): Promise<void> {
    if (this.switched) return this.target.discard(offset, length);
    const zeros = new Uint8Array(Math.min(length, 1024 * 1024));
    for (let pos = offset; pos < offset + length; pos += zeros.length) {
      await this.write(pos, zeros.subarray(0, Math.min(zeros.length, offset + length - pos)));
    }
  }

  flush(): Promise<void> {
    return this.target.flush();
  }

  private async readSource(offset: number, into: Uint8Array): Promise<void> {
    const end = Math.min(offset + into.length, this.source.sizeBytes);
    if (end > offset) await this.source.read(offset, into.subarray(0, end - offset));
    into.fill(0, Math.max(0, end - offset));
  }

  private blocks(offset: number, length: number): [number, number] {
    const bs = this.target.blockSize;
    return [Math.floor(offset / bs), Math.floor((offset + Math.max(1, length) - 1) / bs)];
  }
}
