// SPDX-License-Identifier: Apache-2.0
// VolumeBackend for unit tests of the driver's pure logic: real engine volumes (SnapshotVolume) on memory
// devices, no data path. Stage/publish need the real backend (integration tests); here they fail loudly.
// Fault injection: `failNext(method)` makes the next call of that method throw.
import { MemBlockDevice, MemMetaStore } from '../engine/block-device.js';
import { SnapshotVolume } from '../engine/volume.js';
import { CsiError } from '../errors.js';
import type { LoopDevice } from '../mount/loop-device.js';
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

interface Stored {
  clone: MemBlockDevice;
  save: MemBlockDevice;
  meta: MemMetaStore;
  volume: SnapshotVolume;
}

export class MemoryBackend implements VolumeBackend {
  readonly features: BackendFeatures = { rwClones: false, cloneImages: false, onlineResize: false };
  readonly blockSizeBytes = 4096;
  readonly volumes = new Map<string, Stored>();
  private readonly faults = new Set<string>();
  private readonly holds = new Map<string, { gate: Promise<void>; arrive: () => void }>();

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
    if (this.volumes.has(volumeId)) throw new Error(`volume ${volumeId} exists`);
    const clone = new MemBlockDevice(4096);
    const save = new MemBlockDevice(4096);
    const meta = new MemMetaStore();
    const volume = await SnapshotVolume.create({ clone, save, meta }, { sizeBytes });
    this.volumes.set(volumeId, { clone, save, meta, volume });
  }

  async deleteVolume(volumeId: string): Promise<void> {
    await this.fault('deleteVolume');
    const s = this.volumes.get(volumeId);
    if (!s) return;
    await s.volume.close();
    this.volumes.delete(volumeId);
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

  async createSnapshot(volumeId: string, opts: { method: EngineSnapshotMethod; tag: string }): Promise<EngineSnapshot> {
    await this.fault('createSnapshot');
    return toSnapshot(await this.vol(volumeId).createSnapshot({ method: opts.method, tag: opts.tag }));
  }

  getSnapshot(volumeId: string, engineSnapshotId: number): EngineSnapshot | undefined {
    const info = this.volumes
      .get(volumeId)
      ?.volume.listSnapshots()
      .find((s) => s.id === engineSnapshotId);
    return info && toSnapshot(info);
  }

  findSnapshotByTag(volumeId: string, tag: string): EngineSnapshot | undefined {
    const info = this.volumes.get(volumeId)?.volume.findSnapshotByTag(tag);
    return info && toSnapshot(info);
  }

  listSnapshots(volumeId: string): EngineSnapshot[] {
    return (this.volumes.get(volumeId)?.volume.listSnapshots() ?? []).map(toSnapshot);
  }

  async deleteSnapshot(volumeId: string, engineSnapshotId: number): Promise<void> {
    await this.fault('deleteSnapshot');
    const v = this.volumes.get(volumeId)?.volume;
    if (!v || !v.listSnapshots().some((s) => s.id === engineSnapshotId)) return;
    await v.deleteSnapshot(engineSnapshotId);
  }

  allocatedExtents(volumeId: string, engineSnapshotId: number, q: ExtentQuery): ByteExtent[] {
    return this.vol(volumeId).allocatedExtents(engineSnapshotId, q);
  }

  changedExtents(volumeId: string, base: number, target: number, q: ExtentQuery): ByteExtent[] {
    return this.vol(volumeId).changedExtents(base, target, q);
  }

  async readSnapshot(volumeId: string, engineSnapshotId: number, offset: number, into: Uint8Array): Promise<void> {
    await this.vol(volumeId).readSnapshotInto(engineSnapshotId, offset, into);
  }

  async copySnapshotInto(
    src: { volumeId: string; engineSnapshotId: number },
    dstVolumeId: string,
  ): Promise<{ copiedBytes: number }> {
    await this.fault('copySnapshotInto');
    const from = this.vol(src.volumeId);
    const to = this.vol(dstVolumeId);
    let copied = 0;
    for (const e of from.allocatedExtents(src.engineSnapshotId)) {
      const buf = new Uint8Array(e.length);
      await from.readSnapshotInto(src.engineSnapshotId, e.offset, buf);
      await to.write(e.offset, buf);
      copied += e.length;
    }
    await to.flush();
    return { copiedBytes: copied };
  }

  async attachVolume(): Promise<LoopDevice> {
    throw new Error('the memory backend has no data path');
  }

  async detachVolume(): Promise<void> {}

  async attachedDevice(): Promise<LoopDevice | undefined> {
    return undefined;
  }

  async condition(volumeId: string): Promise<VolumeCondition> {
    return this.volumes.has(volumeId)
      ? { abnormal: false, message: 'volume is healthy' }
      : { abnormal: true, message: 'the engine volume is missing' };
  }

  async availableBytes(): Promise<number> {
    return 1024 ** 3;
  }

  volumeSamples(): VolumeGaugeSample[] {
    return [...this.volumes].map(([volumeId, s]) => {
      const st = s.volume.stats();
      return {
        volumeId,
        savePoolUsedBytes: st.savePoolUsedBytes,
        savePoolSizeBytes: st.savePoolSizeBytes,
        snapshots: st.snapshotCount,
        invalidSnapshots: st.invalidSnapshotCount,
        cowCopiesTotal: st.cowCopiesTotal,
        sizeBytes: st.sizeBytes,
      };
    });
  }

  jobSamples(): JobSample[] {
    return [];
  }

  healthy(): boolean {
    return true;
  }

  async close(): Promise<void> {
    for (const s of this.volumes.values()) await s.volume.close();
  }

  vol(volumeId: string): SnapshotVolume {
    const s = this.volumes.get(volumeId);
    if (!s) throw new CsiError('CSI_ERR_VOLUME_NOT_FOUND', `engine volume ${volumeId} is not open`);
    return s.volume;
  }
}

function toSnapshot(info: {
  id: number;
  method: EngineSnapshotMethod;
  state: string;
  tag: string;
  createdAt: number;
  sizeBytes: number;
}): EngineSnapshot {
  return {
    engineSnapshotId: info.id,
    method: info.method,
    state: info.state === 'invalid' ? 'invalid' : 'valid',
    tag: info.tag,
    createdAt: info.createdAt,
    sizeBytes: info.sizeBytes,
  };
}
