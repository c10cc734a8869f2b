// SPDX-License-Identifier: Apache-2.0
// What backs each CSI volume in the engine, and the engine-side half of every driver operation that issue 4
// added (thin clones, clone-method images, hydration, in-place restore, refresh, retirement). Shared by the
// real backend (engine-backend.ts: file stores + data path) and the in-memory test backend; it does no
// data-path work itself.
//
// Backing of a CSI volume id:
//   volume     an engine volume of its own in the `volumes` store (id = CSI volume id)
//   rw         an RW snapshot tagged with the CSI volume id in a base engine volume: another CSI volume (or a
//              retired one) of the `volumes` store, or a clone-method image of the `images` store
//   hydrating  such an RW snapshot being copied into an engine volume of its own (id = CSI volume id), served
//              meanwhile by a hydrating view (jobs/hydrate-view.ts); it becomes `volume` when the copy ends
// Discovery at start: every stored engine volume is opened; RW snapshots are found by their tags; a volume of
// the `volumes` store carrying `hydrate.*` attributes is a hydration target; `csi.retired` marks a volume (or
// image) whose CSI object was deleted while RW clones still read it: it is deleted with its last RW clone.
// A clone-method image carries `image.*` attributes (source volume and internal cut) until its copy ended.
// Background jobs (restore, image copy, hydration) run under one JobScheduler and resume by themselves here.
import type { Logger } from '../../../common/src/log.js';
import type { CreateVolumeOptions, Extent, SnapshotVolume } from '../engine/volume.js';
import { CsiError } from '../errors.js';
import { rwSource, snapshotSource } from '../jobs/copy-source.js';
import { type CopySource, ExtentCopyJob } from '../jobs/extent-copy.js';
import { HydrateView } from '../jobs/hydrate-view.js';
import { RestoreJob } from '../jobs/restore-job.js';
import { JobScheduler, type SchedulerOptions } from '../jobs/scheduler.js';
import type { JobSample } from '../metrics.js';

export type StoreKind = 'volumes' | 'images';

/** Creates, opens and removes engine volumes (file stores in production, memory in unit tests). */
export interface VolumeFactory {
  create(store: StoreKind, id: string, options: CreateVolumeOptions): Promise<SnapshotVolume>;
  open(store: StoreKind, id: string): Promise<SnapshotVolume>;
  /** Removes a closed volume; missing is not an error. */
  remove(store: StoreKind, id: string): Promise<void>;
  list(store: StoreKind): string[];
}

export interface EngineVolumesOptions {
  readonly blockSizeBytes: number;
  readonly granuleBlocks: number;
  readonly saveQuotaBytes: number | null;
  readonly log: Logger;
  readonly scheduler?: SchedulerOptions;
}

/** Read/write access to whatever backs a CSI volume. */
export interface VolumeContent {
  readonly blockSize: number;
  readonly sizeBytes: number;
  read(offset: number, into: Uint8Array): Promise<void>;
  write(offset: number, data: Uint8Array): Promise<void>;
  discard(offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
  allocatedExtents(startingOffset: number, maxResults: number): Extent[];
}

export type BackingKind = 'volume' | 'rw' | 'hydrating';

/** The source of a thin clone: a snapshot in a CSI volume's queue, or a clone-method image. */
export type CloneSource = { volumeId: string; engineSnapshotId: number } | { imageId: string };

export interface RwRef {
  readonly store: StoreKind;
  readonly baseId: string;
  readonly rwId: number;
}

interface Hydration {
  readonly ref: RwRef;
  readonly target: SnapshotVolume;
  readonly view: HydrateView;
  readonly source: CopySource;
  readonly job: ExtentCopyJob;
}

/** Notified when a background job finished its work durably (drivers update their records). */
export type JobDoneListener = (kind: 'hydrate' | 'clone' | 'restore', id: string) => Promise<void>;

export const IMAGE_BASE_TAG = 'image-base';
export const CLONE_CUT_TAG_PREFIX = 'clone-cut:';
const ATTR_RETIRED = 'csi.retired';
const ATTR_IMAGE_VOLUME = 'image.source-volume';
const ATTR_IMAGE_SNAPSHOT = 'image.source-snapshot';
const ATTR_HYDRATE_STORE = 'hydrate.base-store';
const ATTR_HYDRATE_BASE = 'hydrate.base-volume';
const ATTR_HYDRATE_RW = 'hydrate.rw';

export class EngineVolumes {
  readonly scheduler: JobScheduler;
  private readonly vols = { volumes: new Map<string, SnapshotVolume>(), images: new Map<string, SnapshotVolume>() };
  private readonly rws = new Map<string, RwRef>();
  private readonly hydrations = new Map<string, Hydration>();
  private readonly imageJobs = new Map<string, { job: ExtentCopyJob; source: CopySource }>();
  /** Engine volumes that failed to open at start (damaged, or no space to recover): id -> why. */
  private readonly openFailures = new Map<string, string>();
  private readonly log: Logger;
  private listener: JobDoneListener = async () => undefined;

  constructor(
    private readonly factory: VolumeFactory,
    private readonly o: EngineVolumesOptions,
  ) {
    this.log = o.log.child({ component: 'engine-volumes' });
    this.scheduler = new JobScheduler({
      ...o.scheduler,
      onError: (job, err) => this.log.error({ err, kind: job.kind, id: job.id }, 'Background job failed'),
    });
  }

  onJobDone(listener: JobDoneListener): void {
    this.listener = listener;
  }

  /** Opens every stored engine volume and image, finds the RW clones, and resumes unfinished jobs. */
  async start(): Promise<void> {
    // Opened in parallel (a takeover waits for all of them), kept in listing order.
    for (const store of ['volumes', 'images'] as const) {
      const ids = this.factory.list(store);
      const opened = await Promise.all(
        ids.map((id) =>
          this.factory.open(store, id).catch((err: unknown) => {
            // The plugin starts anyway and serves every other volume; this one reports abnormal (issue 15).
            this.log.error({ err, store, id }, 'Failed to open an engine volume; leaving it alone');
            this.openFailures.set(id, (err as Error).message);
            return undefined;
          }),
        ),
      );
      ids.forEach((id, i) => {
        const v = opened[i];
        if (v !== undefined) this.vols[store].set(id, v);
      });
    }
    for (const store of ['volumes', 'images'] as const) {
      for (const [id, vol] of this.vols[store]) {
        for (const rw of vol.listRws()) this.rws.set(rw.tag, { store, baseId: id, rwId: rw.id });
      }
    }
    for (const [id, vol] of this.vols.volumes) {
      if (vol.getAttribute(ATTR_HYDRATE_RW) !== undefined) await this.resumeHydration(id, vol);
      if (vol.restoreStatus() !== null) this.submitRestore(id, vol);
    }
    for (const [id, img] of this.vols.images) {
      if (img.getAttribute(ATTR_IMAGE_VOLUME) !== undefined) await this.resumeImage(id, img);
    }
    for (const store of ['volumes', 'images'] as const) {
      for (const id of [...this.vols[store].keys()]) await this.collectRetired(store, id);
    }
  }

  // ----- lookups ----------------------------------------------------------------------------------------

  backing(volumeId: string): BackingKind | undefined {
    if (this.hydrations.has(volumeId)) return 'hydrating';
    if (this.rws.has(volumeId)) return 'rw';
    const v = this.vols.volumes.get(volumeId);
    if (v !== undefined && v.getAttribute(ATTR_RETIRED) === undefined) return 'volume';
    return undefined;
  }

  /** The engine volume of a CSI volume that has its own (NOT_FOUND otherwise). */
  own(volumeId: string): SnapshotVolume {
    const v = this.backing(volumeId) === 'volume' ? this.vols.volumes.get(volumeId) : undefined;
    if (v === undefined) {
      if (this.rws.has(volumeId)) {
        throw new CsiError(
          'CSI_ERR_THIN_CLONE',
          `volume ${volumeId} is a thin clone (an RW snapshot of ${this.rws.get(volumeId)!.baseId}); it has no snapshot queue of its own: create it with StorageClass parameter hydrate: "true", or wait for its hydration`,
        );
      }
      throw new CsiError('CSI_ERR_VOLUME_NOT_FOUND', `engine volume ${volumeId} is not open`);
    }
    return v;
  }

  /** Why the engine volume of `id` could not be opened at start, if it could not. */
  openFailure(id: string): string | undefined {
    return this.openFailures.get(id);
  }

  /** Every engine volume or image that could not be opened at start, with why. */
  unopened(): { volumeId: string; reason: string }[] {
    return [...this.openFailures].map(([volumeId, reason]) => ({ volumeId, reason }));
  }

  /** Engine volume by store and id (images included), if open. */
  engine(store: StoreKind, id: string): SnapshotVolume | undefined {
    return this.vols[store].get(id);
  }

  rwRef(volumeId: string): RwRef | undefined {
    return this.rws.get(volumeId);
  }

  /** Ids of CSI volumes that are RW clones of engine volume `baseId` (of `store`). */
  rwClonesOf(store: StoreKind, baseId: string): string[] {
    const out: string[] = [];
    for (const [id, r] of this.rws) if (r.store === store && r.baseId === baseId) out.push(id);
    return out.sort();
  }

  /** Every stored engine volume id (the `volumes` store), for the driver's orphan report. */
  storedVolumeIds(): string[] {
    return [...this.vols.volumes.keys()].filter(
      (id) => this.vols.volumes.get(id)!.getAttribute(ATTR_RETIRED) === undefined && !this.hydrations.has(id),
    );
  }

  openVolumes(): [string, SnapshotVolume][] {
    return [...this.vols.volumes].filter(([id]) => this.backing(id) === 'volume');
  }

  content(volumeId: string): VolumeContent {
    const h = this.hydrations.get(volumeId);
    if (h !== undefined) {
      const src = h.source;
      return {
        blockSize: h.target.blockSize,
        get sizeBytes() {
          return h.target.sizeBytes;
        },
        read: (o, into) => h.view.read(o, into),
        write: (o, d) => h.view.write(o, d),
        discard: (o, n) => h.view.discard(o, n),
        flush: () => h.view.flush(),
        allocatedExtents: (start, max) =>
          h.view.isSwitched
            ? h.target.allocatedExtents('live', { startingOffset: start, maxResults: max })
            : mergeExtents(
                h.target.allocatedExtents('live', { startingOffset: start }),
                src.allocatedExtents(start, Number.MAX_SAFE_INTEGER),
                max,
              ),
      };
    }
    const r = this.rws.get(volumeId);
    if (r !== undefined) {
      const base = this.baseOf(r);
      const rwId = r.rwId;
      return {
        blockSize: base.blockSize,
        get sizeBytes() {
          return base.getRw(rwId).sizeBytes;
        },
        read: (o, into) => base.readRwInto(rwId, o, into),
        write: (o, d) => base.writeRw(rwId, o, d),
        discard: (o, n) => base.discardRw(rwId, o, n),
        flush: () => base.flush(),
        allocatedExtents: (start, max) => base.allocatedRwExtents(rwId, { startingOffset: start, maxResults: max }),
      };
    }
    const v = this.own(volumeId);
    return {
      blockSize: v.blockSize,
      get sizeBytes() {
        return v.sizeBytes;
      },
      read: (o, into) => v.readInto(o, into),
      write: (o, d) => v.write(o, d),
      discard: (o, n) => v.discard(o, n),
      flush: () => v.flush(),
      allocatedExtents: (start, max) => v.allocatedExtents('live', { startingOffset: start, maxResults: max }),
    };
  }

  // ----- volumes ----------------------------------------------------------------------------------------

  async createVolume(volumeId: string, sizeBytes: number): Promise<void> {
    const v = await this.factory.create('volumes', volumeId, this.volumeOptions(sizeBytes));
    this.vols.volumes.set(volumeId, v);
  }

  /** OP-7: `volumeId` becomes a thin RW snapshot of a snapshot or of a clone-method image. */
  async createRwClone(volumeId: string, source: CloneSource, sizeBytes: number): Promise<void> {
    this.checkNew(volumeId);
    if ('imageId' in source) {
      const img = this.vols.images.get(source.imageId);
      const base = img?.findSnapshotByTag(IMAGE_BASE_TAG);
      if (img === undefined || base === undefined) {
        throw new CsiError('CSI_ERR_NOT_READY', `the image of snapshot ${source.imageId} is not complete yet`);
      }
      const rw = await img.createRw(base.id, { tag: volumeId, sizeBytes });
      this.rws.set(volumeId, { store: 'images', baseId: source.imageId, rwId: rw.id });
      return;
    }
    const v = this.own(source.volumeId);
    const rw = await v.createRw(source.engineSnapshotId, { tag: volumeId, sizeBytes });
    this.rws.set(volumeId, { store: 'volumes', baseId: source.volumeId, rwId: rw.id });
  }

  /** Hidden RO snapshot + RW snapshot of a live volume in one commit; `cut` wraps it (fsfreeze). */
  async cloneLive(
    volumeId: string,
    sourceVolumeId: string,
    sizeBytes: number,
    cut: <T>(fn: () => Promise<T>) => Promise<T>,
  ): Promise<number> {
    this.checkNew(volumeId);
    const v = this.own(sourceVolumeId);
    const { snapshot, rw } = await cut(() => v.cloneLive({ tag: volumeId, sizeBytes }));
    this.rws.set(volumeId, { store: 'volumes', baseId: sourceVolumeId, rwId: rw.id });
    return snapshot.id;
  }

  /**
   * Deletes the storage of a CSI volume: an RW clone (its hydration cancelled), or a volume of its own. A
   * volume of its own that RW clones still read is retired instead (its engine volume stays, hidden, until
   * the last of them goes); returns what happened.
   */
  async deleteVolume(volumeId: string): Promise<'deleted' | 'retired' | 'absent'> {
    const h = this.hydrations.get(volumeId);
    if (h !== undefined) {
      await this.scheduler.cancel('hydrate', volumeId);
      h.source.release();
      this.hydrations.delete(volumeId);
      await h.target.close();
      this.vols.volumes.delete(volumeId);
      await this.factory.remove('volumes', volumeId);
    }
    const r = this.rws.get(volumeId);
    if (r !== undefined) {
      await this.baseOf(r).deleteRw(r.rwId);
      this.rws.delete(volumeId);
      await this.collectRetired(r.store, r.baseId);
      return 'deleted';
    }
    const v = this.vols.volumes.get(volumeId);
    if (v === undefined) {
      await this.factory.remove('volumes', volumeId);
      return 'absent';
    }
    if (this.rwClonesOf('volumes', volumeId).length > 0) {
      await v.setAttribute(ATTR_RETIRED, '1');
      return 'retired';
    }
    await this.scheduler.cancel('restore', volumeId);
    await v.close();
    this.vols.volumes.delete(volumeId);
    await this.factory.remove('volumes', volumeId);
    return 'deleted';
  }

  /**
   * Grows the storage of a CSI volume (never shrinks: ENGINE_SHRINK_UNSUPPORTED); online or not, the engine
   * does not care. A thin clone grows its RW snapshot (the new blocks read as zeros; its base is untouched).
   * Refused with CSI_ERR_IN_USE (FAILED_PRECONDITION: retry later) while a background copy works on a fixed
   * range: a hydration of the volume, an in-place restore of it, or a restore of its base from this thin clone.
   */
  async resizeVolume(volumeId: string, sizeBytes: number): Promise<void> {
    if (this.hydrations.has(volumeId)) {
      throw new CsiError('CSI_ERR_IN_USE', `volume ${volumeId} is being hydrated; expand it when the copy ended`);
    }
    const r = this.rws.get(volumeId);
    if (r !== undefined) {
      const base = this.baseOf(r);
      const rs = base.restoreStatus();
      if (rs?.source.kind === 'rw' && rs.source.id === r.rwId) {
        throw new CsiError(
          'CSI_ERR_IN_USE',
          `thin clone ${volumeId} is the source of the running in-place restore of volume ${r.baseId} (${rs.doneBytes} of ${rs.totalBytes} bytes copied); expand it when the restore completed`,
        );
      }
      await base.resizeRw(r.rwId, sizeBytes);
      return;
    }
    const v = this.own(volumeId);
    const rs = v.restoreStatus();
    if (rs !== null && sizeBytes !== v.sizeBytes) {
      throw new CsiError(
        'CSI_ERR_IN_USE',
        `volume ${volumeId} is being restored in place (${rs.doneBytes} of ${rs.totalBytes} bytes copied); expand it when the restore completed`,
      );
    }
    await v.resize(sizeBytes);
  }

  // ----- snapshots --------------------------------------------------------------------------------------

  /** Deletes a snapshot, deferred while thin clones or a restore still need it (EC-8). */
  async deleteSnapshot(volumeId: string, engineSnapshotId: number): Promise<void> {
    const v = this.vols.volumes.get(volumeId);
    if (!v || !v.listSnapshots().some((s) => s.id === engineSnapshotId)) return;
    await v.deleteSnapshot(engineSnapshotId, { whenUnpinned: true });
  }

  // ----- clone-method images ------------------------------------------------------------------------------

  /**
   * A clone-method snapshot: a hidden cut of `volumeId` (inside `cut`, e.g. frozen), an image volume, and
   * the background copy. Returns the engine id of the cut. The image becomes usable when the job is done.
   */
  async createImage(
    snapshotId: string,
    volumeId: string,
    cut: <T>(fn: () => Promise<T>) => Promise<T>,
  ): Promise<{ engineSnapshotId: number; sizeBytes: number; createdAt: number }> {
    const v = this.own(volumeId);
    const existing = v.findSnapshotByTag(CLONE_CUT_TAG_PREFIX + snapshotId);
    const snap =
      existing ??
      (await cut(() =>
        v.createSnapshot({ method: 'meta-bitmap', tag: CLONE_CUT_TAG_PREFIX + snapshotId, hidden: true }),
      ));
    let img = this.vols.images.get(snapshotId);
    if (img === undefined) {
      await this.factory.remove('images', snapshotId);
      img = await this.factory.create('images', snapshotId, this.volumeOptions(snap.sizeBytes));
      this.vols.images.set(snapshotId, img);
    }
    await img.setAttribute(ATTR_IMAGE_VOLUME, volumeId);
    await img.setAttribute(ATTR_IMAGE_SNAPSHOT, String(snap.id));
    await this.resumeImage(snapshotId, img);
    return { engineSnapshotId: snap.id, sizeBytes: snap.sizeBytes, createdAt: snap.createdAt };
  }

  /** absent | copying (progress) | ready. */
  imageState(snapshotId: string): { state: 'absent' | 'copying' | 'ready'; doneBytes: number; totalBytes: number } {
    const img = this.vols.images.get(snapshotId);
    if (img === undefined) return { state: 'absent', doneBytes: 0, totalBytes: 0 };
    const job = this.imageJobs.get(snapshotId);
    if (job !== undefined) return { state: 'copying', ...job.job.progress() };
    const ready = img.findSnapshotByTag(IMAGE_BASE_TAG) !== undefined;
    const size = img.sizeBytes;
    return { state: ready ? 'ready' : 'copying', doneBytes: ready ? size : 0, totalBytes: size };
  }

  /** Deletes an image (cancelling its copy); retired instead while thin clones read it. */
  async deleteImage(snapshotId: string): Promise<'deleted' | 'retired' | 'absent'> {
    const img = this.vols.images.get(snapshotId);
    await this.scheduler.cancel('clone', snapshotId);
    this.imageJobs.get(snapshotId)?.source.release();
    this.imageJobs.delete(snapshotId);
    if (img === undefined) {
      await this.factory.remove('images', snapshotId);
      return 'absent';
    }
    await this.releaseCut(snapshotId, img);
    if (this.rwClonesOf('images', snapshotId).length > 0) {
      await img.setAttribute(ATTR_RETIRED, '1');
      return 'retired';
    }
    await img.close();
    this.vols.images.delete(snapshotId);
    await this.factory.remove('images', snapshotId);
    return 'deleted';
  }

  /** Image copies still reading snapshots of `volumeId` (their CSI snapshot ids). */
  imagesCopyingFrom(volumeId: string): string[] {
    const out: string[] = [];
    for (const id of this.imageJobs.keys()) {
      if (this.vols.images.get(id)?.getAttribute(ATTR_IMAGE_VOLUME) === volumeId) out.push(id);
    }
    return out;
  }

  private async resumeImage(snapshotId: string, img: SnapshotVolume): Promise<void> {
    const volumeId = img.getAttribute(ATTR_IMAGE_VOLUME)!;
    const cutId = Number(img.getAttribute(ATTR_IMAGE_SNAPSHOT));
    const src = this.vols.volumes.get(volumeId);
    if (img.findSnapshotByTag(IMAGE_BASE_TAG) !== undefined) {
      await this.finishImage(snapshotId, img);
      return;
    }
    if (src === undefined || !src.listSnapshots().some((s) => s.id === cutId)) {
      this.log.error({ snapshotId, volumeId }, 'The source of an unfinished clone-method image is gone');
      return;
    }
    const source = snapshotSource(src, cutId);
    const job = ExtentCopyJob.open({ kind: 'clone', id: snapshotId, source, target: img });
    this.imageJobs.set(snapshotId, { job, source });
    void this.scheduler.submit(job).then(
      () => this.finishImage(snapshotId, img),
      () => undefined,
    );
  }

  /** The copy ended: the image gets its base snapshot (for thin clones), the source's cut is released. */
  private async finishImage(snapshotId: string, img: SnapshotVolume): Promise<void> {
    try {
      if (img.findSnapshotByTag(IMAGE_BASE_TAG) === undefined) {
        await img.createSnapshot({ method: 'meta-bitmap', tag: IMAGE_BASE_TAG, hidden: true });
      }
      this.imageJobs.get(snapshotId)?.source.release();
      this.imageJobs.delete(snapshotId);
      await this.releaseCut(snapshotId, img);
      await this.listener('clone', snapshotId);
      this.log.info({ snapshotId }, 'Clone-method image complete');
    } catch (err) {
      this.log.error({ err, snapshotId }, 'Failed to finish a clone-method image');
    }
  }

  private async releaseCut(snapshotId: string, img: SnapshotVolume): Promise<void> {
    const volumeId = img.getAttribute(ATTR_IMAGE_VOLUME);
    if (volumeId === undefined) return;
    const src = this.vols.volumes.get(volumeId);
    const cut = src?.findSnapshotByTag(CLONE_CUT_TAG_PREFIX + snapshotId);
    if (src !== undefined && cut !== undefined) await src.deleteSnapshot(cut.id, { whenUnpinned: true });
    await img.setAttribute(ATTR_IMAGE_VOLUME, '');
    await img.setAttribute(ATTR_IMAGE_SNAPSHOT, '');
    if (src !== undefined) await this.collectRetired('volumes', volumeId);
  }

  // ----- hydration -----------------------------------------------------------------------------------------

  /** Starts turning RW clone `volumeId` into a volume of its own in the background. */
  async startHydration(volumeId: string): Promise<void> {
    if (this.hydrations.has(volumeId)) return;
    const r = this.rws.get(volumeId);
    if (r === undefined) throw new CsiError('CSI_ERR_VOLUME_NOT_FOUND', `volume ${volumeId} is not a thin clone`);
    const base = this.baseOf(r);
    const size = base.getRw(r.rwId).sizeBytes;
    let target = this.vols.volumes.get(volumeId);
    if (target === undefined) {
      await this.factory.remove('volumes', volumeId);
      target = await this.factory.create('volumes', volumeId, this.volumeOptions(size));
      this.vols.volumes.set(volumeId, target);
    }
    await target.setAttribute(ATTR_HYDRATE_STORE, r.store);
    await target.setAttribute(ATTR_HYDRATE_BASE, r.baseId);
    await target.setAttribute(ATTR_HYDRATE_RW, String(r.rwId));
    await this.resumeHydration(volumeId, target);
  }

  hydrationState(volumeId: string): { doneBytes: number; totalBytes: number } | undefined {
    return this.hydrations.get(volumeId)?.job.progress();
  }

  private async resumeHydration(volumeId: string, target: SnapshotVolume): Promise<void> {
    const store = target.getAttribute(ATTR_HYDRATE_STORE) as StoreKind;
    const baseId = target.getAttribute(ATTR_HYDRATE_BASE)!;
    const rwId = Number(target.getAttribute(ATTR_HYDRATE_RW));
    const base = this.vols[store]?.get(baseId);
    const r = this.rws.get(volumeId);
    if (base === undefined || r === undefined || r.rwId !== rwId || r.baseId !== baseId) {
      // The RW clone went away after the copy completed: only the attributes are left to clear.
      await this.clearHydrationAttributes(target);
      return;
    }
    const source = rwSource(base, rwId);
    const view = new HydrateView(source, target);
    const job = ExtentCopyJob.open({ kind: 'hydrate', id: volumeId, source, target, lock: view.lock });
    const h: Hydration = { ref: r, target, view, source, job };
    this.hydrations.set(volumeId, h);
    void this.scheduler.submit(job).then(
      () => this.finishHydration(volumeId, h),
      () => undefined,
    );
  }

  /** The copy ended: the target alone serves the volume, the RW clone goes (and a retired base with it). */
  private async finishHydration(volumeId: string, h: Hydration): Promise<void> {
    try {
      // One synchronous step from `hydrating` to `volume`: an attach in between would otherwise see `rw` and
      // open a view of the RW snapshot deleted below (NOT_FOUND to a NodeStage racing a fast hydration).
      h.view.switchToTarget();
      this.hydrations.delete(volumeId);
      this.rws.delete(volumeId);
      h.source.release();
      await this.listener('hydrate', volumeId);
      await this.baseOf(h.ref).deleteRw(h.ref.rwId);
      await this.clearHydrationAttributes(h.target);
      await this.collectRetired(h.ref.store, h.ref.baseId);
      this.log.info({ volumeId }, 'Hydration complete: the volume no longer depends on its source');
    } catch (err) {
      this.log.error({ err, volumeId }, 'Failed to finish a hydration');
    }
  }

  /** The hydrating view of a volume being hydrated (the data path serves it while attached). */
  hydrateView(volumeId: string): HydrateView | undefined {
    return this.hydrations.get(volumeId)?.view;
  }

  private async clearHydrationAttributes(target: SnapshotVolume): Promise<void> {
    for (const k of [ATTR_HYDRATE_STORE, ATTR_HYDRATE_BASE, ATTR_HYDRATE_RW]) {
      if (target.getAttribute(k) !== undefined) await target.setAttribute(k, '');
    }
  }

  // ----- in-place restore and refresh ---------------------------------------------------------------------

  /** Starts the engine's online restore of `volumeId` from one of its snapshots or from one of its RW clones. */
  async startRestore(
    volumeId: string,
    source: { engineSnapshotId: number } | { rwCloneVolumeId: string },
    order: 'old-then-new' | 'new-then-old' | undefined,
  ): Promise<void> {
    const v = this.own(volumeId);
    let engineSource: { kind: 'snapshot' | 'rw'; id: number };
    if ('engineSnapshotId' in source) engineSource = { kind: 'snapshot', id: source.engineSnapshotId };
    else {
      const r = this.rws.get(source.rwCloneVolumeId);
      if (
        r === undefined ||
        r.store !== 'volumes' ||
        r.baseId !== volumeId ||
        this.hydrations.has(source.rwCloneVolumeId)
      ) {
        throw new CsiError(
          'CSI_ERR_INVALID_FIELD',
          `volume ${source.rwCloneVolumeId} is not a thin clone of volume ${volumeId}; an online restore needs a snapshot of ${volumeId} or one of its thin clones`,
        );
      }
      engineSource = { kind: 'rw', id: r.rwId };
    }
    await v.startRestore({ source: engineSource, ...(order === undefined ? {} : { order }) });
    this.submitRestore(volumeId, v);
  }

  restoreState(volumeId: string): { doneBytes: number; totalBytes: number } | undefined {
    const st = this.vols.volumes.get(volumeId)?.restoreStatus();
    return st === null || st === undefined ? undefined : { doneBytes: st.doneBytes, totalBytes: st.totalBytes };
  }

  private submitRestore(volumeId: string, v: SnapshotVolume): void {
    void this.scheduler.submit(new RestoreJob(v, volumeId)).then(
      () => this.listener('restore', volumeId),
      () => undefined,
    );
  }

  /** OP-10 for an RW clone: onto one of its base volume's snapshots, or onto a new cut of it (inside `cut`). */
  async refresh(
    volumeId: string,
    target: { engineSnapshotId: number } | 'new',
    cut: <T>(fn: () => Promise<T>) => Promise<T>,
  ): Promise<{ baseVolumeId: string; engineSnapshotId: number }> {
    if (this.hydrations.has(volumeId)) {
      throw new CsiError('CSI_ERR_IN_USE', `volume ${volumeId} is being hydrated; it no longer follows its source`);
    }
    const r = this.rws.get(volumeId);
    if (r === undefined || r.store !== 'volumes') {
      throw new CsiError(
        'CSI_ERR_THIN_CLONE',
        `volume ${volumeId} is not a thin clone of a volume; refresh works on volumes created from a snapshot or a volume`,
      );
    }
    const base = this.baseOf(r);
    const info =
      target === 'new'
        ? await cut(() => base.refreshRw(r.rwId))
        : await base.refreshRw(r.rwId, { snapshotId: target.engineSnapshotId });
    return { baseVolumeId: r.baseId, engineSnapshotId: info.baseId };
  }

  // ----- jobs, lifecycle ------------------------------------------------------------------------------------

  jobSamples(): JobSample[] {
    return this.scheduler
      .jobs()
      .map((j) => ({ kind: j.kind, id: j.id, doneBytes: j.doneBytes, totalBytes: j.totalBytes }));
  }

  /** Stops the background jobs (they resume at the next start), then closes every engine volume. */
  async close(): Promise<unknown[]> {
    await this.scheduler.close();
    const errors: unknown[] = [];
    // In parallel: a handover pauses pods' I/O for as long as this takes, whatever the number of volumes.
    for (const store of ['volumes', 'images'] as const) {
      await Promise.all(
        [...this.vols[store]].map(([id, v]) =>
          v.close().catch((err: unknown) => {
            errors.push(err);
            this.log.error({ err, store, id }, 'Failed to close engine volume');
          }),
        ),
      );
      this.vols[store].clear();
    }
    return errors;
  }

  // ----- internals --------------------------------------------------------------------------------------

  private volumeOptions(sizeBytes: number): CreateVolumeOptions {
    return {
      sizeBytes,
      blockSize: this.o.blockSizeBytes,
      granuleBlocks: this.o.granuleBlocks,
      saveQuotaBytes: this.o.saveQuotaBytes,
    };
  }

  private checkNew(volumeId: string): void {
    if (this.backing(volumeId) !== undefined) {
      throw new CsiError('CSI_ERR_NAME_CONFLICT', `engine storage for volume ${volumeId} already exists`);
    }
  }

  private baseOf(r: RwRef): SnapshotVolume {
    const v = this.vols[r.store].get(r.baseId);
    if (v === undefined)
      throw new CsiError('CSI_ERR_INTERNAL', `the base volume ${r.baseId} of an RW clone is not open`);
    return v;
  }

  /** Deletes a retired engine volume or image once no RW clone reads it any more. */
  private async collectRetired(store: StoreKind, id: string): Promise<void> {
    const v = this.vols[store].get(id);
    if (v === undefined || v.getAttribute(ATTR_RETIRED) === undefined) return;
    if (this.rwClonesOf(store, id).length > 0 || v.listRws().length > 0) return;
    if (store === 'volumes' && this.imagesCopyingFrom(id).length > 0) return;
    await v.close();
    this.vols[store].delete(id);
    await this.factory.remove(store, id);
    this.log.info({ store, id }, 'Deleted a retired engine volume after its last thin clone');
  }
}

/** Union of two ascending extent lists (coalesced), at most `max` extents. */
function mergeExtents(a: Extent[], b: Extent[], max: number): Extent[] {
  const all = [...a, ...b].sort((x, y) => x.offset - y.offset);
  const out: Extent[] = [];
  for (const e of all) {
    const last = out[out.length - 1];
    if (last !== undefined && e.offset <= last.offset + last.length) {
      last.length = Math.max(last.length, e.offset + e.length - last.offset);
    } else out.push({ ...e });
  }
  return out.slice(0, max);
}
