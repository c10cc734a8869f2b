// SPDX-License-Identifier: Apache-2.0
// Volume capabilities this driver provides: a node-local block device (loop on a FUSE view), used raw
// (`block`) or with an ext4/xfs file system (`mount`), by one node. Multi-node access modes are refused.
import { parseFsType, SUPPORTED_FS_TYPES } from '../mount/filesystem.js';
import type { AccessModeName, VolumeCapability } from '../grpc/csi-types.js';
import type { AccessType } from '../state/records.js';

export const SUPPORTED_ACCESS_MODES: readonly AccessModeName[] = [
  'SINGLE_NODE_WRITER',
  'SINGLE_NODE_READER_ONLY',
  'SINGLE_NODE_SINGLE_WRITER',
  'SINGLE_NODE_MULTI_WRITER',
];

/** CSI access mode names in enum order. */
export const MODE_NAMES: readonly AccessModeName[] = [
  'UNKNOWN',
  'SINGLE_NODE_WRITER',
  'SINGLE_NODE_READER_ONLY',
  'MULTI_NODE_READER_ONLY',
  'MULTI_NODE_SINGLE_WRITER',
  'MULTI_NODE_MULTI_WRITER',
  'SINGLE_NODE_SINGLE_WRITER',
  'SINGLE_NODE_MULTI_WRITER',
];

export function accessModeOf(cap: VolumeCapability): AccessModeName {
  const m = cap.access_mode?.mode;
  if (typeof m === 'number') return MODE_NAMES[m] ?? 'UNKNOWN';
  return m ?? 'UNKNOWN';
}

export function accessTypeOf(cap: VolumeCapability): AccessType | undefined {
  if (cap.access_type === 'block' || (cap.block && !cap.mount)) return 'block';
  if (cap.access_type === 'mount' || cap.mount) return 'mount';
  return undefined;
}

export function isReadOnlyMode(mode: AccessModeName): boolean {
  return mode === 'SINGLE_NODE_READER_ONLY' || mode === 'MULTI_NODE_READER_ONLY';
}

export function isSingleWriterMode(mode: AccessModeName): boolean {
  return mode === 'SINGLE_NODE_SINGLE_WRITER';
}

/** fs_type of a mount capability ('' when unset). */
export function fsTypeOf(cap: VolumeCapability): string {
  return cap.mount?.fs_type ?? '';
}

/** Why this driver cannot provide `cap`, or undefined when it can. */
export function capabilityProblem(cap: VolumeCapability): string | undefined {
  const type = accessTypeOf(cap);
  if (type === undefined) return 'access_type (block or mount) missing in volume capability';
  const mode = accessModeOf(cap);
  if (mode === 'UNKNOWN') return 'access_mode missing in volume capability';
  if (!SUPPORTED_ACCESS_MODES.includes(mode)) {
    return `access mode ${mode} is not supported (volumes are node-local: ${SUPPORTED_ACCESS_MODES.join(', ')})`;
  }
  if (type === 'mount') {
    const fs = fsTypeOf(cap);
    if (fs !== '' && !(SUPPORTED_FS_TYPES as readonly string[]).includes(fs)) {
      return `fs_type ${JSON.stringify(fs)} is not supported (supported: ${SUPPORTED_FS_TYPES.join(', ')})`;
    }
    if (cap.mount?.volume_mount_group) return 'volume_mount_group is not supported';
  }
  return undefined;
}

/** The first problem among `caps`, or undefined when every capability can be provided. */
export function capabilitiesProblem(caps: readonly VolumeCapability[]): string | undefined {
  for (const c of caps) {
    const p = capabilityProblem(c);
    if (p !== undefined) return p;
  }
  return undefined;
}

/** The file-system type to stage with: the capability's, else the volume's, else `fallback`. */
export function resolveFsType(cap: VolumeCapability, volumeFsType: string, fallback: string): string {
  const fs = fsTypeOf(cap) || volumeFsType || fallback;
  return parseFsType(fs);
}
