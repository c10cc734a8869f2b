// SPDX-License-Identifier: Apache-2.0
// Controller-side volume operations: create (empty, from a snapshot, from a volume), delete, expand.
// Order in every mutating call (conventions #11): the gRPC layer has checked required fields; here come
// parameter and capability checks, then the lock, then idempotency by name, then the change.
//
// Create is crash-safe: the record is written with phase `creating` before the engine storage exists and set
// to `ready` after it is complete (recovery.ts rolls `creating` back). A volume from a snapshot or from a
// volume is a thin RW clone, instant (engine OP-7; from a volume: a hidden snapshot plus an RW snapshot, cut
// frozen when the source is mounted); from a clone-method snapshot, a thin clone of its image. StorageClass
// parameter `hydrate: "true"` then turns it into a volume of its own in the background. A clone of a thin
// clone (which has no snapshot queue to cut from) is a full copy, taken while the source is not staged.
// Delete: a volume with snapshots is refused; one that thin clones still read is retired (its engine storage
// goes with the last of them), so a PVC restored or cloned from it lives on (ADR 0008).
import { CsiError } from '../errors.js';
import type { CapacityRange, TopologyRequirement, VolumeCapability } from '../grpc/csi-types.js';
import { newVolumeId } from '../state/ids.js';
import {
  type AccessType,
  type ContentSource,
  RECORD_VERSION,
  type SnapshotRecord,
  type VolumeOrigin,
  type VolumeRecord,
} from '../state/records.js';
import { accessModeOf, accessTypeOf, capabilitiesProblem, fsTypeOf } from './capabilities.js';
import { capacityFits, resolveCapacity } from './capacity.js';
import type { DriverContext } from './context.js';
import { snapshotKey, volumeKey, volumeNameKey } from './locks.js';
import { parseVolumeParameters, persistedVolumeParameters } from './parameters.js';

export interface CreateVolumeInput {
  readonly name: string;
  readonly capacityRange: CapacityRange | null;
  readonly capabilities: readonly VolumeCapability[];
  readonly parameters: Record<string, string>;
  readonly contentSource: ContentSource | null;
  readonly accessibility: TopologyRequirement | null;
}

type Undo = () => Promise<void>;

export class VolumeService {
  constructor(private readonly d: DriverContext) {}

  async create(input: CreateVolumeInput, signal?: AbortSignal): Promise<VolumeRecord> {
    const params = parseVolumeParameters(input.parameters);
    const capProblem = capabilitiesProblem(input.capabilities);
    if (capProblem) throw new CsiError('CSI_ERR_UNSUPPORTED_CAPABILITY', capProblem);
    this.checkTopology(input.accessibility);
    const sizeBytes = resolveCapacity(input.capacityRange, this.d.options.capacity);
    const accessTypes = [...new Set(input.capabilities.map((c) => accessTypeOf(c) as AccessType))].sort();
    const fsTypes = [...new Set(input.capabilities.map(fsTypeOf).filter((f) => f !== ''))];
    if (fsTypes.length > 1) {
      throw new CsiError('CSI_ERR_UNSUPPORTED_CAPABILITY', `conflicting fs_type values ${fsTypes.join(', ')}`);
    }
    const keys = [volumeNameKey(input.name)];
    const src = input.contentSource;
    if (src?.kind === 'volume') keys.push(volumeKey(src.volumeId));
    if (src?.kind === 'snapshot') keys.push(snapshotKey(src.snapshotId));
    return this.d.locks.run('CreateVolume', keys, async () => {
      const existing = this.d.state.volumeByName(input.name);
      if (existing) return this.existingFor(existing, input, accessTypes);
      const source = this.resolveSource(src, sizeBytes);
      const rec: VolumeRecord = {
        version: RECORD_VERSION,
        volumeId: newVolumeId(),
        name: input.name,
        capacityBytes: sizeBytes,
        accessTypes,
        accessModes: [...new Set(input.capabilities.map(accessModeOf))].sort(),
        fsType: fsTypes[0] ?? '',
        parameters: persistedVolumeParameters(input.parameters),
        contentSource: src,
        ...(source === null
          ? {}
          : { parentVolumeId: 'snapshotId' in source ? source.sourceVolumeId : source.volumeId }),
        origin: { kind: src === null ? 'empty' : 'copy' } as VolumeOrigin,
        createdAt: Date.now(),
        phase: 'creating',
        stage: null,
        publish: {},
      };
      const origin = await this.build(rec, source, signal);
      const ready: VolumeRecord = { ...rec, origin, phase: 'ready' };
      await this.d.state.putVolume(ready);
      this.d.log.info({ volumeId: rec.volumeId, name: rec.name, sizeBytes, source: src, origin }, 'Created volume');
      if (params.hydrate && origin.kind === 'rw-clone') {
        await this.d.backend.startHydration(rec.volumeId);
        this.d.log.info({ volumeId: rec.volumeId }, 'Hydrating volume in the background');
      }
      return ready;
    });
  }

  /** Deletes a volume; success when it does not exist. FAILED_PRECONDITION while staged or with snapshots. */
  async delete(volumeId: string): Promise<void> {
    if (!this.d.state.volume(volumeId)) return;
    await this.d.locks.run('DeleteVolume', [volumeKey(volumeId)], async () => {
      const rec = this.d.state.volume(volumeId);
      if (!rec) return;
      if (rec.stage || Object.keys(rec.publish).length > 0) {
        throw new CsiError(
          'CSI_ERR_IN_USE',
          `volume ${volumeId} is ${rec.stage ? `staged at ${rec.stage.stagingPath}` : 'published'}; unstage it first`,
        );
      }
      const snaps = this.d.state.snapshotsOf(volumeId).filter((s) => s.method !== 'clone');
      if (snaps.length > 0) {
        throw new CsiError(
          'CSI_ERR_IN_USE',
          `volume ${volumeId} has ${snaps.length} snapshot(s) (${snaps.map((s) => s.snapshotId).join(', ')}); delete them first`,
        );
      }
      const copying = this.d.backend.imagesCopyingFrom(volumeId);
      if (copying.length > 0) {
        throw new CsiError(
          'CSI_ERR_IN_USE',
          `clone-method snapshot(s) ${copying.join(', ')} of volume ${volumeId} are still copying; retry when they are ready`,
        );
      }
      const clones = this.d.backend.rwClonesOf(volumeId);
      await this.d.state.putVolume({ ...rec, phase: 'deleting' });
      const outcome = await this.d.backend.deleteVolume(volumeId);
      await this.d.state.removeVolume(volumeId);
      if (outcome === 'retired') {
        this.d.log.info(
          { volumeId, name: rec.name, thinClones: clones },
          'Deleted volume; its data stays until its last thin clone is deleted or hydrated',
        );
      } else this.d.log.info({ volumeId, name: rec.name }, 'Deleted volume');
    });
  }

  /**
   * ControllerExpandVolume: grows a volume to satisfy `range`, online while it is staged (the backend grows
   * its view and loop device with the engine storage, features.onlineResize). A request at or below the
   * current size changes nothing and answers the current size. `nodeExpansion` (node_expansion_required):
   * a file system may sit on the volume and must be grown by NodeExpandVolume; false for raw block use,
   * whose device this call has grown already (the same answer on a repeated call, so a CO that retries after
   * a crash still finishes on the node).
   */
  async expand(volumeId: string, range: CapacityRange): Promise<{ capacityBytes: number; nodeExpansion: boolean }> {
    const rec = this.get(volumeId);
    const policy = { ...this.d.options.capacity, defaultBytes: rec.capacityBytes };
    const wanted = resolveCapacity(range, policy);
    const nodeExpansion = rec.accessTypes.includes('mount');
    if (wanted <= rec.capacityBytes) return { capacityBytes: rec.capacityBytes, nodeExpansion };
    return this.d.locks.run('ControllerExpandVolume', [volumeKey(volumeId)], async () => {
      const cur = this.get(volumeId);
      if (cur.stage && !this.d.backend.features.onlineResize) {
        throw new CsiError(
          'CSI_ERR_IN_USE',
          `volume ${volumeId} is staged at ${cur.stage.stagingPath}; this backend expands volumes offline only`,
        );
      }
      await this.d.backend.resizeVolume(volumeId, wanted);
      await this.d.state.putVolume({ ...cur, capacityBytes: wanted });
      this.d.log.info(
        { volumeId, sizeBytes: wanted, online: cur.stage !== null, nodeExpansionRequired: nodeExpansion },
        'Expanded volume',
      );
      return { capacityBytes: wanted, nodeExpansion };
    });
  }

  /** The ready record of `volumeId`; NOT_FOUND otherwise. */
  get(volumeId: string): VolumeRecord {
    const rec = this.d.state.volume(volumeId);
    if (!rec || rec.phase !== 'ready') {
      throw new CsiError('CSI_ERR_VOLUME_NOT_FOUND', `volume ${volumeId} does not exist`, { details: { volumeId } });
    }
    return rec;
  }

  list(): VolumeRecord[] {
    return this.d.state.volumes().filter((v) => v.phase === 'ready');
  }

  // ----- internals --------------------------------------------------------------------------------------

  private checkTopology(req: TopologyRequirement | null): void {
    const requisite = req?.requisite ?? [];
    if (requisite.length === 0) return;
    if (!requisite.some((t) => this.d.isThisNode(t))) {
      throw new CsiError(
        'CSI_ERR_TOPOLOGY',
        `accessibility requirements exclude node ${this.d.options.nodeId} (volumes are created on the node that serves the call)`,
      );
    }
  }

  private existingFor(existing: VolumeRecord, input: CreateVolumeInput, accessTypes: AccessType[]): VolumeRecord {
    const problems: string[] = [];
    if (existing.phase !== 'ready') problems.push(`it is ${existing.phase}`);
    if (!capacityFits(existing.capacityBytes, input.capacityRange)) {
      problems.push(`its capacity ${existing.capacityBytes} does not fit the requested range`);
    }
    if (JSON.stringify(existing.contentSource) !== JSON.stringify(input.contentSource)) {
      problems.push('it has a different content source');
    }
    if (!accessTypes.every((t) => existing.accessTypes.includes(t))) problems.push('it has other access types');
    if (problems.length > 0) {
      throw new CsiError(
        'CSI_ERR_NAME_CONFLICT',
        `volume ${JSON.stringify(existing.name)} already exists as ${existing.volumeId}, but ${problems.join('; ')}`,
      );
    }
    return existing;
  }

  private resolveSource(src: ContentSource | null, sizeBytes: number): SnapshotRecord | VolumeRecord | null {
    if (src === null) return null;
    if (src.kind === 'snapshot') {
      const snap = this.d.state.snapshot(src.snapshotId);
      if (!snap || snap.phase !== 'ready') {
        throw new CsiError('CSI_ERR_SOURCE_NOT_FOUND', `source snapshot ${src.snapshotId} does not exist`);
      }
      const ready =
        snap.method === 'clone' ? this.d.backend.imageState(snap.snapshotId).state === 'ready' : snap.readyToUse;
      if (!ready) {
        throw new CsiError(
          'CSI_ERR_NOT_READY',
          `source snapshot ${src.snapshotId} is not ready${snap.method === 'clone' ? ' (its background copy is still running)' : ''}`,
        );
      }
      if (
        snap.method !== 'clone' &&
        this.d.backend.getSnapshot(snap.sourceVolumeId, snap.engineSnapshotId)?.state !== 'valid'
      ) {
        throw new CsiError(
          'CSI_ERR_NOT_READY',
          `source snapshot ${src.snapshotId} lost data when its volume's save pool was full; it can only be deleted`,
        );
      }
      if (snap.sizeBytes > sizeBytes) {
        throw new CsiError(
          'CSI_ERR_CAPACITY',
          `requested ${sizeBytes} bytes is smaller than source snapshot ${src.snapshotId} (${snap.sizeBytes} bytes)`,
        );
      }
      return snap;
    }
    const vol = this.d.state.volume(src.volumeId);
    if (!vol || vol.phase !== 'ready') {
      throw new CsiError('CSI_ERR_SOURCE_NOT_FOUND', `source volume ${src.volumeId} does not exist`);
    }
    if (vol.capacityBytes > sizeBytes) {
      throw new CsiError(
        'CSI_ERR_CAPACITY',
        `requested ${sizeBytes} bytes is smaller than source volume ${src.volumeId} (${vol.capacityBytes} bytes)`,
      );
    }
    if (this.d.backend.backing(vol.volumeId) !== 'volume' && vol.stage) {
      throw new CsiError(
        'CSI_ERR_THIN_CLONE',
        `source volume ${src.volumeId} is a thin clone in use (staged at ${vol.stage.stagingPath}); a clone of it is a full copy, taken while it is not staged`,
      );
    }
    return vol;
  }

  /**
   * Makes the engine storage of `rec` from `source`: empty, a thin clone (of a snapshot, a clone-method
   * image or a live volume), or a full copy of a thin clone. Undoes everything on failure; returns the origin.
   */
  private async build(
    rec: VolumeRecord,
    source: SnapshotRecord | VolumeRecord | null,
    signal: AbortSignal | undefined,
  ): Promise<VolumeOrigin> {
    const undo: Undo[] = [];
    const b = this.d.backend;
    try {
      await this.d.state.putVolume(rec);
      undo.push(() => this.d.state.removeVolume(rec.volumeId));
      undo.push(() => b.deleteVolume(rec.volumeId).then(() => undefined));
      if (source === null) {
        await b.createVolume(rec.volumeId, rec.capacityBytes);
        return { kind: 'empty' };
      }
      if ('snapshotId' in source) {
        if (source.method === 'clone') {
          await b.createRwClone(rec.volumeId, { imageId: source.snapshotId }, rec.capacityBytes);
          return { kind: 'rw-clone', baseVolumeId: source.snapshotId, engineSnapshotId: -1, image: true };
        }
        const from = { volumeId: source.sourceVolumeId, engineSnapshotId: source.engineSnapshotId };
        await b.createRwClone(rec.volumeId, from, rec.capacityBytes);
        return { kind: 'rw-clone', baseVolumeId: source.sourceVolumeId, engineSnapshotId: source.engineSnapshotId };
      }
      if (b.backing(source.volumeId) === 'volume') {
        const mountpoint = source.stage?.accessType === 'mount' ? source.stage.stagingPath : undefined;
        const hidden = await b.cloneVolume(rec.volumeId, source.volumeId, rec.capacityBytes, {
          ...(mountpoint === undefined ? {} : { mountpoint }),
        });
        return { kind: 'rw-clone', baseVolumeId: source.volumeId, engineSnapshotId: hidden };
      }
      await b.createVolume(rec.volumeId, rec.capacityBytes);
      const { copiedBytes } = await b.copyVolumeInto(source.volumeId, rec.volumeId, signal);
      this.d.log.debug({ volumeId: rec.volumeId, sourceVolumeId: source.volumeId, copiedBytes }, 'Copied a thin clone');
      return { kind: 'copy' };
    } catch (err) {
      return rollback(undo, err);
    }
  }
}

/** Runs `undo` in reverse and rethrows `err` (with the rollback failures attached when there are any). */
export async function rollback(undo: Undo[], err: unknown): Promise<never> {
  const failures: unknown[] = [];
  for (const u of undo.reverse()) {
    try {
      await u();
    } catch (e) {
      failures.push(e);
    }
  }
  if (failures.length === 0) throw err;
  throw new AggregateError([err, ...failures], `${(err as Error).message} (and rolling back failed)`, { cause: err });
}
