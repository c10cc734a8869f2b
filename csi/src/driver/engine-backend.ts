// SPDX-License-Identifier: Apache-2.0
// VolumeBackend on the real parts: engine volumes in the file store (csi/src/store/volume-store.ts, one
// SnapshotVolume per CSI volume, opened with shared arrays for the data-path workers), and the data path
// (csi/src/frontend/datapath.ts: FUSE mount at <stateDir>/fuse, one live view per attached volume named
// after the volume id, a loop device on it).
//
// Invariants: a volume is open in the engine for as long as its record exists (opened at start); its live
// view exists exactly while a loop device is attached to it (attachVolume/detachVolume); a volume with an
// attached view is never closed or deleted (deleteVolume refuses).
import { statfs } from 'node:fs/promises';
import { join } from 'node:path';
import type { Registry } from 'prom-client';
import type { Logger } from '../../../common/src/log.js';
import type { SnapshotInfo, SnapshotVolume } from '../engine/volume.js';
import { Datapath, type LiveVolumePort } from '../frontend/datapath.js';
import { isReachable } from '../frontend/fuse-mount.js';
import { describeLoop, type LoopDevice, loopForFile } from '../mount/loop-device.js';
import { VolumeStore } from '../store/volume-store.js';
import { CsiError } from '../errors.js';
import type { JobSample, VolumeGaugeSample } from '../metrics.js';
import type {
  BackendFeatures,
  ByteExtent,
  EngineSnapshot,
  EngineSnapshotMethod,
  ExtentQuery,
  VolumeBackend,
  VolumeCondition,
} from './backend.js';

/** Copy unit of full-copy restores (the FUSE/loop maximum request size). */
const COPY_CHUNK_BYTES = 1024 * 1024;

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
}

export class EngineBackend implements VolumeBackend {
  readonly features: BackendFeatures = { rwClones: false, cloneImages: false, onlineResize: false };
  private readonly volumes = new Map<string, SnapshotVolume>();
  private closed = false;

  private constructor(
    private readonly opts: EngineBackendOptions,
    private readonly store: VolumeStore,
    private readonly datapath: Datapath,
    private readonly log: Logger,
  ) {}

  get blockSizeBytes(): number {
    return this.opts.blockSizeBytes;
  }

  /**
   * Cleans up what a dead predecessor left in the data path, mounts FUSE, clears half-made store entries,
   * and opens the volumes in `volumeIds` (the driver's records). Engine volumes without a record are
   * reported, not deleted: the driver's recovery decides.
   */
  static async start(opts: EngineBackendOptions, volumeIds: readonly string[]): Promise<EngineBackend> {
    const log = opts.log.child({ component: 'backend' });
    const datapath = await Datapath.start({
      stateDir: opts.stateDir,
      log: opts.log,
      workers: opts.workers,
      ...(opts.registry === undefined ? {} : { registry: opts.registry }),
      ...(opts.directIo === undefined ? {} : { directIo: opts.directIo }),
    });
    const backend = new EngineBackend(opts, new VolumeStore(opts.stateDir), datapath, log);
    try {
      const leftovers = backend.store.recover();
      if (leftovers.length > 0) log.warn({ leftovers }, 'Removed half-created or half-deleted engine volumes');
      for (const id of volumeIds) {
        if (!backend.store.list().includes(id)) continue;
        backend.volumes.set(id, await backend.store.openVolume(id, { shared: true }));
      }
    } catch (err) {
      await backend.close().catch(() => undefined);
      throw err;
    }
    log.info({ volumes: backend.volumes.size, cleanup: datapath.cleanup }, 'Started storage backend');
    return backend;
  }

  /** Engine volume ids present on disk (including ones the driver has no record of). */
  storedVolumeIds(): string[] {
    return this.store.list();
  }

  // ----- volumes ----------------------------------------------------------------------------------------

  async createVolume(volumeId: string, sizeBytes: number): Promise<void> {
    const volume = await this.store.create(volumeId, {
      sizeBytes,
      blockSize: this.opts.blockSizeBytes,
      granuleBlocks: this.opts.granuleBlocks,
      saveQuotaBytes: this.opts.saveQuotaBytes,
      shared: true,
    });
    this.volumes.set(volumeId, volume);
  }

  async deleteVolume(volumeId: string): Promise<void> {
    if (this.datapath.views().includes(volumeId)) {
      throw new CsiError('CSI_ERR_IN_USE', `volume ${volumeId} is attached to a loop device; unstage it first`);
    }
    const v = this.volumes.get(volumeId);
    if (v) {
      await v.close();
      this.volumes.delete(volumeId);
    }
    await this.store.delete(volumeId);
  }

  hasVolume(volumeId: string): boolean {
    return this.volumes.has(volumeId);
  }

  volumeSizeBytes(volumeId: string): number {
    return this.vol(volumeId).sizeBytes;
  }

  async resizeVolume(volumeId: string, sizeBytes: number): Promise<void> {
    await this.vol(volumeId).resize(sizeBytes);
  }

  // ----- snapshots --------------------------------------------------------------------------------------

  async createSnapshot(
    volumeId: string,
    opts: { method: EngineSnapshotMethod; tag: string; mountpoint?: string },
  ): Promise<EngineSnapshot> {
    const v = this.vol(volumeId);
    const cut = (): Promise<SnapshotInfo> => v.createSnapshot({ method: opts.method, tag: opts.tag });
    const info = await this.datapath.cut(cut, opts.mountpoint === undefined ? {} : { mountpoint: opts.mountpoint });
    return toSnapshot(info);
  }

  getSnapshot(volumeId: string, engineSnapshotId: number): EngineSnapshot | undefined {
    const v = this.volumes.get(volumeId);
    const info = v?.listSnapshots().find((s) => s.id === engineSnapshotId);
    return info === undefined ? undefined : toSnapshot(info);
  }

  findSnapshotByTag(volumeId: string, tag: string): EngineSnapshot | undefined {
    const info = this.volumes.get(volumeId)?.findSnapshotByTag(tag);
    return info === undefined ? undefined : toSnapshot(info);
  }

  listSnapshots(volumeId: string): EngineSnapshot[] {
    return (this.volumes.get(volumeId)?.listSnapshots() ?? []).map(toSnapshot);
  }

  async deleteSnapshot(volumeId: string, engineSnapshotId: number): Promise<void> {
    const v = this.volumes.get(volumeId);
    if (!v || !v.listSnapshots().some((s) => s.id === engineSnapshotId)) return;
    await v.deleteSnapshot(engineSnapshotId);
  }

  allocatedExtents(volumeId: string, engineSnapshotId: number, q: ExtentQuery): ByteExtent[] {
    return this.vol(volumeId).allocatedExtents(engineSnapshotId, {
      startingOffset: q.startingOffset,
      maxResults: q.maxResults,
    });
  }

  changedExtents(volumeId: string, base: number, target: number, q: ExtentQuery): ByteExtent[] {
    return this.vol(volumeId).changedExtents(base, target, {
      startingOffset: q.startingOffset,
      maxResults: q.maxResults,
    });
  }

  async readSnapshot(volumeId: string, engineSnapshotId: number, offset: number, into: Uint8Array): Promise<void> {
    await this.vol(volumeId).readSnapshotInto(engineSnapshotId, offset, into);
  }

  async copySnapshotInto(
    src: { volumeId: string; engineSnapshotId: number },
    dstVolumeId: string,
    signal?: AbortSignal,
  ): Promise<{ copiedBytes: number }> {
    const from = this.vol(src.volumeId);
    const to = this.vol(dstVolumeId);
    const release = from.pinSnapshot(src.engineSnapshotId);
    let copied = 0;
    try {
      let offset = 0;
      for (;;) {
        const batch = from.allocatedExtents(src.engineSnapshotId, { startingOffset: offset, maxResults: 256 });
        if (batch.length === 0) break;
        for (const e of batch) {
          const start = Math.max(e.offset, offset);
          for (let pos = start; pos < e.offset + e.length; pos += COPY_CHUNK_BYTES) {
            if (signal?.aborted) throw new CsiError('CSI_ERR_BUSY', 'copy cancelled by the client');
            const len = Math.min(COPY_CHUNK_BYTES, e.offset + e.length - pos);
            const buf = new Uint8Array(len);
            await from.readSnapshotInto(src.engineSnapshotId, pos, buf);
            if (!isZero(buf)) await to.write(pos, buf);
            copied += len;
          }
          offset = e.offset + e.length;
        }
      }
      await to.flush();
    } finally {
      release();
    }
    return { copiedBytes: copied };
  }

  // ----- live content (node agent: in-place restore and refresh, csi/src/agent/content-port.ts) ------------

  blockSize(volumeId: string): number {
    return this.vol(volumeId).blockSize;
  }

  liveAllocatedExtents(volumeId: string, q: ExtentQuery): ByteExtent[] {
    return this.vol(volumeId).allocatedExtents('live', { startingOffset: q.startingOffset, maxResults: q.maxResults });
  }

  async readLive(volumeId: string, offset: number, into: Uint8Array): Promise<void> {
    await this.vol(volumeId).readInto(offset, into);
  }

  async writeLive(volumeId: string, offset: number, data: Uint8Array): Promise<void> {
    await this.vol(volumeId).write(offset, data);
  }

  async discardLive(volumeId: string, offset: number, length: number): Promise<void> {
    await this.vol(volumeId).discard(offset, length);
  }

  async flushLive(volumeId: string): Promise<void> {
    await this.vol(volumeId).flush();
  }

  // ----- data path --------------------------------------------------------------------------------------

  async attachVolume(volumeId: string): Promise<LoopDevice> {
    const v = this.vol(volumeId);
    if (!this.datapath.views().includes(volumeId)) {
      this.datapath.exposeLive(volumeId, volumeId, livePort(v, this.clonePath(volumeId)));
    }
    try {
      return await this.datapath.attach(volumeId);
    } catch (err) {
      await this.datapath.unexpose(volumeId).catch(() => undefined);
      throw err;
    }
  }

  async detachVolume(volumeId: string): Promise<void> {
    await this.datapath.detach(volumeId);
    await this.datapath.unexpose(volumeId);
    await this.volumes.get(volumeId)?.flush();
  }

  async attachedDevice(volumeId: string): Promise<LoopDevice | undefined> {
    if (!this.datapath.views().includes(volumeId)) return undefined;
    return loopForFile(this.datapath.pathOf(volumeId));
  }

  async condition(volumeId: string): Promise<VolumeCondition> {
    const v = this.volumes.get(volumeId);
    if (!v) return { abnormal: true, message: 'the engine volume is missing' };
    try {
      v.allocatedExtents('live', { maxResults: 1 });
    } catch (err) {
      return { abnormal: true, message: `engine: ${(err as Error).message}` };
    }
    const invalid = v.stats().invalidSnapshotCount;
    if (this.datapath.views().includes(volumeId)) {
      const path = this.datapath.pathOf(volumeId);
      if (!(await isReachable(path))) return { abnormal: true, message: `data path: ${path} is not reachable` };
      const loop = await loopForFile(path);
      if (!loop || !(await describeLoop(loop.device))) {
        return { abnormal: true, message: `data path: no loop device on ${path}` };
      }
    }
    if (invalid > 0) {
      return { abnormal: false, message: `${invalid} snapshot(s) invalidated by a full save pool` };
    }
    return { abnormal: false, message: 'volume is healthy' };
  }

  // ----- node -------------------------------------------------------------------------------------------

  async availableBytes(): Promise<number> {
    const s = await statfs(this.opts.stateDir);
    return s.bavail * s.bsize;
  }

  volumeSamples(): VolumeGaugeSample[] {
    const out: VolumeGaugeSample[] = [];
    for (const [volumeId, v] of this.volumes) {
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
      });
    }
    return out;
  }

  jobSamples(): JobSample[] {
    return [];
  }

  healthy(): boolean {
    return !this.closed;
  }

  /**
   * Stops the data path, then closes every volume (flush + checkpoint; the flush also covers the workers'
   * direct writes to clone.img). Callers detach volumes first (NodeService.teardownAll); a view still held
   * open by a busy mount is cut off (lazy unmount, aborted connection): its file system fails with EIO.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const errors: unknown[] = [];
    const attached = this.datapath.views();
    if (attached.length > 0) {
      this.log.warn({ views: attached }, 'Stopping with attached volumes; their file systems will fail with EIO');
    }
    await this.datapath.stop({ force: attached.length > 0 }).catch((err: unknown) => {
      errors.push(err);
      this.log.error({ err }, 'Failed to stop the data path');
    });
    for (const [id, v] of this.volumes) {
      await v.close().catch((err: unknown) => {
        errors.push(err);
        this.log.error({ err, volumeId: id }, 'Failed to close engine volume');
      });
    }
    this.volumes.clear();
    if (errors.length > 0) throw new AggregateError(errors, 'closing the storage backend failed');
  }

  private vol(volumeId: string): SnapshotVolume {
    const v = this.volumes.get(volumeId);
    if (!v) throw new CsiError('CSI_ERR_VOLUME_NOT_FOUND', `engine volume ${volumeId} is not open`);
    return v;
  }

  private clonePath(volumeId: string): string {
    return join(this.store.volumeDir(volumeId), 'clone.img');
  }
}

/** The data path's view port of a volume's live view (pread/pwrite of clone.img on the fast path). */
function livePort(volume: SnapshotVolume, clonePath: string): LiveVolumePort {
  return {
    get sizeBytes() {
      return volume.sizeBytes;
    },
    blockSize: volume.blockSize,
    clonePath,
    fastPath: () => volume.sharedState(),
    read: (offset, into) => volume.readInto(offset, into),
    write: (offset, data) => volume.write(offset, data),
    discard: (offset, length) => volume.discard(offset, length),
    flush: () => volume.flush(),
  };
}

function toSnapshot(info: SnapshotInfo): EngineSnapshot {
  return {
    engineSnapshotId: info.id,
    method: info.method,
    state: info.state === 'invalid' ? 'invalid' : 'valid',
    tag: info.tag,
    createdAt: info.createdAt,
    sizeBytes: info.sizeBytes,
  };
}

function isZero(buf: Uint8Array): boolean {
  for (let i = 0; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}
