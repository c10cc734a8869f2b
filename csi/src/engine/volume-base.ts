// SPDX-License-Identifier: Apache-2.0
// The lifecycle half of SnapshotVolume (volume.ts): construction, the live view, size and quota, stats,
// checkpoints, close, and the helpers both halves share. See volume.ts for the public contract.

import { Committer } from './committer.js';
import type { BlockExtent } from './differential.js';
import { engineError } from './errors.js';
import { Gate } from './gate.js';
import { checkpointOf } from './recovery.js';
import { encodeCheckpoint } from './checkpoint-codec.js';
import type { SnapshotMethod } from './layout.js';
import { readProduction } from './read-path.js';
import * as rwOps from './rw-ops.js';
import type { RwEntry } from './rw-snapshot.js';
import { CTL_GENERATION, type SharedVolumeState } from './shared-state.js';
import { collectAutoDeletes } from './snapshot-gc.js';
import { SNAP_FLAG_RESTORING, type SnapshotEntry } from './snapshot-queue.js';
import type { VolumeCore } from './volume-core.js';
import { discardRange, writeRange } from './write-path.js';
import { verifyCore } from './verify.js';
import { blockQuery, checkRange, snapshotInfo, toBytes, volumeStats } from './volume-report.js';
import {
  checkSize,
  CHECKPOINT_JOURNAL_DEFAULT_BYTES,
  type Extent,
  type ExtentOptions,
  MAX_SNAPSHOTS_DEFAULT,
  type SnapshotInfo,
  type VolumeRuntimeOptions,
  type VolumeStats,
} from './volume-options.js';

export abstract class VolumeBase {
  protected closed = false;
  protected checkpointPending = false;
  protected readonly gate: Gate;
  protected readonly clock: () => number;
  protected readonly maxSnapshots: number;
  protected readonly checkpointBytes: number;
  protected readonly ops: rwOps.OpsContext;

  protected constructor(
    protected readonly core: VolumeCore,
    options: VolumeRuntimeOptions,
    gen: number,
  ) {
    const schedule = options.schedule ?? ((fn) => setImmediate(fn));
    this.clock = options.clock ?? Date.now;
    this.maxSnapshots = options.maxSnapshots ?? MAX_SNAPSHOTS_DEFAULT;
    this.checkpointBytes = options.checkpointJournalBytes ?? CHECKPOINT_JOURNAL_DEFAULT_BYTES;
    this.gate = new Gate(core.control, schedule);
    this.ops = { core, clock: this.clock, maxSnapshots: this.maxSnapshots };
    core.committer = new Committer(
      {
        clone: core.clone,
        save: core.save,
        meta: core.metaStore,
        schedule,
        onFailure: (err) => {
          core.failure ??= err;
        },
        onCommitted: () => this.maybeCheckpoint(),
      },
      gen,
    );
  }

  get blockSize(): number {
    return this.core.blockSize;
  }

  get blockCount(): number {
    return this.core.blockCount;
  }

  get sizeBytes(): number {
    return this.core.blockCount * this.core.blockSize;
  }

  get granuleBlocks(): number {
    return this.core.granuleBlocks;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  // ---- live view -------------------------------------------------------------------------------------

  async read(offset: number, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    await this.readInto(offset, out);
    return out;
  }

  async readInto(offset: number, into: Uint8Array): Promise<void> {
    this.usable();
    this.checkRange(offset, into.length, this.sizeBytes);
    if (this.core.restore === null) await readProduction(this.core, offset, into);
    else await this.core.epochs.read(() => readProduction(this.core, offset, into));
  }

  /** Writes `data` at byte `offset` (any alignment). */
  async write(offset: number, data: Uint8Array): Promise<void> {
    this.usable();
    this.checkRange(offset, data.length, this.sizeBytes);
    await this.shared(() => writeRange(this.core, offset, data));
  }

  /** Punch-hole semantics: afterwards [offset, offset + length) reads as zeros (OP-5). */
  async discard(offset: number, length: number): Promise<void> {
    this.usable();
    this.checkRange(offset, length, this.sizeBytes);
    if (length === 0) return;
    await this.gate.exclusive(() => discardRange(this.core, offset, length));
  }

  /** Makes every completed write and discard durable. */
  async flush(): Promise<void> {
    this.usable();
    await this.core.committer.flush();
  }

  /** Does a production write of `block` need engine work (COW, meta update, restore)? */
  needsEngine(block: number): boolean {
    return !this.core.isSettled(block);
  }

  /** Arrays for data-path workers; see shared-state.ts for the protocol. Requires `shared: true`. */
  sharedState(): SharedVolumeState {
    const core = this.core;
    if (!core.alloc.shared) throw engineError('ENGINE_BAD_ARGUMENT', 'volume was opened without shared: true');
    return {
      control: core.control,
      settled: core.settled,
      meta: core.meta.words,
      blockSize: core.blockSize,
      blockCount: core.blockCount,
      granuleShift: core.granuleShift,
      generation: Atomics.load(core.control, CTL_GENERATION),
    };
  }

  // ---- size, quota, stats ----------------------------------------------------------------------------

  /** EC-7: grows the volume; snapshots keep their size. Shrinking fails. */
  async resize(sizeBytes: number): Promise<void> {
    this.usable();
    checkSize(sizeBytes, this.core.blockSize);
    await this.gate.exclusive(async () => {
      const core = this.core;
      const blocks = sizeBytes / core.blockSize;
      if (core.restore !== null && blocks !== core.blockCount) {
        throw engineError('ENGINE_RESTORE_IN_PROGRESS', 'an in-place restore is running; resize after it completes');
      }
      if (blocks < core.blockCount) {
        throw engineError('ENGINE_SHRINK_UNSUPPORTED', `cannot shrink from ${this.sizeBytes} to ${sizeBytes} bytes`);
      }
      if (blocks === core.blockCount) return;
      await core.committer.flush();
      await core.clone.resize(blocks);
      core.grow(blocks);
      core.committer.appendAfterMeta({ type: 'resize', blockCount: blocks });
      await core.committer.barrier();
    });
  }

  /** Sets the save-pool quota (EC-5); null = unlimited. Existing before-images stay. */
  async setSaveQuota(bytes: number | null): Promise<void> {
    this.usable();
    await this.gate.exclusive(async () => {
      const slots = bytes === null ? null : Math.floor(bytes / this.core.blockSize);
      this.core.pool.setQuota(slots);
      this.core.committer.append({ type: 'quota', quotaSlots: slots });
      await this.core.committer.barrier();
    });
  }

  stats(): VolumeStats {
    return volumeStats(this.core);
  }

  /** Checks INV-4, INV-7, INV-8 and INV-18-style structure; throws on the first violation (tests). */
  verifyInvariants(): void {
    verifyCore(this.core);
  }

  /** Writes a checkpoint now (resets the journal). */
  async checkpoint(): Promise<void> {
    this.usable();
    await this.gate.exclusive(() => this.writeCheckpoint());
  }

  /** Flushes, checkpoints and closes the devices. Further calls fail with ENGINE_CLOSED. */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.gate.exclusive(async () => {
      if (this.closed) return;
      this.closed = true;
      try {
        if (this.core.failure === null) {
          await this.core.committer.flush();
          if (this.core.metaStore.journalBytes() > 0) await this.writeCheckpoint();
        }
      } finally {
        await Promise.allSettled([this.core.clone.close(), this.core.save.close(), this.core.metaStore.close()]);
      }
    });
  }

  // ---- internals -------------------------------------------------------------------------------------

  protected async writeCheckpoint(): Promise<void> {
    const core = this.core;
    await core.committer.flush();
    await core.committer.whenIdle();
    const gen = core.committer.generation + 1;
    const poolSlots = core.pool.trimTail();
    await core.metaStore.writeCheckpoint(encodeCheckpoint(checkpointOf(core, gen)), gen);
    core.committer.resetGeneration(gen);
    core.counters.checkpoints++;
    if (core.save.blockCount() > poolSlots) await core.save.resize(poolSlots);
  }

  protected maybeCheckpoint(): void {
    if (this.checkpointPending || this.closed || this.core.metaStore.journalBytes() < this.checkpointBytes) return;
    this.checkpointPending = true;
    void this.gate
      .exclusive(async () => {
        if (!this.closed && this.core.failure === null) await this.writeCheckpoint();
      })
      .catch((err: unknown) => {
        this.core.failure ??= err;
      })
      .finally(() => {
        this.checkpointPending = false;
      });
  }

  protected async shared<T>(fn: () => Promise<T>): Promise<T> {
    const wait = this.gate.enterShared();
    if (wait !== null) await wait;
    try {
      this.usable();
      return await fn();
    } finally {
      this.gate.leaveShared();
    }
  }

  protected usable(): void {
    if (this.closed) throw engineError('ENGINE_CLOSED', 'volume is closed');
    if (this.core.failure !== null) {
      throw engineError('ENGINE_VOLUME_FAILED', 'a metadata commit failed; reopen the volume', {}, this.core.failure);
    }
  }

  protected entry(id: number, readable: boolean): SnapshotEntry {
    const e = this.core.queue.find(id);
    if (e === undefined) throw engineError('ENGINE_UNKNOWN_SNAPSHOT', `snapshot ${id} does not exist`, { id });
    if (readable && e.state === 'invalid') {
      throw engineError('ENGINE_SNAPSHOT_INVALID', `snapshot ${id} lost data when the save pool was full`, { id });
    }
    if (readable && (e.flags & SNAP_FLAG_RESTORING) !== 0) {
      throw engineError('ENGINE_SNAPSHOT_NOT_READY', `snapshot ${id} is the restore point of a running restore`, {
        id,
      });
    }
    return e;
  }

  protected rw(id: number, usable: boolean): RwEntry {
    const rw = rwOps.rwEntry(this.core, id);
    if (usable && this.core.queue.find(rw.base)?.state !== 'valid') {
      throw engineError(
        'ENGINE_SNAPSHOT_INVALID',
        `the base of RW snapshot ${id} lost data when the save pool was full`,
        {
          id,
          base: rw.base,
        },
      );
    }
    return rw;
  }

  /** Deletes auto-delete snapshots nothing depends on (a background merge). */
  protected async collect(): Promise<void> {
    await this.gate.exclusive(async () => {
      if (this.closed || this.core.failure !== null) return;
      if (collectAutoDeletes(this.core).length === 0) return;
      await this.core.committer.barrier();
      this.core.pool.commitFrees();
    });
  }

  protected info(e: SnapshotEntry): SnapshotInfo {
    return snapshotInfo(this.core, e);
  }

  protected checkRange(offset: number, length: number, limit: number): void {
    checkRange(offset, length, limit);
  }

  protected blockQuery(options: ExtentOptions): { startBlock: number; maxExtents: number } {
    return blockQuery(options, this.core.blockSize);
  }

  protected toBytes(extents: BlockExtent[]): Extent[] {
    return toBytes(extents, this.core.blockSize);
  }
}

export function checkTag(tag: string | undefined): string {
  const t = tag ?? '';
  if (new TextEncoder().encode(t).length > 1024) throw engineError('ENGINE_BAD_ARGUMENT', 'tag exceeds 1024 bytes');
  return t;
}

export function checkMethod(method: SnapshotMethod): SnapshotMethod {
  if (method !== 'save-volume' && method !== 'meta-bitmap') {
    throw engineError('ENGINE_BAD_ARGUMENT', `unknown snapshot method ${String(method)}`);
  }
  return method;
}
