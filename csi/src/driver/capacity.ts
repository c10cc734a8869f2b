// SPDX-License-Identifier: Apache-2.0
// CreateVolume / ControllerExpandVolume capacity: the smallest size that satisfies required_bytes, rounded
// up to the volume block size, bounded by limit_bytes and the driver's maximum. 0 in a field means unset.
import { CsiError } from '../errors.js';
import { type CapacityRange, int64 } from '../grpc/csi-types.js';

export interface CapacityPolicy {
  /** Size when the request gives no required_bytes. */
  readonly defaultBytes: number;
  /** Sizes are multiples of this (the engine block size). */
  readonly alignBytes: number;
  readonly minBytes: number;
  readonly maxBytes: number;
}

export function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

/** The capacity to provision for `range`; OUT_OF_RANGE when no aligned size fits. */
export function resolveCapacity(range: CapacityRange | null | undefined, policy: CapacityPolicy): number {
  const required = int64(range?.required_bytes);
  const limit = int64(range?.limit_bytes);
  if (!Number.isSafeInteger(required) || required < 0) {
    throw new CsiError(
      'CSI_ERR_INVALID_FIELD',
      `capacity_range.required_bytes ${String(range?.required_bytes)} is invalid`,
    );
  }
  if (!Number.isSafeInteger(limit) || limit < 0) {
    throw new CsiError('CSI_ERR_INVALID_FIELD', `capacity_range.limit_bytes ${String(range?.limit_bytes)} is invalid`);
  }
  if (limit > 0 && required > limit) {
    throw new CsiError('CSI_ERR_CAPACITY', `required_bytes ${required} exceeds limit_bytes ${limit}`);
  }
  let size = required > 0 ? required : policy.defaultBytes;
  if (limit > 0 && required === 0) size = Math.min(size, limit);
  size = roundUp(Math.max(size, policy.minBytes), policy.alignBytes);
  if (limit > 0 && size > limit) {
    throw new CsiError(
      'CSI_ERR_CAPACITY',
      `no size between required_bytes ${required} and limit_bytes ${limit} is a multiple of ${policy.alignBytes} bytes of at least ${policy.minBytes} bytes`,
    );
  }
  if (size > policy.maxBytes) {
    throw new CsiError('CSI_ERR_CAPACITY', `${size} bytes exceeds the maximum volume size of ${policy.maxBytes} bytes`);
  }
  return size;
}

/** True when an existing size satisfies `range` (CreateVolume idempotency). */
export function capacityFits(sizeBytes: number, range: CapacityRange | null | undefined): boolean {
  const required = int64(range?.required_bytes);
  const limit = int64(range?.limit_bytes);
  return sizeBytes >= required && (limit === 0 || sizeBytes <= limit);
}
