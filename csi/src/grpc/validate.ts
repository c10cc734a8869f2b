// SPDX-License-Identifier: Apache-2.0
// Required-field and shape checks shared by the service handlers (INVALID_ARGUMENT with the field's name).
import { CsiError, missing } from '../errors.js';
import { checkPath } from '../driver/paths.js';
import { nameProblem } from '../state/ids.js';
import { int64, type Int64, type StringMap, type VolumeCapability } from './csi-types.js';

export function requireString(field: string, value: string | undefined | null): string {
  if (value === undefined || value === null || value === '') throw missing(field);
  return value;
}

export function requireName(field: string, value: string | undefined): string {
  const name = requireString(field, value);
  const problem = nameProblem(name);
  if (problem) throw new CsiError('CSI_ERR_INVALID_FIELD', `${field} ${problem}`);
  return name;
}

export function requirePath(field: string, value: string | undefined): string {
  return checkPath(field, requireString(field, value));
}

export function requireCapability(field: string, cap: VolumeCapability | null | undefined): VolumeCapability {
  if (!cap) throw missing(field);
  return cap;
}

export function requireCapabilities(field: string, caps: VolumeCapability[] | undefined): VolumeCapability[] {
  if (!caps || caps.length === 0) throw missing(field);
  return caps;
}

export function nonNegativeInt64(field: string, value: Int64 | undefined): number {
  const n = int64(value);
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new CsiError('CSI_ERR_INVALID_FIELD', `${field} ${String(value)} must be a non-negative integer`);
  }
  return n;
}

/** Maps must be plain string maps (secrets are never inspected). */
export function stringMap(value: StringMap | undefined): Record<string, string> {
  return { ...(value ?? {}) };
}
