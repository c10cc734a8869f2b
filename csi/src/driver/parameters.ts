// SPDX-License-Identifier: Apache-2.0
// StorageClass (CreateVolume) and VolumeSnapshotClass (CreateSnapshot) parameters this driver accepts.
// Keys under `csi.storage.k8s.io/` are metadata the external sidecars add (PVC/PV/VolumeSnapshot names with
// --extra-create-metadata) and are ignored; any other unknown key is INVALID_ARGUMENT, so a typo in a class
// never silently gives the default behaviour.
import { CsiError } from '../errors.js';
import type { StringMap } from '../grpc/csi-types.js';
import type { SnapshotMethod } from '../state/records.js';

export const SIDECAR_PARAMETER_PREFIX = 'csi.storage.k8s.io/';
export const SNAPSHOT_METHODS: readonly SnapshotMethod[] = ['save-volume', 'meta-bitmap', 'clone'];
export const DEFAULT_SNAPSHOT_METHOD: SnapshotMethod = 'save-volume';

export interface VolumeParameters {
  /**
   * Turn a volume restored or cloned thinly into an independent one in the background (ADR 0012): default
   * true; `hydrate: "false"` keeps it a thin clone for good (online VolumeRefresh, no copy; it then pins its
   * snapshot and shares the source's save pool).
   */
  readonly hydrate: boolean;
}

/** A restore or clone hydrates unless its class says `hydrate: "false"`. */
export const HYDRATE_BY_DEFAULT = true;

export interface SnapshotParameters {
  readonly method: SnapshotMethod;
}

const VOLUME_KEYS = ['hydrate'];
const SNAPSHOT_KEYS = ['method'];

function unknownKeys(params: StringMap, known: readonly string[]): string[] {
  return Object.keys(params).filter((k) => !known.includes(k) && !k.startsWith(SIDECAR_PARAMETER_PREFIX));
}

function bool(key: string, value: string | undefined, fallback: boolean): boolean {
  if (value === undefined || value === '') return fallback;
  if (value === 'true') return true;
  if (value === 'false') return false;
  throw new CsiError('CSI_ERR_BAD_PARAMETER', `parameter ${key}=${JSON.stringify(value)}: expected "true" or "false"`);
}

export function parseVolumeParameters(params: StringMap | undefined): VolumeParameters {
  const p = params ?? {};
  const unknown = unknownKeys(p, VOLUME_KEYS);
  if (unknown.length > 0) {
    throw new CsiError(
      'CSI_ERR_BAD_PARAMETER',
      `unknown StorageClass parameter(s) ${unknown.join(', ')} (known: ${VOLUME_KEYS.join(', ')})`,
    );
  }
  return { hydrate: bool('hydrate', p.hydrate, HYDRATE_BY_DEFAULT) };
}

export function parseSnapshotParameters(params: StringMap | undefined): SnapshotParameters {
  const p = params ?? {};
  const unknown = unknownKeys(p, SNAPSHOT_KEYS);
  if (unknown.length > 0) {
    throw new CsiError(
      'CSI_ERR_BAD_PARAMETER',
      `unknown VolumeSnapshotClass parameter(s) ${unknown.join(', ')} (known: ${SNAPSHOT_KEYS.join(', ')})`,
    );
  }
  const method = p.method === undefined || p.method === '' ? DEFAULT_SNAPSHOT_METHOD : p.method;
  if (!(SNAPSHOT_METHODS as readonly string[]).includes(method)) {
    throw new CsiError(
      'CSI_ERR_BAD_PARAMETER',
      `parameter method=${JSON.stringify(method)}: expected one of ${SNAPSHOT_METHODS.join(', ')}`,
    );
  }
  return { method: method as SnapshotMethod };
}

/** Parameters worth keeping with a record (the sidecars' metadata keys are dropped). */
export function persistedParameters(params: StringMap | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(params ?? {})) if (!k.startsWith(SIDECAR_PARAMETER_PREFIX)) out[k] = v;
  return out;
}

/** A volume record's parameters: the class's own, with the resolved `hydrate` choice always spelled out. */
export function persistedVolumeParameters(params: StringMap | undefined): Record<string, string> {
  return { ...persistedParameters(params), hydrate: String(parseVolumeParameters(params).hydrate) };
}

/**
 * Whether a persisted volume hydrates. Records store the resolved choice (`persistedVolumeParameters`); one without
 * the key was created while thin was the default, and stays thin.
 */
export function recordHydrates(parameters: Readonly<Record<string, string>>): boolean {
  return parameters.hydrate === 'true';
}
