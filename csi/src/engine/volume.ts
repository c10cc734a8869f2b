// SPDX-License-Identifier: Apache-2.0
// SnapshotVolume: the engine's public API for one production volume (clone volume + shared save pool +
// snapshot queue), over two BlockDevices and a MetaStore. Pure: no fs, grpc or k8s imports.
//
// Views: the live (production) view reads and writes through the COW path (and OP-13's foreground rule
// during an in-place restore); an RO snapshot view reads by OP-6 and refuses writes; an RW snapshot view
// reads by OP-8 and writes by OP-9. `ViewRef` names a view.
// Durability: `write` and `writeRw` resolve once the bytes are readable and every before-image they displaced
// is durable (EC-1); they are durable themselves after the next `flush()`, as are discards. Snapshot and RW
// snapshot creation, deletion and refresh, `startRestore`, `resize`, `setSaveQuota` and `setAttribute` are
// durable on resolve.
// Background work: `restoreStep` advances a running in-place restore (jobs/ schedules it); a restore survives
// close, crash and reopen (the restore record is in the journal) and resumes with the next step.
// Concurrency: calls may overlap freely; see gate.ts, write-path.ts, read-epochs.ts and shared-state.ts.

import { allocatedBlocks, changedBlocks, type ValiditySource } from './differential.js';
import { engineError } from './errors.js';
import { loadCore } from './recovery.js';
import { encodeCheckpoint } from './checkpoint-codec.js';
import { checkpointOf } from './recovery.js';
import type { SnapshotMethod } from './layout.js';
import { readRw, readSnapshot } from './read-path.js';
import { copyStep, finishRestore, startRestore } from './restore-path.js';
import * as rwOps from './rw-ops.js';
import { discardRw, writeRw } from './rw-path.js';
import { dependantsOf, describeDependants, isPinned } from './snapshot-gc.js';
import { SNAP_FLAG_AUTO_DELETE, SNAP_FLAG_HIDDEN } from './snapshot-queue.js';
import { VolumeCore } from './volume-core.js';
import { checkMethod, checkTag, VolumeBase } from './volume-base.js';
import { restoreStatus, rwInfo } from './volume-report.js';
import { giveBackFreeSlots } from './space-policy.js';
import {
  allocatorOf,
  BLOCK_SIZE_DEFAULT_BYTES,
  checkSize,
  type CloneLiveOptions,
  type CreateRwOptions,
  type CreateVolumeOptions,
  type DeleteSnapshotOptions,
  type Extent,
  type ExtentOptions,
  isPow2,
  type RefreshOptions,
  type RestoreOptions,
  type RestoreStatus,
  type RwInfo,
  type SnapshotInfo,
  type ViewRef,
  type VolumeDevices,
  type VolumeRuntimeOptions,
} from './volume-options.js';

export type { RestoreOrder, RestoreSourceKind, SnapshotMethod, SnapshotState } from './layout.js';
export * from './volume-options.js';

export class SnapshotVolume extends VolumeBase {
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

  /**
   * Opens a volume, replaying its journal after a crash; writes a fresh checkpoint when it replayed any. A
   * restore that was running continues with the next restoreStep().
   */
  static async open(devices: VolumeDevices, options: VolumeRuntimeOptions = {}): Promise<SnapshotVolume> {
    const { core, gen } = await loadCore(devices, allocatorOf(options));
    const volume = new SnapshotVolume(core, options, gen);
    // Deferred deletions whose last in-memory pin went away before a crash.
    if (core.queue.entries.some((e) => (e.flags & SNAP_FLAG_AUTO_DELETE) !== 0)) await volume.collect();
    if (devices.meta.journalBytes() > 0) await volume.writeCheckpoint();
    return volume;
  }

  // ---- snapshots -------------------------------------------------------------------------------------

  /** OP-1: cuts an RO snapshot of the live view; O(1) data. `tag` is free text (e.g. a CSI handle). */
  async createSnapshot(
    options: { method?: SnapshotMethod; tag?: string; hidden?: boolean } = {},
  ): Promise<SnapshotInfo> {
    this.usable();
    const method = checkMethod(options.method ?? 'save-volume');
    const tag = checkTag(options.tag);
    return this.gate.exclusive(async () => {
      rwOps.checkCut(this.ops);
      const { entry, records } = rwOps.cutEntry(this.ops, method, tag, options.hidden === true ? SNAP_FLAG_HIDDEN : 0);
      // One commit: fsync the clone (every write before the cut) and one frame holding the pending meta
      // records followed by snap-create, so replay freezes exactly the MBM_P frozen here (committer.ts).
      await this.core.committer.flush({ then: records, now: true });
      return this.info(entry);
    });
  }

  /**
   * OP-11: deletes any snapshot (head, middle or tail) by merging it into the next older one. A snapshot
   * something depends on (RW snapshots, the running restore, pins) is refused with ENGINE_SNAPSHOT_BUSY, or
   * with `whenUnpinned` hidden now and deleted when its last dependant goes (EC-8); returns which happened.
   */
  async deleteSnapshot(id: number, options: DeleteSnapshotOptions = {}): Promise<{ deferred: boolean }> {
    this.usable();
    return this.gate.exclusive(async () => {
      const core = this.core;
      const entry = this.entry(id, false);
      const deps = dependantsOf(core, entry);
      if (isPinned(deps)) {
        if (options.whenUnpinned !== true || (deps.restore && entry.id === core.restore?.rpId)) {
          throw engineError('ENGINE_SNAPSHOT_BUSY', `snapshot ${id} is pinned: ${describeDependants(deps)}`, {
            id,
            rwSnapshots: deps.rws,
            restore: deps.restore,
            pins: deps.pins,
          });
        }
        entry.flags |= SNAP_FLAG_HIDDEN | SNAP_FLAG_AUTO_DELETE;
        core.committer.append({ type: 'snap-flags', snapId: id, flags: entry.flags });
        await core.committer.barrier();
        return { deferred: true };
      }
      core.queue.remove(id, (slot) => core.pool.freeLater(slot));
      core.committer.append({ type: 'snap-delete', snapId: id });
      await core.committer.barrier();
      core.pool.commitFrees();
      await giveBackFreeSlots(core);
      return { deferred: false };
    });
  }

  /** Every snapshot of the queue, oldest first, hidden ones included (see SnapshotInfo.hidden). */
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

  /**
   * Forbids deleting the snapshot until the returned release function is called (EC-8). Releasing the last
   * pin of a deferred deletion deletes the snapshot in the background.
   */
  pinSnapshot(id: number): () => void {
    const entry = this.entry(id, false);
    entry.pins++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      entry.pins--;
      if (entry.pins === 0 && (entry.flags & SNAP_FLAG_AUTO_DELETE) !== 0 && !this.closed) {
        this.collect().catch((err: unknown) => {
          if (this.core.failure === null && !this.closed) this.core.failure = err;
        });
      }
    };
  }

  async readSnapshot(id: number, offset: number, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    await this.readSnapshotInto(id, offset, out);
    return out;
  }

  /**
   * OP-6. Fails with ENGINE_SNAPSHOT_INVALID for snapshots that lost data (EC-5) and with
   * ENGINE_SNAPSHOT_NOT_READY for the restore point of a running restore.
   */
  async readSnapshotInto(id: number, offset: number, into: Uint8Array): Promise<void> {
    this.usable();
    await this.shared(async () => {
      const entry = this.entry(id, true);
      this.checkRange(offset, into.length, entry.blockCount * this.core.blockSize);
      await this.core.epochs.read(() => readSnapshot(this.core, entry, this.core.queue.positionOf(id), offset, into));
    });
  }

  async readView(view: ViewRef, offset: number, into: Uint8Array): Promise<void> {
    if (view.kind === 'live') return this.readInto(offset, into);
    if (view.kind === 'rw') return this.readRwInto(view.id, offset, into);
    return this.readSnapshotInto(view.id, offset, into);
  }

  async writeView(view: ViewRef, offset: number, data: Uint8Array): Promise<void> {
    if (view.kind === 'live') return this.write(offset, data);
    if (view.kind === 'rw') return this.writeRw(view.id, offset, data);
    throw engineError('ENGINE_READ_ONLY', `snapshot ${view.id} is read-only`, { id: view.id });
  }

  async discardView(view: ViewRef, offset: number, length: number): Promise<void> {
    if (view.kind === 'live') return this.discard(offset, length);
    if (view.kind === 'rw') return this.discardRw(view.id, offset, length);
    throw engineError('ENGINE_READ_ONLY', `snapshot ${view.id} is read-only`, { id: view.id });
  }

  // ---- RW snapshots (OP-7..OP-12) -----------------------------------------------------------------------

  /** OP-7: an RW snapshot on RO snapshot `baseId`, which stays pinned while it exists. */
  async createRw(baseId: number, options: CreateRwOptions = {}): Promise<RwInfo> {
    this.usable();
    const tag = checkTag(options.tag);
    return this.gate.exclusive(async () =>
      rwInfo(this.core, await rwOps.createRw(this.ops, baseId, tag, options.sizeBytes)),
    );
  }

  /** A clone of the live volume in one commit: a hidden auto-delete RO snapshot and an RW snapshot on it. */
  async cloneLive(options: CloneLiveOptions = {}): Promise<{ snapshot: SnapshotInfo; rw: RwInfo }> {
    this.usable();
    const tag = checkTag(options.tag);
    const method = checkMethod(options.method ?? 'meta-bitmap');
    return this.gate.exclusive(async () => {
      const { snapshot, rw } = await rwOps.cloneLive(this.ops, method, tag, options.sizeBytes);
      return { snapshot: this.info(snapshot), rw: rwInfo(this.core, rw) };
    });
  }

  async readRw(id: number, offset: number, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    await this.readRwInto(id, offset, out);
    return out;
  }

  /** OP-8. */
  async readRwInto(id: number, offset: number, into: Uint8Array): Promise<void> {
    this.usable();
    await this.shared(async () => {
      const rw = this.rw(id, true);
      this.checkRange(offset, into.length, rw.blockCount * this.core.blockSize);
      await this.core.epochs.read(() => readRw(this.core, rw, offset, into));
    });
  }

  /** OP-9: never touches the clone or another view. ENGINE_SAVE_POOL_FULL when no slot can be had. */
  async writeRw(id: number, offset: number, data: Uint8Array): Promise<void> {
    this.usable();
    await this.shared(async () => {
      const rw = this.rw(id, true);
      this.checkRange(offset, data.length, rw.blockCount * this.core.blockSize);
      await writeRw(this.core, rw, offset, data);
    });
  }

  /** Punch-hole semantics for an RW snapshot; whole granules give their slots back. */
  async discardRw(id: number, offset: number, length: number): Promise<void> {
    this.usable();
    await this.gate.exclusive(async () => {
      const rw = this.rw(id, true);
      this.checkRange(offset, length, rw.blockCount * this.core.blockSize);
      await discardRw(this.core, rw, offset, length);
    });
  }

  /** OP-12: frees its data; an auto-delete base it was the last dependant of goes in the same commit. */
  async deleteRw(id: number): Promise<void> {
    this.usable();
    await this.gate.exclusive(() => rwOps.deleteRw(this.ops, id));
  }

  /**
   * OP-10: the RW snapshot forgets its data and is based on `snapshotId`, or (default) on a new hidden
   * snapshot of the live volume; it keeps its id and tag. One commit, so a crash leaves old or new.
   */
  async refreshRw(id: number, options: RefreshOptions = {}): Promise<RwInfo> {
    this.usable();
    const target =
      options.snapshotId !== undefined
        ? { snapshotId: options.snapshotId }
        : { method: checkMethod(options.method ?? 'meta-bitmap'), tag: this.rw(id, false).tag };
    return this.gate.exclusive(async () => rwInfo(this.core, await rwOps.refreshRw(this.ops, id, target)));
  }

  /** Grows an RW snapshot (never shrinks). */
  async resizeRw(id: number, sizeBytes: number): Promise<void> {
    this.usable();
    await this.gate.exclusive(() => rwOps.resizeRw(this.ops, id, sizeBytes));
  }

  listRws(): RwInfo[] {
    return [...this.core.rws.values()].map((rw) => rwInfo(this.core, rw));
  }

  getRw(id: number): RwInfo {
    return rwInfo(this.core, this.rw(id, false));
  }

  findRwByTag(tag: string): RwInfo | undefined {
    for (const rw of this.core.rws.values()) if (rw.tag === tag) return rwInfo(this.core, rw);
    return undefined;
  }

  /** Forbids deleting or refreshing the RW snapshot until released (e.g. while it is being hydrated). */
  pinRw(id: number): () => void {
    const rw = this.rw(id, false);
    rw.pins++;
    let released = false;
    return () => {
      if (!released) rw.pins--;
      released = true;
    };
  }

  /** OP-18 for an RW snapshot: extents that may hold data (MBMR). */
  allocatedRwExtents(id: number, options: ExtentOptions = {}): Extent[] {
    this.usable();
    const rw = this.rw(id, false);
    const src: ValiditySource = { meta: rw.meta, blockCount: rw.blockCount };
    return this.toBytes(allocatedBlocks(src, this.core.granuleShift, this.blockQuery(options)));
  }

  // ---- in-place restore (OP-13) --------------------------------------------------------------------------

  /**
   * Starts an online in-place restore from an RO or RW snapshot of this volume. On resolve the restore is
   * durable and every read returns the source's content; writes go on (restore-before-write). The copy is
   * done by restoreStep() calls; a crash or close resumes where the persisted record says.
   */
  async startRestore(options: RestoreOptions): Promise<RestoreStatus> {
    this.usable();
    const tag = checkTag(options.tag);
    const order = options.order ?? 'new-then-old';
    if (order !== 'new-then-old' && order !== 'old-then-new') {
      throw engineError('ENGINE_BAD_ARGUMENT', `unknown restore order ${String(order)}`);
    }
    const kind = options.source.kind;
    if (kind !== 'snapshot' && kind !== 'rw') {
      throw engineError('ENGINE_BAD_ARGUMENT', `unknown restore source kind ${String(kind)}`);
    }
    return this.gate.exclusive(async () => {
      const rs = await startRestore(this.ops, options.source, order, options.keepRestorePoint === true, tag);
      return restoreStatus(this.core, rs);
    });
  }

  /** Progress of the running restore, or null when none runs. */
  restoreStatus(): RestoreStatus | null {
    const rs = this.core.restore;
    return rs === null ? null : restoreStatus(this.core, rs);
  }

  /**
   * One step of the background copy (at most `maxBlocks` blocks); completes the restore when nothing is
   * pending. Returns the progress, or null once no restore runs any more.
   */
  async restoreStep(maxBlocks = 256): Promise<RestoreStatus | null> {
    this.usable();
    const rs = this.core.restore;
    if (rs === null) return null;
    if (rs.pendingCount > 0) await this.shared(() => copyStep(this.core, rs, Math.max(1, maxBlocks)));
    if (this.core.restore === rs && rs.pendingCount === 0) {
      await this.gate.exclusive(async () => {
        if (this.core.restore === rs && rs.pendingCount === 0) await finishRestore(this.core, rs);
      });
    }
    return this.restoreStatus();
  }

  // ---- attributes ------------------------------------------------------------------------------------

  /** Sets a small persisted attribute (durable on resolve); '' removes it. */
  async setAttribute(key: string, value: string): Promise<void> {
    this.usable();
    if (key === '' || new TextEncoder().encode(key).length > 256 || new TextEncoder().encode(value).length > 4096) {
      throw engineError('ENGINE_BAD_ARGUMENT', 'attribute keys are 1..256 bytes, values at most 4096 bytes');
    }
    await this.shared(async () => {
      if (value === '') this.core.attributes.delete(key);
      else this.core.attributes.set(key, value);
      this.core.committer.append({ type: 'attr', key, value });
      await this.core.committer.barrier();
    });
  }

  getAttribute(key: string): string | undefined {
    return this.core.attributes.get(key);
  }

  /** Whether MBM_P marks the granule of byte `offset` valid (copy jobs use it to tell written blocks). */
  isAllocated(offset: number): boolean {
    return this.core.meta.test(this.core.granuleOf(Math.floor(offset / this.core.blockSize)));
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
    const pending = to === 'live' && core.restore !== null ? core.restore.pending : undefined;
    return this.toBytes(changedBlocks(between, m, core.granuleShift, this.blockQuery(options), pending));
  }

  /** OP-18: extents that may hold data in the view; all other bytes read as zeros. */
  allocatedExtents(of: number | 'live', options: ExtentOptions = {}): Extent[] {
    this.usable();
    const core = this.core;
    const src: ValiditySource = of === 'live' ? { meta: core.meta, blockCount: core.blockCount } : this.entry(of, true);
    return this.toBytes(allocatedBlocks(src, core.granuleShift, this.blockQuery(options)));
  }
}
