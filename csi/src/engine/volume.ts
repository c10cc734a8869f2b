// SPDX-License-Identifier: Apache-2.0
// SnapshotVolume: the engine's public API for one production volume (clone volume + shared save pool +
// snapshot queue), over two BlockDevices and a MetaStore. Pure: no fs, grpc or k8s imports.
//
// Views: the live (production) view reads and writes through the COW path; an RO snapshot view reads by
// OP-6 and refuses writes. `ViewRef` names a view; issue 4 adds RW snapshot views to it.
// Durability: `write` resolves once the bytes are readable and every before-image they displaced is durable
// (EC-1); they are durable themselves after the next `flush()`. `createSnapshot`, `deleteSnapshot`,
// `resize` and `setSaveQuota` are durable on resolve. `discard` is durable after the next flush.
// Concurrency: calls may overlap freely; see gate.ts, write-path.ts and shared-state.ts.

import { Committer } from './committer.js';
import { allocatedBlocks, type BlockExtent, changedBlocks, type ValiditySource } from './differential.js';
import { engineError } from './errors.js';
import { Gate } from './gate.js';
import { checkpointOf, loadCore } from './recovery.js';
import { encodeCheckpoint } from './checkpoint-codec.js';
import type { SnapshotMethod } from './layout.js';
import { readProduction, readSnapshot } from './read-path.js';
import { CTL_GENERATION, type SharedVolumeState } from './shared-state.js';
import type { SnapshotEntry } from './snapshot-queue.js';
import { BlockMap } from './block-map.js';
import { VolumeCore } from './volume-core.js';
import { discardRange, writeRange } from './write-path.js';
import { verifyCore } from './verify.js';
import { blockQuery, checkRange, snapshotInfo, toBytes, volumeStats } from './volume-report.js';
import {
  allocatorOf,
  BLOCK_SIZE_DEFAULT_BYTES,
  checkSize,
  CHECKPOINT_JOURNAL_DEFAULT_BYTES,
  type CreateVolumeOptions,
  type Extent,
  type ExtentOptions,
  isPow2,
  MAX_SNAPSHOTS_DEFAULT,
  type SnapshotInfo,
  type ViewRef,
  type VolumeDevices,
  type VolumeRuntimeOptions,
  type VolumeStats,
} from './volume-options.js';

export type { SnapshotMethod, SnapshotState } from './layout.js';
export * from './volume-options.js';

export class SnapshotVolume {
  private closed = false;
  private checkpointPending = false;
  private readonly gate: Gate;
  private readonly clock: () => number;
  private readonly maxSnapshots: number;
  private readonly checkpointBytes: number;

  private constructor(
    private readonly core: VolumeCore,
    options: VolumeRuntimeOptions,
    gen: number,
  ) {
    const schedule = options.schedule ?? ((fn) => setImmediate(fn));
    this.clock = options.clock ?? Date.now;
    this.maxSnapshots = options.maxSnapshots ?? MAX_SNAPSHOTS_DEFAULT;
    this.checkpointBytes = options.checkpointJournalBytes ?? CHECKPOINT_JOURNAL_DEFAULT_BYTES;
    this.gate = new Gate(core.control, schedule);
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

  /** Creates an empty volume on fresh devices and writes its first checkpoint. */
  static async create(devices: VolumeDevices, options: CreateVolumeOptions): Promise<SnapshotVolume> {
    const blockSize = options.blockSize ?? BLOCK_SIZE_DEFAULT_BYTES;
    const granule = options.granuleBlocks ?? 1;
    if (!isPow2(blockSize) || blockSize < 512 || blockSize > 1 << 20) {
      throw engineError('ENGINE_BAD_ARGUMENT', `block size ${blockSize} is not a power of two in 512..1048576`);
    }
    if (!isPow2(granule) || granule > 1 << 20) {
      throw engineError('ENGINE_BAD_ARGUMENT', `granule of ${granule} blocks is not a power of two <= 2^20`);
    }
    checkSize(options.sizeBytes, blockSize);
    if (devices.clone.blockSize !== blockSize || devices.save.blockSize !== blockSize) {
      throw engineError('ENGINE_BAD_ARGUMENT', 'device block sizes differ from the volume block size');
    }
    const quota = options.saveQuotaBytes ?? null;
    const core = new VolumeCore(
      {
        blockSize,
        blockCount: options.sizeBytes / blockSize,
        granuleShift: Math.log2(granule),
        createdAt: (options.clock ?? Date.now)(),
      },
      devices.clone,
      devices.save,
      devices.meta,
      allocatorOf(options),
      quota === null ? null : Math.floor(quota / blockSize),
    );
    await devices.clone.resize(core.blockCount);
    await devices.meta.writeCheckpoint(encodeCheckpoint(checkpointOf(core, 1)), 1);
    return new SnapshotVolume(core, options, 1);
  }

  /** Opens a volume, replaying its journal after a crash; writes a fresh checkpoint when it replayed any. */
  static async open(devices: VolumeDevices, options: VolumeRuntimeOptions = {}): Promise<SnapshotVolume> {
    const { core, gen } = await loadCore(devices, allocatorOf(options));
    const volume = new SnapshotVolume(core, options, gen);
    if (devices.meta.journalBytes() > 0) await volume.writeCheckpoint();
    return volume;
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
    await readProduction(this.core, offset, into);
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

  // ---- snapshots -------------------------------------------------------------------------------------

  /** OP-1: cuts an RO snapshot of the live view; O(1) data. `tag` is free text (e.g. a CSI handle). */
  async createSnapshot(options: { method?: SnapshotMethod; tag?: string } = {}): Promise<SnapshotInfo> {
    this.usable();
    const method = options.method ?? 'save-volume';
    if (method !== 'save-volume' && method !== 'meta-bitmap') {
      throw engineError('ENGINE_BAD_ARGUMENT', `unknown snapshot method ${String(method)}`);
    }
    const tag = options.tag ?? '';
    if (new TextEncoder().encode(tag).length > 1024) throw engineError('ENGINE_BAD_ARGUMENT', 'tag exceeds 1024 bytes');
    return this.gate.exclusive(async () => {
      const core = this.core;
      if (core.queue.length >= this.maxSnapshots) {
        throw engineError('ENGINE_SNAPSHOT_LIMIT', `volume holds ${core.queue.length} snapshots`, {
          limit: this.maxSnapshots,
        });
      }
      const entry: SnapshotEntry = {
        id: core.nextSnapId++,
        method,
        state: 'valid',
        tag,
        blockCount: core.blockCount,
        createdAt: this.clock(),
        meta: core.freezer.freeze(core.meta),
        map: new BlockMap(core.alloc),
        pins: 0,
      };
      core.queue.append(entry);
      core.resetSettled();
      // One commit: fsync the clone (every write before the cut) and one frame holding the pending meta
      // records followed by snap-create, so replay freezes exactly the MBM_P frozen here (committer.ts).
      await core.committer.flush({
        then: [{ type: 'snap-create', snapId: entry.id, method, createdAt: entry.createdAt, tag }],
        now: true,
      });
      return this.info(entry);
    });
  }

  /** OP-11: deletes any snapshot (head, middle or tail) by merging it into the next older one. */
  async deleteSnapshot(id: number): Promise<void> {
    this.usable();
    await this.gate.exclusive(async () => {
      const core = this.core;
      const entry = this.entry(id, false);
      if (entry.pins > 0)
        throw engineError('ENGINE_SNAPSHOT_BUSY', `snapshot ${id} is pinned`, { id, pins: entry.pins });
      core.queue.remove(id, (slot) => core.pool.freeLater(slot));
      core.committer.append({ type: 'snap-delete', snapId: id });
      await core.committer.barrier();
      core.pool.commitFrees();
    });
  }

  listSnapshots(): SnapshotInfo[] {
    return this.core.queue.entries.map((e) => this.info(e));
  }

  getSnapshot(id: number): SnapshotInfo {
    return this.info(this.entry(id, false));
  }

  findSnapshotByTag(tag: string): SnapshotInfo | undefined {
    const e = this.core.queue.entries.find((x) => x.tag === tag);
    return e === undefined ? undefined : this.info(e);
  }

  /** Forbids deleting the snapshot until the returned release function is called (EC-8). */
  pinSnapshot(id: number): () => void {
    const entry = this.entry(id, false);
    entry.pins++;
    let released = false;
    return () => {
      if (!released) entry.pins--;
      released = true;
    };
  }

  async readSnapshot(id: number, offset: number, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    await this.readSnapshotInto(id, offset, out);
    return out;
  }

  /** OP-6. Fails with ENGINE_SNAPSHOT_INVALID for snapshots that lost data (EC-5). */
  async readSnapshotInto(id: number, offset: number, into: Uint8Array): Promise<void> {
    this.usable();
    await this.shared(async () => {
      const entry = this.entry(id, true);
      this.checkRange(offset, into.length, entry.blockCount * this.core.blockSize);
      await readSnapshot(this.core, entry, this.core.queue.positionOf(id), offset, into);
    });
  }

  async readView(view: ViewRef, offset: number, into: Uint8Array): Promise<void> {
    if (view.kind === 'live') return this.readInto(offset, into);
    return this.readSnapshotInto(view.id, offset, into);
  }

  async writeView(view: ViewRef, offset: number, data: Uint8Array): Promise<void> {
    if (view.kind === 'live') return this.write(offset, data);
    throw engineError('ENGINE_READ_ONLY', `snapshot ${view.id} is read-only`, { id: view.id });
  }

  // ---- changed-block tracking -----------------------------------------------------------------------

  /** OP-14/OP-16: blocks of `to` (a younger snapshot or the live volume) that may differ from `from`. */
  changedExtents(from: number, to: number | 'live', options: ExtentOptions = {}): Extent[] {
    this.usable();
    const core = this.core;
    const posL = core.queue.positionOf(from);
    this.entry(from, true);
    let posM = core.queue.length;
    let m: ValiditySource = { meta: core.meta, blockCount: core.blockCount };
    if (to !== 'live') {
      const target = this.entry(to, true);
      posM = core.queue.positionOf(to);
      if (posM <= posL) {
        throw engineError('ENGINE_BAD_ARGUMENT', `snapshot ${to} is not younger than ${from}`, { from, to });
      }
      m = target;
    }
    const between = core.queue.entries.slice(posL, posM);
    return this.toBytes(changedBlocks(between, m, core.granuleShift, this.blockQuery(options)));
  }

  /** OP-18: extents that may hold data in the view; all other bytes read as zeros. */
  allocatedExtents(of: number | 'live', options: ExtentOptions = {}): Extent[] {
    this.usable();
    const core = this.core;
    const src: ValiditySource = of === 'live' ? { meta: core.meta, blockCount: core.blockCount } : this.entry(of, true);
    return this.toBytes(allocatedBlocks(src, core.granuleShift, this.blockQuery(options)));
  }

  // ---- size, quota, stats ----------------------------------------------------------------------------

  /** EC-7: grows the volume; snapshots keep their size. Shrinking fails. */
  async resize(sizeBytes: number): Promise<void> {
    this.usable();
    checkSize(sizeBytes, this.core.blockSize);
    await this.gate.exclusive(async () => {
      const core = this.core;
      const blocks = sizeBytes / core.blockSize;
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

  private async writeCheckpoint(): Promise<void> {
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

  private maybeCheckpoint(): void {
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

  private async shared<T>(fn: () => Promise<T>): Promise<T> {
    const wait = this.gate.enterShared();
    if (wait !== null) await wait;
    try {
      this.usable();
      return await fn();
    } finally {
      this.gate.leaveShared();
    }
  }

  private usable(): void {
    if (this.closed) throw engineError('ENGINE_CLOSED', 'volume is closed');
    if (this.core.failure !== null) {
      throw engineError('ENGINE_VOLUME_FAILED', 'a metadata commit failed; reopen the volume', {}, this.core.failure);
    }
  }

  private entry(id: number, readable: boolean): SnapshotEntry {
    const e = this.core.queue.find(id);
    if (e === undefined) throw engineError('ENGINE_UNKNOWN_SNAPSHOT', `snapshot ${id} does not exist`, { id });
    if (readable && e.state === 'invalid') {
      throw engineError('ENGINE_SNAPSHOT_INVALID', `snapshot ${id} lost data when the save pool was full`, { id });
    }
    return e;
  }

  private info(e: SnapshotEntry): SnapshotInfo {
    return snapshotInfo(e, this.core.blockSize);
  }

  private checkRange(offset: number, length: number, limit: number): void {
    checkRange(offset, length, limit);
  }

  private blockQuery(options: ExtentOptions): { startBlock: number; maxExtents: number } {
    return blockQuery(options, this.core.blockSize);
  }

  private toBytes(extents: BlockExtent[]): Extent[] {
    return toBytes(extents, this.core.blockSize);
  }
}
