// SPDX-License-Identifier: Apache-2.0
// VolumeBackend for unit tests of the driver's logic: the same engine-side logic as the real backend
// (engine-volumes.ts: thin clones, images, hydration, restores, background jobs) over real engine volumes on
// memory devices, with no data path. Stage/publish need the real backend (integration tests); here they fail
// loudly; cuts are never frozen. Fault injection: `failNext(method)` makes the next call of that method throw;
// `holdNext(method)` parks the next call until released.
import { createLogger } from '../../../common/src/log.js';
import { MemBlockDevice, MemMetaStore } from '../engine/block-device.js';
import { SnapshotVolume } from '../engine/volume.js';
import type { LoopDevice } from '../mount/loop-device.js';
import type { JobSample, VolumeGaugeSample } from '../metrics.js';
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
import { toSnapshot } from './engine-backend.js';
import {
  type BackingKind,
  type CloneSource,
  EngineVolumes,
  type JobDoneListener,
  type StoreKind,
  type VolumeFactory,
} from './engine-volumes.js';
import { copyContent } from './volume-copy.js';

interface Devices {
  clone: MemBlockDevice;
  save: MemBlockDevice;
  meta: MemMetaStore;
}

/** Engine volumes on memory devices that survive close(): open() finds them again. */
export class MemoryFactory implements VolumeFactory {
  readonly stores: Record<StoreKind, Map<string, Devices>> = { volumes: new Map(), images: new Map() };

  async create(store: StoreKind, id: string, options: Parameters<VolumeFactory['create']>[2]) {
    if (this.stores[store].has(id)) throw new Error(`engine volume ${id} exists`);
    const bs = options.blockSize ?? 4096;
    const d = { clone: new MemBlockDevice(bs), save: new MemBlockDevice(bs), meta: new MemMetaStore() };
    const v = await SnapshotVolume.create(d, options);
    this.stores[store].set(id, d);
    return v;
  }

  async open(store: StoreKind, id: string) {
    const d = this.stores[store].get(id);
    if (d === undefined) throw new Error(`engine volume ${id} does not exist`);
    return SnapshotVolume.open(d);
  }

  async remove(store: StoreKind, id: string) {
    this.stores[store].delete(id);
  }

  list(store: StoreKind): string[] {
    return [...this.stores[store].keys()].sort();
  }
}

const immediate = <T>(fn: () => Promise<T>) => fn();

export class MemoryBackend implements VolumeBackend {
  readonly features: BackendFeatures = { rwClones: true, cloneImages: true, onlineResize: true };
  readonly adopted = false;
  readonly blockSizeBytes = 4096;
  readonly engine: EngineVolumes;
  private readonly faults = new Set<string>();
  private readonly holds = new Map<string, { gate: Promise<void>; arrive: () => void }>();

  constructor(readonly factory = new MemoryFactory()) {
    this.engine = new EngineVolumes(factory, {
      blockSizeBytes: 4096,
      granuleBlocks: 1,
      saveQuotaBytes: null,
      log: createLogger({ component: 'memory-backend', level: 'silent' }),
      scheduler: { rateBytesPerSecond: 0 },
    });
  }

  /** Opens what the factory holds (a "restart" over the same devices). */
  static async start(factory = new MemoryFactory()): Promise<MemoryBackend> {
    const b = new MemoryBackend(factory);
    await b.engine.start();
    return b;
  }

  /** Own engine volumes by CSI volume id (test helper). */
  get volumes(): Map<string, SnapshotVolume> {
    return new Map(this.engine.openVolumes());
  }

  failNext(method: keyof VolumeBackend): void {
    this.faults.add(method);
  }

  /**
   * The next call of `method` waits until `release()` (an operation in flight); `reached` resolves once a
   * call is waiting there.
   */
  holdNext(method: keyof VolumeBackend): { release: () => void; reached: Promise<void> } {
    let release!: () => void;
    let arrive!: () => void;
    const reached = new Promise<void>((r) => (arrive = r));
    const gate = new Promise<void>((r) => (release = r));
    this.holds.set(method, { gate, arrive });
    return { release, reached };
  }

  private async fault(method: string): Promise<void> {
    const hold = this.holds.get(method);
    if (hold) {
      this.holds.delete(method);
      hold.arrive();
      await hold.gate;
    }
    if (this.faults.delete(method)) throw new Error(`injected failure in ${method}`);
  }

  async createVolume(volumeId: string, sizeBytes: number): Promise<void> {
    await this.fault('createVolume');
    await this.engine.createVolume(volumeId, sizeBytes);
  }

  async createRwClone(volumeId: string, source: CloneSource, sizeBytes: number): Promise<void> {
    await this.fault('createRwClone');
    await this.engine.createRwClone(volumeId, source, sizeBytes);
  }

  async cloneVolume(volumeId: string, sourceVolumeId: string, sizeBytes: number): Promise<number> {
    await this.fault('cloneVolume');
    return this.engine.cloneLive(volumeId, sourceVolumeId, sizeBytes, immediate);
  }

  async copyVolumeInto(srcVolumeId: string, dstVolumeId: string): Promise<{ copiedBytes: number }> {
    await this.fault('copyVolumeInto');
    return copyContent(this.engine.content(srcVolumeId), this.engine.own(dstVolumeId));
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
    await this.fault('deleteVolume');
    return this.engine.deleteVolume(volumeId);
  }

  hasVolume(volumeId: string): boolean {
    return this.engine.backing(volumeId) !== undefined;
  }

  volumeSizeBytes(volumeId: string): number {
    return this.engine.content(volumeId).sizeBytes;
  }

  async resizeVolume(volumeId: string, sizeBytes: number): Promise<void> {
    await this.engine.resizeVolume(volumeId, sizeBytes);
  }

  async createSnapshot(volumeId: string, opts: { method: EngineSnapshotMethod; tag: string }): Promise<EngineSnapshot> {
    await this.fault('createSnapshot');
    return toSnapshot(await this.engine.own(volumeId).createSnapshot({ method: opts.method, tag: opts.tag }));
  }

  getSnapshot(volumeId: string, engineSnapshotId: number): EngineSnapshot | undefined {
    const info = this.own(volumeId)
      ?.listSnapshots()
      .find((s) => s.id === engineSnapshotId);
    return info && toSnapshot(info);
  }

  findSnapshotByTag(volumeId: string, tag: string): EngineSnapshot | undefined {
    const info = this.own(volumeId)?.findSnapshotByTag(tag);
    return info && toSnapshot(info);
  }

  listSnapshots(volumeId: string): EngineSnapshot[] {
    return (this.own(volumeId)?.listSnapshots() ?? []).map(toSnapshot);
  }

  async deleteSnapshot(volumeId: string, engineSnapshotId: number): Promise<void> {
    await this.fault('deleteSnapshot');
    await this.engine.deleteSnapshot(volumeId, engineSnapshotId);
  }

  async createImage(snapshotId: string, volumeId: string) {
    await this.fault('createImage');
    return this.engine.createImage(snapshotId, volumeId, immediate);
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

  refreshVolume(volumeId: string, target: { engineSnapshotId: number } | 'new') {
    return this.engine.refresh(volumeId, target, immediate);
  }

  onJobDone(listener: JobDoneListener): void {
    this.engine.onJobDone(listener);
  }

  allocatedExtents(volumeId: string, engineSnapshotId: number, q: ExtentQuery): ByteExtent[] {
    return this.engine.own(volumeId).allocatedExtents(engineSnapshotId, q);
  }

  changedExtents(volumeId: string, base: number, target: number, q: ExtentQuery): ByteExtent[] {
    return this.engine.own(volumeId).changedExtents(base, target, q);
  }

  async readSnapshot(volumeId: string, engineSnapshotId: number, offset: number, into: Uint8Array): Promise<void> {
    await this.engine.own(volumeId).readSnapshotInto(engineSnapshotId, offset, into);
  }

  async attachVolume(): Promise<LoopDevice> {
    throw new Error('the memory backend has no data path');
  }

  async detachVolume(): Promise<void> {}

  async attachedDevice(): Promise<LoopDevice | undefined> {
    return undefined;
  }

  async condition(volumeId: string): Promise<VolumeCondition> {
    return this.hasVolume(volumeId)
      ? { abnormal: false, message: 'volume is healthy' }
      : { abnormal: true, message: 'the engine volume is missing' };
  }

  async availableBytes(): Promise<number> {
    return 1024 ** 3;
  }

  volumeSamples(): VolumeGaugeSample[] {
    return this.engine.openVolumes().map(([volumeId, v]) => {
      const st = v.stats();
      return {
        volumeId,
        savePoolUsedBytes: st.savePoolUsedBytes,
        savePoolSizeBytes: st.savePoolSizeBytes,
        snapshots: st.snapshotCount,
        invalidSnapshots: st.invalidSnapshotCount,
        cowCopiesTotal: st.cowCopiesTotal,
        sizeBytes: st.sizeBytes,
        writesRefusedTotal: st.writesRefusedTotal,
        snapshotsSacrificedTotal: st.snapshotsSacrificedTotal,
        outOfSpace: st.outOfSpace,
      };
    });
  }

  jobSamples(): JobSample[] {
    return this.engine.jobSamples();
  }

  healthy(): boolean {
    return true;
  }

  async close(): Promise<void> {
    await this.engine.close();
  }

  /** The engine volume of a volume of its own (throws for thin clones). */
  vol(volumeId: string): SnapshotVolume {
    return this.engine.own(volumeId);
  }

  /** Content of any volume (thin clones and hydrating volumes included). */
  content(volumeId: string) {
    return this.engine.content(volumeId);
  }

  private own(volumeId: string): SnapshotVolume | undefined {
    return this.engine.backing(volumeId) === 'volume' ? this.engine.own(volumeId) : undefined;
  }
}
