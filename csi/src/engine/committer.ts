// SPDX-License-Identifier: Apache-2.0
// Group commit of journal records (EC-1, spec §10 "ordering barriers").
//
// Two record lists, both kept in the order of the in-memory mutations they describe:
// - ordered: map changes (cow, snapshot create/delete/invalidate, resize, quota). A production write that
//   saved a before-image waits on `barrier()` before it overwrites the clone: the barrier makes the saved
//   data (fsync save.img) and the frame holding its record (append + fsync journal, in parallel; see the
//   checksum rule in layout.ts) durable.
// - deferred: production meta bit map changes and RP clears of a restore. They become durable only in
//   `flush()`, after clone.img was fsynced, because a set granule bit (or a cleared RP bit) promises that the
//   clone holds that block's data; committing it earlier could expose stale bytes after a crash. RW snapshot
//   records (rw-map, rw-meta-set) are deferred too and promise data in save.img: when RW data was written
//   since the last flush, flush() syncs save.img together with clone.img before it writes the frame.
// Map records and meta records commute on replay, so a frame may hold ordered records first, then deferred
// ones. Records that freeze MBM_P (snap-create, resize) are appended only when `deferred` is empty.
//
// Commits run one at a time. Everything that asks for a barrier while a commit runs joins the next one, so
// a burst of copy-on-write writes pays one save fsync and one journal fsync, not one per block.

import type { BlockDevice, MetaStore } from './block-device.js';
import { engineError } from './errors.js';
import { encodeFrame } from './journal-codec.js';
import type { JournalRecord } from './layout.js';

interface Waiter {
  target: number;
  /** Records that must follow every deferred record of the same frame (flush requests only). */
  extra?: JournalRecord[];
  resolve: () => void;
  reject: (err: unknown) => void;
}

export interface CommitterDeps {
  clone: BlockDevice;
  save: BlockDevice;
  meta: MetaStore;
  schedule: (fn: () => void) => void;
  /** Called once when a commit fails; the volume must refuse further I/O. */
  onFailure: (err: unknown) => void;
  /** Called after every successful commit that wrote a frame. */
  onCommitted: () => void;
}

export class Committer {
  private ordered: JournalRecord[] = [];
  private deferred: JournalRecord[] = [];
  private appended = 0;
  private durable = 0;
  private waiters: Waiter[] = [];
  private flushWaiters: Waiter[] = [];
  private idleWaiters: (() => void)[] = [];
  private running = false;
  private scheduled = false;
  private saveDirty = false;
  private rwDirty = false;
  private failure: unknown = null;
  private failed = false;
  private seq = 0;
  framesWritten = 0;

  constructor(
    private readonly deps: CommitterDeps,
    private gen: number,
  ) {}

  get generation(): number {
    return this.gen;
  }

  /** Starts a new journal generation (after a checkpoint of generation `gen` reset the journal). */
  resetGeneration(gen: number): void {
    if (this.running || this.ordered.length > 0 || this.deferred.length > 0) {
      throw new Error('journal generation reset while records are pending');
    }
    this.gen = gen;
    this.seq = 0;
  }

  /** Notes that a before-image was written to the save device since the last commit. */
  noteSaveWrite(): void {
    this.saveDirty = true;
  }

  /** Notes that RW snapshot data was written to the save device: the next flush syncs it first. */
  noteRwWrite(): void {
    this.rwDirty = true;
  }

  append(record: JournalRecord): void {
    this.ordered.push(record);
    this.appended++;
  }

  /** Appends a record that freezes MBM_P; no meta record may be pending. */
  appendAfterMeta(record: JournalRecord): void {
    if (this.deferred.length > 0) throw new Error(`${record.type} appended while meta records are pending`);
    this.append(record);
  }

  defer(record: JournalRecord): void {
    this.deferred.push(record);
  }

  get pendingOrdered(): number {
    return this.appended - this.durable;
  }

  /** Resolves when every ordered record appended so far is durable. */
  barrier(): Promise<void> {
    if (this.failure !== null) return Promise.reject(this.failedError());
    if (this.durable >= this.appended) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.waiters.push({ target: this.appended, resolve, reject });
      this.kick();
    });
  }

  /**
   * Makes every completed clone write and every record appended so far durable. `then` records (which
   * freeze MBM_P, e.g. snap-create) go into the same frame after the meta records; `now` skips the
   * group-commit window (the caller holds the gate exclusively, so nothing else could join).
   */
  flush(options: { then?: JournalRecord[]; now?: boolean } = {}): Promise<void> {
    if (this.failure !== null) return Promise.reject(this.failedError());
    return new Promise<void>((resolve, reject) => {
      this.flushWaiters.push({ target: this.appended, resolve, reject, extra: options.then });
      this.kick(options.now === true);
    });
  }

  /** Resolves when no commit is running or requested. */
  whenIdle(): Promise<void> {
    if (!this.running && !this.scheduled) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private kick(now = false): void {
    if (this.running || this.scheduled) return;
    this.scheduled = true;
    (now ? queueMicrotask : this.deps.schedule)(() => {
      this.scheduled = false;
      void this.run();
    });
  }

  private async run(): Promise<void> {
    this.running = true;
    try {
      while (this.failure === null && (this.durable < this.appended || this.flushWaiters.length > 0)) {
        await this.commitOnce();
      }
    } catch (err) {
      this.fail(err);
    } finally {
      this.running = false;
      if (this.failure === null && (this.durable < this.appended || this.flushWaiters.length > 0)) this.kick();
      else for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  private async commitOnce(): Promise<void> {
    const flushes = this.flushWaiters.splice(0);
    // Splice before any fsync: records appended after this point wait for the next commit.
    const deferred = flushes.length > 0 ? this.deferred.splice(0) : [];
    const records = this.ordered.splice(0);
    const extra = flushes.flatMap((f) => f.extra ?? []);
    const target = this.appended;
    let saveDirty = this.saveDirty;
    this.saveDirty = false;
    // RW data: synced before the frame (its deferred records point at it), or at least by this flush.
    const rwDirty = flushes.length > 0 && this.rwDirty;
    if (rwDirty) this.rwDirty = false;
    // A cut with no meta records pending syncs the clone in parallel with its frame: until both are durable
    // the cut is not acknowledged, and if only the frame survives a crash the snapshot equals the recovered
    // live volume (no write can follow the cut before it is acknowledged), i.e. a cut taken after the crash.
    const cloneInParallel = flushes.length > 0 && deferred.length === 0 && extra.length > 0;
    const saveFirst = rwDirty && !cloneInParallel;
    if (rwDirty && cloneInParallel) saveDirty = true;
    try {
      if (flushes.length > 0 && !cloneInParallel) {
        await Promise.all([this.deps.clone.flush(), saveFirst ? this.deps.save.flush() : undefined]);
      }
      if (saveFirst) saveDirty = false;
      if (records.length > 0 || deferred.length > 0 || extra.length > 0) {
        const frame = encodeFrame(this.gen, this.seq, records.concat(deferred, extra));
        // Save data and frame are synced in parallel; each cow record carries the checksum of its before-image
        // so replay drops an entry of the last frame whose data did not make it (recovery.ts). Frames never
        // overlap: the next commit starts only after both syncs of this one completed.
        await Promise.all([
          cloneInParallel ? this.deps.clone.flush() : undefined,
          saveDirty ? this.deps.save.flush() : undefined,
          this.deps.meta.appendJournal(frame),
        ]);
        this.seq++;
        this.framesWritten++;
      } else if (saveDirty) {
        this.saveDirty = true;
      }
      if (flushes.length > 0 && rwDirty && !saveFirst && records.length + deferred.length + extra.length === 0) {
        await this.deps.save.flush();
      }
    } catch (err) {
      // The spliced flush requests are no longer in flushWaiters: fail() would not reach them.
      this.failure ??= err;
      const e = this.failedError();
      for (const f of flushes) f.reject(e);
      throw err;
    }
    this.durable = target;
    const still: Waiter[] = [];
    for (const w of this.waiters) {
      if (w.target <= target) w.resolve();
      else still.push(w);
    }
    this.waiters = still;
    for (const f of flushes) f.resolve();
    if (records.length > 0 || deferred.length > 0 || extra.length > 0) this.deps.onCommitted();
  }

  private fail(err: unknown): void {
    if (this.failed) return;
    this.failed = true;
    this.failure ??= err;
    const e = this.failedError();
    for (const w of this.waiters.splice(0)) w.reject(e);
    for (const w of this.flushWaiters.splice(0)) w.reject(e);
    for (const w of this.idleWaiters.splice(0)) w();
    this.deps.onFailure(err);
  }

  private failedError() {
    return engineError('ENGINE_VOLUME_FAILED', 'a metadata commit failed; reopen the volume', {}, this.failure);
  }
}
