// SPDX-License-Identifier: Apache-2.0
// VolumeBackend on the real parts: engine volumes in the file stores (csi/src/store/volume-store.ts:
// `<stateDir>/volumes/` for volumes, `<stateDir>/clones/` for clone-method images), opened with shared
// arrays for the data-path workers and managed by engine-volumes.ts (thin clones, images, hydration,
// restores, background jobs), and the data path (csi/src/frontend/datapath.ts: FUSE mount at
// <stateDir>/fuse, one view per attached volume named after the volume id, a loop device on it).
//
// Views: a volume of its own is exposed as a live view (worker fast path); a thin clone as an RW view whose
// range lock is its base volume's (snapshot/RW reads and production writes of one engine volume are ordered);
// a volume being hydrated as an RW view over the hydrating view.
// Invariants: an engine volume is open for as long as it exists; a view exists exactly while a loop device is
// attached to it (attachVolume/detachVolume); a volume with an attached view is never deleted.
import { statfs } from 'node:fs/promises';
import { join } from 'node:path';
import type { Registry } from 'prom-client';
import type { Logger } from '../../../common/src/log.js';
import type { SnapshotInfo, SnapshotVolume } from '../engine/volume.js';
import { Datapath } from '../frontend/datapath.js';
import { livePort, rwPort } from '../frontend/engine-ports.js';
import { isReachable } from '../frontend/fuse-mount.js';
import { describeLoop, type LoopDevice, loopForFile } from '../mount/loop-device.js';
import { VolumeStore } from '../store/volume-store.js';
import { CsiError } from '../errors.js';
import type { JobSample, VolumeGaugeSample } from '../metrics.js';
import { trimFs } from '../mount/trim.js';
import type {
  BackendFeatures,
  ByteExtent,
  EngineSnapshot,
  EngineSnapshotMethod,
  ExtentQuery,
  ImageState,
  Progress,
  VolumeBackend,
  VolumeCondition,
} from './backend.js';
import {
  type BackingKind,
  type CloneSource,
  EngineVolumes,
  type JobDoneListener,
  type StoreKind,
  type VolumeFactory,
} from './engine-volumes.js';
import { copyContent } from './volume-copy.js';

export interface EngineBackendOptions {
  readonly stateDir: string;
  readonly log: Logger;
  readonly blockSizeBytes: number;
  /** Blocks per meta bit map granule of new volumes. */
  readonly granuleBlocks: number;
  /** Data-path worker threads. */
  readonly workers: number;
  /** Save-pool quota per volume in bytes (null: grow until the disk is full). */
  readonly saveQuotaBytes: number | null;
  /** Registry for the data path's own metrics. */
  readonly registry?: Registry;
  /** O_DIRECT for the data path's fast-path I/O on clone files (ADR 0003). */
  readonly directIo?: boolean;
  /** Total rate of background copies (restore, clone images, hydration); default 256 MiB/s, 0 = unlimited. */
  readonly backgroundRateBytesPerSecond?: number;
  /** The predecessor's /dev/fuse descriptor (from the keeper): its connection is adopted when it can be. */
  readonly inheritedFuseFd?: number;
  /** Trim a mounted file system before a meta-bitmap cut (default true; --trim-before-cut). */
  readonly trimBeforeCut?: boolean;
}

/** File stores for the engine volumes: `<stateDir>/volumes/` and `<stateDir>/clones/`. */
function fileFactory(stateDir: string, log: Logger): VolumeFactory {
  const stores: Record<StoreKind, VolumeStore> = {
    volumes: new VolumeStore(stateDir),
    images: new VolumeStore(stateDir, undefined, { dirName: 'clones' }),
  };
  for (const [kind, store] of Object.entries(stores)) {
    const leftovers = store.recover();
    if (leftovers.length > 0)
      log.warn({ store: kind, leftovers }, 'Removed half-created or half-deleted engine volumes');
  }
  return {
    create: (store, id, options) => stores[store].create(id, { ...options, shared: true }),
    open: (store, id) => stores[store].openVolume(id, { shared: true }),
    remove: (store, id) => stores[store].delete(id),
    list: (store) => stores[store].list(),
  };
}

export class EngineBackend implements VolumeBackend {
  readonly features: BackendFeatures = { rwClones: true, cloneImages: true, onlineResize: true };
  private closed = false;

  private constructor(
    private readonly opts: EngineBackendOptions,
    private readonly engine: EngineVolumes,
    private readonly datapath: Datapath,
    private readonly log: Logger,
  ) {}

  get blockSizeBytes(): number {
    return this.opts.blockSizeBytes;
  }

  /**
   * Cleans up what a dead predecessor left in the data path, mounts FUSE, clears half-made store entries,
   * opens every engine volume and image, and resumes their background jobs. Engine volumes without a driver
   * record are reported by the driver's recovery, never deleted here.
   */
  static async start(opts: EngineBackendOptions): Promise<EngineBackend> {
    const log = opts.log.child({ component: 'backend' });
    const datapath = await Datapath.start({
      stateDir: opts.stateDir,
      log: opts.log,
      workers: opts.workers,
      ...(opts.registry === undefined ? {} : { registry: opts.registry }),
      ...(opts.directIo === undefined ? {} : { directIo: opts.directIo }),
      ...(opts.inheritedFuseFd === undefined ? {} : { inheritedFuseFd: opts.inheritedFuseFd }),
    });
    let engine: EngineVolumes | undefined;
    try {
      engine = new EngineVolumes(fileFactory(opts.stateDir, log), {
        blockSizeBytes: opts.blockSizeBytes,
        granuleBlocks: opts.granuleBlocks,
        saveQuotaBytes: opts.saveQuotaBytes,
        log: opts.log,
        scheduler: {
          rateBytesPerSecond: opts.backgroundRateBytesPerSecond,
          foregroundBusy: () => datapath.foregroundBusy(),
        },
      });
      await engine.start();
    } catch (err) {
      await engine?.close().catch(() => undefined);
      // An adopted connection is left to the keeper: stopping it would cut off every pod's volume.
      if (!datapath.adopted) await datapath.stop({ force: true }).catch(() => undefined);
      throw err;
    }
    const backend = new EngineBackend(opts, engine, datapath, log);
    if (datapath.adopted) {
      for (const volumeId of datapath.adoptedViews()) {
        if (engine.backing(volumeId) === undefined) continue;
        try {
          backend.expose(volumeId);
        } catch (err) {
          log.error({ err, volumeId }, 'Failed to expose the view of an adopted volume again');
        }
      }
      await datapath.resume();
      // A view without a loop device was mid-stage or mid-unstage: the kubelet repeats that call.
      for (const volumeId of datapath.views()) {
        if ((await datapath.loopsOf(volumeId)).length > 0) continue;
        await datapath.unexpose(volumeId).catch((err: unknown) => log.warn({ err, volumeId }, 'Failed to unexpose'));
      }
    }
    log.info({ volumes: engine.openVolumes().length, cleanup: datapath.cleanup }, 'Started storage backend');
    return backend;
  }

  /** True when the data path took over a predecessor's connection: stages and publishes are still live. */
  get adopted(): boolean {
    return this.datapath.adopted;
  }

  /** The /dev/fuse descriptor of the data path's connection (handed to the keeper). */
  get fuseDevice(): { fd: number; connectionId: number } {
    return { fd: this.datapath.fuseDevice, connectionId: this.datapath.connectionId };
  }

  /**
   * Hands the data path over to a successor process: background jobs stop (the successor resumes them),
   * the FUSE server stops serving without ending its connection (requests wait in the kernel), then every
   * engine volume is flushed and closed (checkpointed), so the successor opens them without journal replay.
   * Mounts, loop devices and views stay. The process must exit afterwards.
   */
  async release(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.engine.scheduler.close();
    await this.datapath.release();
    const errors = await this.engine.close();
    if (errors.length > 0) throw new AggregateError(errors, 'closing the engine volumes for a handover failed');
  }

  /** Engine volume ids present on disk that are neither retired nor hydration targets. */
  storedVolumeIds(): string[] {
    return this.engine.storedVolumeIds();
  }

  /** Engine volumes and images that failed to open at start (reported on the Node, registry/node-events.ts). */
  unopenedVolumes(): { volumeId: string; reason: string }[] {
    return this.engine.unopened();
  }

  // ----- volumes ----------------------------------------------------------------------------------------

  createVolume(volumeId: string, sizeBytes: number): Promise<void> {
    return this.engine.createVolume(volumeId, sizeBytes);
  }

  createRwClone(volumeId: string, source: CloneSource, sizeBytes: number): Promise<void> {
    return this.engine.createRwClone(volumeId, source, sizeBytes);
  }

  cloneVolume(volumeId: string, sourceVolumeId: string, sizeBytes: number, opts: { mountpoint?: string }) {
    return this.engine.cloneLive(volumeId, sourceVolumeId, sizeBytes, (fn) => this.cut(fn, opts.mountpoint));
  }

  copyVolumeInto(srcVolumeId: string, dstVolumeId: string, signal?: AbortSignal): Promise<{ copiedBytes: number }> {
    return copyContent(this.engine.content(srcVolumeId), this.engine.own(dstVolumeId), signal);
  }

  liveUsedBytes(volumeId: string): number {
    let used = 0;
    let offset = 0;
    for (;;) {
      const batch = this.engine.content(volumeId).allocatedExtents(offset, 4096);
      if (batch.length === 0) return used;
      for (const e of batch) {
        const start = Math.max(e.offset, offset);
        used += Math.max(0, e.offset + e.length - start);
      }
      const last = batch[batch.length - 1]!;
      offset = last.offset + last.length;
    }
  }

  backing(volumeId: string): BackingKind | undefined {
    return this.engine.backing(volumeId);
  }

  rwClonesOf(volumeId: string): string[] {
    return this.engine.rwClonesOf('volumes', volumeId);
  }

  async deleteVolume(volumeId: string): Promise<'deleted' | 'retired' | 'absent'> {
    if (this.datapath.views().includes(volumeId)) {
      throw new CsiError('CSI_ERR_IN_USE', `volume ${volumeId} is attached to a loop device; unstage it first`);
    }
    return this.engine.deleteVolume(volumeId);
  }

  hasVolume(volumeId: string): boolean {
    return this.engine.backing(volumeId) !== undefined;
  }

  volumeSizeBytes(volumeId: string): number {
    return this.engine.content(volumeId).sizeBytes;
  }

  /**
   * Grows the engine storage first, then, while the volume is attached, its view and loop devices
   * (Datapath.grow): the kernel never addresses a block the engine does not have. Safe to repeat after a
   * failure in between (both steps are idempotent).
   */
  async resizeVolume(volumeId: string, sizeBytes: number): Promise<void> {
    await this.engine.resizeVolume(volumeId, sizeBytes);
    if (!this.datapath.views().includes(volumeId)) return;
    const { devices } = await this.datapath.grow(volumeId, this.engine.content(volumeId).sizeBytes);
    this.log.info({ volumeId, sizeBytes, devices: devices.map((d) => d.device) }, 'Grew attached volume online');
  }

  // ----- snapshots --------------------------------------------------------------------------------------

  async createSnapshot(
    volumeId: string,
    opts: { method: EngineSnapshotMethod; tag: string; mountpoint?: string },
  ): Promise<EngineSnapshot> {
    const v = this.engine.own(volumeId);
    // meta-bitmap skips what the file system freed only once the engine knows it: trim right before the freeze
    // (ADR 0013). Blocks freed between the trim and the freeze are copied like any live block.
    if (opts.method === 'meta-bitmap' && opts.mountpoint !== undefined && this.opts.trimBeforeCut !== false) {
      const t = await trimFs(opts.mountpoint);
      if (t.ok)
        this.log.debug({ volumeId, trimmedBytes: t.trimmedBytes, durationMs: t.durationMs }, 'Trimmed before cut');
      else this.log.warn({ volumeId, err: t.error }, 'Trim before a meta-bitmap cut failed; freed blocks are copied');
    }
    return toSnapshot(await this.cut(() => v.createSnapshot({ method: opts.method, tag: opts.tag }), opts.mountpoint));
  }

  getSnapshot(volumeId: string, engineSnapshotId: number): EngineSnapshot | undefined {
    const info = this.ownOrUndefined(volumeId)
      ?.listSnapshots()
      .find((s) => s.id === engineSnapshotId);
    return info === undefined ? undefined : toSnapshot(info);
  }

  findSnapshotByTag(volumeId: string, tag: string): EngineSnapshot | undefined {
    const info = this.ownOrUndefined(volumeId)?.findSnapshotByTag(tag);
    return info === undefined ? undefined : toSnapshot(info);
  }

  listSnapshots(volumeId: string): EngineSnapshot[] {
    return (this.ownOrUndefined(volumeId)?.listSnapshots() ?? []).map(toSnapshot);
  }

  deleteSnapshot(volumeId: string, engineSnapshotId: number): Promise<void> {
    return this.engine.deleteSnapshot(volumeId, engineSnapshotId);
  }

  createImage(snapshotId: string, volumeId: string, opts: { mountpoint?: string }) {
    return this.engine.createImage(snapshotId, volumeId, (fn) => this.cut(fn, opts.mountpoint));
  }

  imageState(snapshotId: string): ImageState {
    return this.engine.imageState(snapshotId);
  }

  deleteImage(snapshotId: string): Promise<'deleted' | 'retired' | 'absent'> {
    return this.engine.deleteImage(snapshotId);
  }

  imagesCopyingFrom(volumeId: string): string[] {
    return this.engine.imagesCopyingFrom(volumeId);
  }

  startHydration(volumeId: string): Promise<void> {
    return this.engine.startHydration(volumeId);
  }

  hydrationState(volumeId: string): Progress | undefined {
    return this.engine.hydrationState(volumeId);
  }

  startRestore(
    volumeId: string,
    source: { engineSnapshotId: number } | { rwCloneVolumeId: string },
    order?: 'old-then-new' | 'new-then-old',
  ): Promise<void> {
    return this.engine.startRestore(volumeId, source, order);
  }

  restoreState(volumeId: string): Progress | undefined {
    return this.engine.restoreState(volumeId);
  }

  refreshVolume(volumeId: string, target: { engineSnapshotId: number } | 'new', opts: { mountpoint?: string }) {
    return this.engine.refresh(volumeId, target, (fn) => this.cut(fn, opts.mountpoint));
  }

  onJobDone(listener: JobDoneListener): void {
    this.engine.onJobDone(listener);
  }

  allocatedExtents(volumeId: string, engineSnapshotId: number, q: ExtentQuery): ByteExtent[] {
    return this.engine.own(volumeId).allocatedExtents(engineSnapshotId, {
      startingOffset: q.startingOffset,
      maxResults: q.maxResults,
    });
  }

  changedExtents(volumeId: string, base: number, target: number, q: ExtentQuery): ByteExtent[] {
    return this.engine.own(volumeId).changedExtents(base, target, {
      startingOffset: q.startingOffset,
      maxResults: q.maxResults,
    });
  }

  async readSnapshot(volumeId: string, engineSnapshotId: number, offset: number, into: Uint8Array): Promise<void> {
    await this.engine.own(volumeId).readSnapshotInto(engineSnapshotId, offset, into);
  }

  // ----- live content (node agent: in-place restore and refresh, csi/src/agent/content-port.ts) ------------

  blockSize(volumeId: string): number {
    return this.engine.content(volumeId).blockSize;
  }

  liveAllocatedExtents(volumeId: string, q: ExtentQuery): ByteExtent[] {
    return this.engine.content(volumeId).allocatedExtents(q.startingOffset, q.maxResults);
  }

  async readLive(volumeId: string, offset: number, into: Uint8Array): Promise<void> {
    await this.engine.content(volumeId).read(offset, into);
  }

  async writeLive(volumeId: string, offset: number, data: Uint8Array): Promise<void> {
    await this.engine.content(volumeId).write(offset, data);
  }

  async discardLive(volumeId: string, offset: number, length: number): Promise<void> {
    await this.engine.content(volumeId).discard(offset, length);
  }

  async flushLive(volumeId: string): Promise<void> {
    await this.engine.content(volumeId).flush();
  }

  // ----- data path --------------------------------------------------------------------------------------

  async attachVolume(volumeId: string): Promise<LoopDevice> {
    if (!this.datapath.views().includes(volumeId)) this.expose(volumeId);
    try {
      return await this.datapath.attach(volumeId);
    } catch (err) {
      await this.datapath.unexpose(volumeId).catch(() => undefined);
      throw err;
    }
  }

  private expose(volumeId: string): void {
    if (this.datapath.views().includes(volumeId)) return;
    const kind = this.engine.backing(volumeId);
    if (kind === 'hydrating') {
      const view = this.engine.hydrateView(volumeId)!;
      this.datapath.exposeRw(volumeId, volumeId, {
        get sizeBytes() {
          return view.sizeBytes;
        },
        blockSize: view.blockSize,
        read: (o, into) => view.read(o, into),
        write: (o, d) => view.write(o, d),
        discard: (o, n) => view.discard(o, n),
        flush: () => view.flush(),
      });
      return;
    }
    const ref = this.engine.rwRef(volumeId);
    if (ref !== undefined) {
      const base = this.engine.engine(ref.store, ref.baseId)!;
      this.datapath.exposeRw(volumeId, ref.baseId, rwPort(base, ref.rwId));
      return;
    }
    const v = this.engine.own(volumeId);
    this.datapath.exposeLive(
      volumeId,
      volumeId,
      livePort(v, join(this.opts.stateDir, 'volumes', volumeId, 'clone.img')),
    );
  }

  async detachVolume(volumeId: string): Promise<void> {
    await this.datapath.detach(volumeId);
    await this.datapath.unexpose(volumeId);
    if (this.engine.backing(volumeId) !== undefined) await this.engine.content(volumeId).flush();
  }

  async attachedDevice(volumeId: string): Promise<LoopDevice | undefined> {
    if (!this.datapath.views().includes(volumeId)) return undefined;
    return loopForFile(this.datapath.pathOf(volumeId), this.datapath.mountDevice);
  }

  async condition(volumeId: string): Promise<VolumeCondition> {
    const kind = this.engine.backing(volumeId);
    if (kind === undefined) {
      const why = this.engine.openFailure(volumeId);
      return {
        abnormal: true,
        message: why === undefined ? 'the engine volume is missing' : `the engine volume failed to open: ${why}`,
      };
    }
    let invalid = 0;
    let outOfSpace = false;
    try {
      if (kind === 'volume') {
        const v = this.engine.own(volumeId);
        v.allocatedExtents('live', { maxResults: 1 });
        const s = v.stats();
        invalid = s.invalidSnapshotCount;
        outOfSpace = s.outOfSpace;
      } else {
        this.engine.content(volumeId).allocatedExtents(0, 1);
        const ref = this.engine.rwRef(volumeId);
        if (ref !== undefined && !this.engine.engine(ref.store, ref.baseId)!.getRw(ref.rwId).valid) {
          return { abnormal: true, message: 'the snapshot this thin clone is based on lost data (save pool full)' };
        }
      }
    } catch (err) {
      return { abnormal: true, message: `engine: ${(err as Error).message}` };
    }
    if (this.datapath.views().includes(volumeId)) {
      const path = this.datapath.pathOf(volumeId);
      if (!(await isReachable(path))) return { abnormal: true, message: `data path: ${path} is not reachable` };
      const loop = await loopForFile(path, this.datapath.mountDevice);
      if (!loop || !(await describeLoop(loop.device))) {
        return { abnormal: true, message: `data path: no loop device on ${path}` };
      }
    }
    if (outOfSpace) {
      return {
        abnormal: true,
        message:
          'writes fail with ENOSPC: the save pool is full and only snapshots that thin clones, restores or copies depend on need the space (they are never invalidated); delete snapshots or dependants, hydrate the clones, or raise --save-quota-bytes',
      };
    }
    if (invalid > 0) {
      return { abnormal: false, message: `${invalid} snapshot(s) invalidated by a full save pool` };
    }
    if (kind === 'hydrating') return { abnormal: false, message: 'volume is healthy (hydrating)' };
    return { abnormal: false, message: 'volume is healthy' };
  }

  // ----- node -------------------------------------------------------------------------------------------

  async availableBytes(): Promise<number> {
    const s = await statfs(this.opts.stateDir);
    return s.bavail * s.bsize;
  }

  volumeSamples(): VolumeGaugeSample[] {
    const out: VolumeGaugeSample[] = [];
    for (const [volumeId, v] of this.engine.openVolumes()) {
      if (v.isClosed) continue;
      const s = v.stats();
      out.push({
        volumeId,
        savePoolUsedBytes: s.savePoolUsedBytes,
        savePoolSizeBytes: s.savePoolSizeBytes,
        snapshots: s.snapshotCount,
        invalidSnapshots: s.invalidSnapshotCount,
        cowCopiesTotal: s.cowCopiesTotal,
        sizeBytes: s.sizeBytes,
        writesRefusedTotal: s.writesRefusedTotal,
        snapshotsSacrificedTotal: s.snapshotsSacrificedTotal,
        outOfSpace: s.outOfSpace,
      });
    }
    return out;
  }

  jobSamples(): JobSample[] {
    return this.engine.jobSamples();
  }

  healthy(): boolean {
    return !this.closed;
  }

  /** Why the data path cannot serve any volume (its FUSE mount is gone), or undefined. */
  dataPathProblem(): Promise<string | undefined> {
    return this.datapath.mountProblem();
  }

  /**
   * Stops the background jobs and the data path, then closes every volume (flush + checkpoint; the flush also
   * covers the workers' direct writes to clone.img). Callers detach volumes first (NodeService.teardownAll); a
   * view still held open by a busy mount is cut off (lazy unmount, aborted connection): its file system fails
   * with EIO.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const errors: unknown[] = [];
    await this.engine.scheduler.close();
    const attached = this.datapath.views();
    if (attached.length > 0) {
      this.log.warn({ views: attached }, 'Stopping with attached volumes; their file systems will fail with EIO');
    }
    await this.datapath.stop({ force: attached.length > 0 }).catch((err: unknown) => {
      errors.push(err);
      this.log.error({ err }, 'Failed to stop the data path');
    });
    errors.push(...(await this.engine.close()));
    if (errors.length > 0) throw new AggregateError(errors, 'closing the storage backend failed');
  }

  private ownOrUndefined(volumeId: string): SnapshotVolume | undefined {
    return this.engine.backing(volumeId) === 'volume' ? this.engine.own(volumeId) : undefined;
  }

  private cut<T>(fn: () => Promise<T>, mountpoint: string | undefined): Promise<T> {
    return this.datapath.cut(fn, mountpoint === undefined ? {} : { mountpoint });
  }
}

export function toSnapshot(info: SnapshotInfo): EngineSnapshot {
  return {
    engineSnapshotId: info.id,
    method: info.method,
    state: info.state === 'invalid' ? 'invalid' : 'valid',
    tag: info.tag,
    createdAt: info.createdAt,
    sizeBytes: info.sizeBytes,
    hidden: info.hidden,
  };
}
