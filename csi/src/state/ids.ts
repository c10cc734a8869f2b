// SPDX-License-Identifier: Apache-2.0
// Identifiers this driver issues. Volume and snapshot ids become path components (engine volume dirs, state
// files, FUSE view names), so they are generated here from random bits and every id arriving in a request
// is checked against the exact pattern before it touches a path:
//   volume   vol-<32 lowercase hex>      e.g. vol-3f1c0d2e9a8b47c6b5d4e3f2a1b0c9d8
//   snapshot snap-<32 lowercase hex>
// An id that does not match cannot name an object of ours: lookups treat it as not found (CSI's NOT_FOUND /
// idempotent delete), never as a path.
import { randomBytes } from 'node:crypto';

export const VOLUME_ID_PREFIX = 'vol-';
export const SNAPSHOT_ID_PREFIX = 'snap-';
const VOLUME_ID_RE = /^vol-[0-9a-f]{32}$/;
const SNAPSHOT_ID_RE = /^snap-[0-9a-f]{32}$/;

/** CSI names: at most 128 bytes, no control characters other than common whitespace (spec: CreateVolume). */
export const NAME_MAX_BYTES = 128;
// eslint-disable-next-line no-control-regex -- the CSI spec bans exactly these characters
const BANNED_NAME_CHARS = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]/;

export function newVolumeId(): string {
  return `${VOLUME_ID_PREFIX}${randomBytes(16).toString('hex')}`;
}

export function newSnapshotId(): string {
  return `${SNAPSHOT_ID_PREFIX}${randomBytes(16).toString('hex')}`;
}

export function isVolumeId(id: string): boolean {
  return VOLUME_ID_RE.test(id);
}

export function isSnapshotId(id: string): boolean {
  return SNAPSHOT_ID_RE.test(id);
}

/** Why `name` is not an acceptable CSI name, or undefined when it is. */
export function nameProblem(name: string): string | undefined {
  if (Buffer.byteLength(name, 'utf8') > NAME_MAX_BYTES) return `is longer than ${NAME_MAX_BYTES} bytes`;
  if (BANNED_NAME_CHARS.test(name)) return 'contains control characters';
  return undefined;
}
