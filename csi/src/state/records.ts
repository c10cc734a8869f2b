// SPDX-License-Identifier: Apache-2.0
// Persisted driver records: what CSI knows about a volume or snapshot beyond the engine's own metadata
// (names for idempotency, parameters, content source, stage/publish state). One JSON file per object:
//   <stateDir>/csi/volumes/<volumeId>.json     VolumeRecord
//   <stateDir>/csi/snapshots/<snapshotId>.json SnapshotRecord
// Each file is replaced atomically (tmp + fsync + rename + fsync dir). `version` is the record format; a
// reader refuses versions it does not know. Optional fields added within version 1 (absent in older files,
// ignored by older readers): VolumeRecord.parentVolumeId. `phase` makes multi-step operations crash-safe:
//   creating  written before the engine object is made; on restart, volumes are rolled back and snapshots
//             rolled forward when the engine holds a snapshot tagged with their id
//   ready     normal
//   deleting  written before the engine object is removed; on restart, the delete is finished
import { CsiError } from '../errors.js';
import { isSnapshotId, isVolumeId } from './ids.js';

export const RECORD_VERSION = 1;

export type Phase = 'creating' | 'ready' | 'deleting';
export type AccessType = 'mount' | 'block';
export type SnapshotMethod = 'save-volume' | 'meta-bitmap' | 'clone';

export type ContentSource =
  { readonly kind: 'snapshot'; readonly snapshotId: string } | { readonly kind: 'volume'; readonly volumeId: string };

/** How the volume's data came to be (matters for dependencies and for what deleting it means). */
export type VolumeOrigin =
  | { readonly kind: 'empty' }
  /** Filled by copying (a clone of a thin clone, or a hydrated thin clone): independent of its source. */
  | { readonly kind: 'copy' }
  /**
   * A thin clone: an RW snapshot of engine snapshot `engineSnapshotId` of volume `baseVolumeId`, or, with
   * `image`, of the image of clone-method snapshot `baseVolumeId` (a snapshot id then). `hydrate` parameter:
   * being turned into a volume of its own; it becomes `copy` when that ends.
   */
  | {
      readonly kind: 'rw-clone';
      readonly baseVolumeId: string;
      readonly engineSnapshotId: number;
      readonly image?: boolean;
    };

export interface StageRecord {
  readonly stagingPath: string;
  readonly accessType: AccessType;
  /** File-system type mounted at stagingPath (mount access). */
  readonly fsType: string;
  readonly mountFlags: readonly string[];
  /** Loop device the view is attached to, at the time of staging. */
  readonly device: string;
  readonly readOnly: boolean;
}

export interface PublishRecord {
  readonly targetPath: string;
  readonly readOnly: boolean;
  readonly accessType: AccessType;
  readonly accessMode: string;
}

/**
 * A staging or target directory or file the node plugin created (csi/src/mount/confined-path.ts): only such
 * an entry is ever removed, and only while it is still the same object (device and inode, decimal strings).
 */
export interface CreatedPathRecord {
  readonly kind: 'dir' | 'file';
  readonly dev: string;
  readonly ino: string;
  /** Birth time in ns, '0' where the file system keeps none (inode numbers are reused). */
  readonly born?: string;
}

export interface VolumeRecord {
  readonly version: number;
  readonly volumeId: string;
  readonly name: string;
  readonly capacityBytes: number;
  /** Access types the volume was created for (from CreateVolume's capabilities). */
  readonly accessTypes: readonly AccessType[];
  readonly accessModes: readonly string[];
  /** fs_type asked for at creation ('' = the driver's default at stage time). */
  readonly fsType: string;
  readonly parameters: Readonly<Record<string, string>>;
  readonly contentSource: ContentSource | null;
  /**
   * The volume this volume's content came from at creation: the source volume of the snapshot it was made
   * from, or the volume it was cloned from. Kept when that snapshot or volume is deleted (the lineage of
   * in-place restore and refresh, csi/src/agent/lineage.ts). Absent for empty volumes and in records written
   * before the field existed.
   */
  readonly parentVolumeId?: string;
  readonly origin: VolumeOrigin;
  readonly createdAt: number;
  readonly phase: Phase;
  readonly stage: StageRecord | null;
  readonly publish: Readonly<Record<string, PublishRecord>>;
  /**
   * Staging and target paths this plugin created for the volume, by path (optional within version 1). They
   * outlive the stage/publish records (a restart clears those), so a later unpublish or unstage still removes
   * what the plugin made, and nothing else.
   */
  readonly createdPaths?: Readonly<Record<string, CreatedPathRecord>>;
}

export interface SnapshotRecord {
  readonly version: number;
  readonly snapshotId: string;
  readonly name: string;
  readonly sourceVolumeId: string;
  readonly method: SnapshotMethod;
  /** Id of the snapshot in the source volume's engine queue; -1 while phase = creating. */
  readonly engineSnapshotId: number;
  readonly sizeBytes: number;
  readonly createdAt: number;
  readonly readyToUse: boolean;
  readonly parameters: Readonly<Record<string, string>>;
  readonly phase: Phase;
}

function corrupt(file: string, why: string): CsiError {
  return new CsiError('CSI_ERR_STATE_CORRUPT', `state file ${file}: ${why}`, { details: { file } });
}

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function strMap(v: unknown): v is Record<string, string> {
  return isObj(v) && Object.values(v).every((x) => typeof x === 'string');
}

const PHASES: readonly string[] = ['creating', 'ready', 'deleting'];
const METHODS: readonly string[] = ['save-volume', 'meta-bitmap', 'clone'];

/** Validates a parsed volume record (structure only; refuses unknown versions). */
export function parseVolumeRecord(file: string, raw: unknown): VolumeRecord {
  if (!isObj(raw)) throw corrupt(file, 'not a JSON object');
  if (raw.version !== RECORD_VERSION) throw corrupt(file, `unsupported record version ${String(raw.version)}`);
  if (typeof raw.volumeId !== 'string' || !isVolumeId(raw.volumeId)) throw corrupt(file, 'bad volumeId');
  if (typeof raw.name !== 'string') throw corrupt(file, 'bad name');
  if (!Number.isSafeInteger(raw.capacityBytes) || (raw.capacityBytes as number) <= 0) {
    throw corrupt(file, 'bad capacityBytes');
  }
  if (!Array.isArray(raw.accessTypes) || !raw.accessTypes.every((t) => t === 'mount' || t === 'block')) {
    throw corrupt(file, 'bad accessTypes');
  }
  if (!Array.isArray(raw.accessModes) || !raw.accessModes.every((t) => typeof t === 'string')) {
    throw corrupt(file, 'bad accessModes');
  }
  if (typeof raw.fsType !== 'string') throw corrupt(file, 'bad fsType');
  if (!strMap(raw.parameters)) throw corrupt(file, 'bad parameters');
  if (typeof raw.phase !== 'string' || !PHASES.includes(raw.phase)) throw corrupt(file, 'bad phase');
  if (!Number.isFinite(raw.createdAt)) throw corrupt(file, 'bad createdAt');
  if (!isObj(raw.origin) || typeof raw.origin.kind !== 'string') throw corrupt(file, 'bad origin');
  if (raw.stage !== null && !isObj(raw.stage)) throw corrupt(file, 'bad stage');
  if (!isObj(raw.publish)) throw corrupt(file, 'bad publish');
  if (raw.contentSource !== null && !isObj(raw.contentSource)) throw corrupt(file, 'bad contentSource');
  if (raw.parentVolumeId !== undefined && (typeof raw.parentVolumeId !== 'string' || !isVolumeId(raw.parentVolumeId))) {
    throw corrupt(file, 'bad parentVolumeId');
  }
  if (raw.createdPaths !== undefined && !validCreatedPaths(raw.createdPaths)) throw corrupt(file, 'bad createdPaths');
  return raw as unknown as VolumeRecord;
}

function validCreatedPaths(v: unknown): boolean {
  return (
    isObj(v) &&
    Object.values(v).every(
      (c) =>
        isObj(c) &&
        (c.kind === 'dir' || c.kind === 'file') &&
        typeof c.dev === 'string' &&
        /^[0-9]+$/.test(c.dev) &&
        typeof c.ino === 'string' &&
        /^[0-9]+$/.test(c.ino) &&
        (c.born === undefined || (typeof c.born === 'string' && /^[0-9]+$/.test(c.born))),
    )
  );
}

export function parseSnapshotRecord(file: string, raw: unknown): SnapshotRecord {
  if (!isObj(raw)) throw corrupt(file, 'not a JSON object');
  if (raw.version !== RECORD_VERSION) throw corrupt(file, `unsupported record version ${String(raw.version)}`);
  if (typeof raw.snapshotId !== 'string' || !isSnapshotId(raw.snapshotId)) throw corrupt(file, 'bad snapshotId');
  if (typeof raw.name !== 'string') throw corrupt(file, 'bad name');
  if (typeof raw.sourceVolumeId !== 'string' || !isVolumeId(raw.sourceVolumeId)) {
    throw corrupt(file, 'bad sourceVolumeId');
  }
  if (typeof raw.method !== 'string' || !METHODS.includes(raw.method)) throw corrupt(file, 'bad method');
  if (!Number.isSafeInteger(raw.engineSnapshotId)) throw corrupt(file, 'bad engineSnapshotId');
  if (!Number.isSafeInteger(raw.sizeBytes) || (raw.sizeBytes as number) < 0) throw corrupt(file, 'bad sizeBytes');
  if (!Number.isFinite(raw.createdAt)) throw corrupt(file, 'bad createdAt');
  if (typeof raw.readyToUse !== 'boolean') throw corrupt(file, 'bad readyToUse');
  if (!strMap(raw.parameters)) throw corrupt(file, 'bad parameters');
  if (typeof raw.phase !== 'string' || !PHASES.includes(raw.phase)) throw corrupt(file, 'bad phase');
  return raw as unknown as SnapshotRecord;
}
