// SPDX-License-Identifier: Apache-2.0
// Background copy of a view's allocated extents (OP-18, "copy by extent") into another engine volume: the
// fill of a `clone`-method snapshot's independent image, and the hydration of an RW clone into a volume of
// its own. Only extents that may hold data are read; all-zero chunks are not written (the target reads
// zeros there anyway), so the target stays as sparse as the source.
//
// Presence: a target granule whose meta bit is set already holds its final data (the copier put it there,
// or, during hydration, the user wrote it through the hydrating view, hydrate-view.ts), so the copier never
// overwrites it. Chunks are copied under the view's range lock when one is given, so a user write cannot
// slip between the presence check and the copy.
//
// Durability and resume: every `checkpointBytes` the target is flushed (data and meta records durable), then
// the cursor (a byte offset of the source) is stored as a target attribute, durable on resolve. After a crash
// the job reopens at the stored cursor: everything before it is durable in the target, everything after it
// is copied again where the target does not hold it. Completion flushes and stores the cursor 'done'.
import { RangeLock } from '../frontend/range-lock.js';
import type { Extent } from '../engine/volume.js';
import type { SnapshotVolume } from '../engine/volume.js';
import type { BackgroundJob, JobProgress } from './scheduler.js';

/** What the copier reads: a snapshot or an RW snapshot of an engine volume (copy-source.ts). */
export interface CopySource {
  readonly blockSize: number;
  readonly sizeBytes: number;
  /** Extents that may hold data, ascending, starting at or after `startingOffset` (clipped). */
  allocatedExtents(startingOffset: number, maxResults: number): Extent[];
  read(offset: number, into: Uint8Array): Promise<void>;
  /** Lets the source go (unpins it). */
  release(): void;
}

export interface ExtentCopyOptions {
  readonly kind: string;
  readonly id: string;
  readonly source: CopySource;
  readonly target: SnapshotVolume;
  /** Range lock shared with the target's foreground I/O (hydration); block indexes. */
  readonly lock?: RangeLock;
  readonly chunkBytes?: number;
  readonly checkpointBytes?: number;
  /** Target attribute holding the cursor. */
  readonly attribute?: string;
}

export const COPY_CURSOR_ATTRIBUTE = 'copy.cursor';
const DONE = 'done';

export class ExtentCopyJob implements BackgroundJob {
  readonly kind: string;
  readonly id: string;
  private cursor: number;
  private doneBytes: number;
  private sinceCheckpoint = 0;
  private finished: boolean;
  private readonly chunk: number;
  private readonly checkpointBytes: number;
  private readonly attr: string;
  private readonly granuleBytes: number;

  private constructor(
    private readonly o: ExtentCopyOptions,
    cursor: number | 'done',
    private readonly totalBytes: number,
    doneBytes: number,
  ) {
    this.kind = o.kind;
    this.id = o.id;
    this.finished = cursor === DONE;
    this.cursor = cursor === DONE ? o.source.sizeBytes : cursor;
    this.doneBytes = this.finished ? totalBytes : doneBytes;
    this.granuleBytes = o.target.blockSize * o.target.granuleBlocks;
    this.chunk = Math.max(this.granuleBytes, roundDown(o.chunkBytes ?? 4 * 1024 * 1024, this.granuleBytes));
    this.checkpointBytes = o.checkpointBytes ?? 64 * 1024 * 1024;
    this.attr = o.attribute ?? COPY_CURSOR_ATTRIBUTE;
  }

  /** Opens the job at the target's stored cursor (0 for a new copy). */
  static open(o: ExtentCopyOptions): ExtentCopyJob {
    if (o.source.blockSize !== o.target.blockSize) throw new Error('source and target block sizes differ');
    if (o.source.sizeBytes > o.target.sizeBytes) throw new Error('the target is smaller than the source');
    const stored = o.target.getAttribute(o.attribute ?? COPY_CURSOR_ATTRIBUTE);
    const cursor = stored === DONE ? DONE : stored === undefined ? 0 : Number(stored);
    if (cursor !== DONE && (!Number.isSafeInteger(cursor) || cursor < 0)) {
      throw new Error(`stored copy cursor ${stored} is not a byte offset`);
    }
    let total = 0;
    let done = 0;
    for (const e of allExtents(o.source)) {
      total += e.length;
      if (cursor !== DONE) done += Math.max(0, Math.min(e.offset + e.length, cursor) - e.offset);
    }
    return new ExtentCopyJob(o, cursor, total, done);
  }

  get complete(): boolean {
    return this.finished;
  }

  progress(): JobProgress {
    return { doneBytes: this.doneBytes, totalBytes: this.totalBytes };
  }

  async step(budgetBytes: number): Promise<boolean> {
    if (this.finished) return true;
    let budget = budgetBytes;
    while (budget > 0) {
      const [next] = this.o.source.allocatedExtents(this.cursor, 1);
      if (next === undefined) return this.finish();
      const start = Math.max(next.offset, this.cursor);
      const from = roundDown(start, this.granuleBytes);
      const end = Math.min(next.offset + next.length, from + this.chunk);
      const to = Math.min(roundUp(end, this.granuleBytes), this.o.target.sizeBytes);
      await this.copyRange(from, to);
      this.doneBytes += end - start;
      this.cursor = end;
      budget -= end - start;
      this.sinceCheckpoint += end - start;
      if (this.sinceCheckpoint >= this.checkpointBytes) await this.checkpoint();
    }
    return false;
  }

  private async copyRange(from: number, to: number): Promise<void> {
    const bs = this.o.target.blockSize;
    const copy = async (): Promise<void> => {
      const buf = new Uint8Array(to - from);
      const srcEnd = Math.min(to, this.o.source.sizeBytes);
      if (srcEnd > from) await this.o.source.read(from, buf.subarray(0, srcEnd - from));
      // Write runs of granules the target does not hold yet and that are not all zeros.
      let runStart = -1;
      const flushRun = async (stop: number): Promise<void> => {
        if (runStart < 0) return;
        await this.o.target.write(runStart, buf.subarray(runStart - from, stop - from));
        runStart = -1;
      };
      for (let g = from; g < to; g += this.granuleBytes) {
        const gEnd = Math.min(g + this.granuleBytes, to);
        const want = !this.o.target.isAllocated(g) && !isZero(buf.subarray(g - from, gEnd - from));
        if (want && runStart < 0) runStart = g;
        if (!want) await flushRun(g);
      }
      await flushRun(to);
    };
    if (this.o.lock === undefined) await copy();
    else await this.o.lock.with(Math.floor(from / bs), Math.floor((to - 1) / bs), 'exclusive', copy);
  }

  private async checkpoint(): Promise<void> {
    this.sinceCheckpoint = 0;
    await this.o.target.flush();
    await this.o.target.setAttribute(this.attr, String(this.cursor));
  }

  private async finish(): Promise<boolean> {
    await this.o.target.flush();
    await this.o.target.setAttribute(this.attr, DONE);
    this.finished = true;
    this.doneBytes = this.totalBytes;
    this.cursor = this.o.source.sizeBytes;
    return true;
  }
}

function allExtents(src: CopySource): Extent[] {
  const out: Extent[] = [];
  let offset = 0;
  for (;;) {
    const batch = src.allocatedExtents(offset, 4096);
    if (batch.length === 0) return out;
    out.push(...batch);
    const last = batch[batch.length - 1]!;
    offset = last.offset + last.length;
  }
}

function roundDown(x: number, unit: number): number {
  return Math.floor(x / unit) * unit;
}

function roundUp(x: number, unit: number): number {
  return Math.ceil(x / unit) * unit;
}

function isZero(buf: Uint8Array): boolean {
  const words = buf.byteOffset % 4 === 0 ? buf.length >>> 2 : 0;
  if (words > 0) {
    const w = new Uint32Array(buf.buffer, buf.byteOffset, words);
    for (let i = 0; i < words; i++) if (w[i] !== 0) return false;
  }
  for (let i = words * 4; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}
