// SPDX-License-Identifier: Apache-2.0
// CreateVolume / ControllerExpandVolume capacity: the smallest size that satisfies required_bytes, rounded
// up to the volume block size, bounded by limit_bytes and the driver's maximum. 0 in a field means unset.
// Capacities are int64 end to end: the fields are compared as BigInt, so a valid int64 above 2^53 (an
// "unlimited" limit_bytes of 2^63-1, or a size too large for this node) is never rounded into another value;
// only the result, at most the driver's maximum, becomes a Number.
import { CsiError } from '../errors.js';
import { type CapacityRange, type Int64, int64Exact } from '../grpc/csi-types.js';

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

function roundUpBig(n: bigint, to: bigint): bigint {
  return ((n + to - 1n) / to) * to;
}

/** A non-negative int64 field, exactly; CSI_ERR_INVALID_FIELD (INVALID_ARGUMENT) for anything else. */
export function nonNegativeInt64Exact(field: string, value: Int64 | undefined | null): bigint {
  const n = int64Exact(value);
  if (n === undefined || n < 0n) {
    throw new CsiError('CSI_ERR_INVALID_FIELD', `${field} ${String(value)} must be a non-negative int64`, {
      details: { field },
    });
  }
  return n;
}

/** The capacity to provision for `range`; OUT_OF_RANGE when no aligned size fits. */
export function resolveCapacity(range: CapacityRange | null | undefined, policy: CapacityPolicy): number {
  const required = nonNegativeInt64Exact('capacity_range.required_bytes', range?.required_bytes);
  const limit = nonNegativeInt64Exact('capacity_range.limit_bytes', range?.limit_bytes);
  if (limit > 0n && required > limit) {
    throw new CsiError('CSI_ERR_CAPACITY', `required_bytes ${required} exceeds limit_bytes ${limit}`);
  }
  const max = BigInt(policy.maxBytes);
  if (required > max) {
    throw new CsiError(
      'CSI_ERR_CAPACITY',
      `${required} bytes exceeds the maximum volume size of ${policy.maxBytes} bytes`,
    );
  }
  let size = required > 0n ? required : BigInt(policy.defaultBytes);
  if (limit > 0n && required === 0n && limit < size) size = limit;
  const min = BigInt(policy.minBytes);
  size = roundUpBig(size > min ? size : min, BigInt(policy.alignBytes));
  if (limit > 0n && size > limit) {
    throw new CsiError(
      'CSI_ERR_CAPACITY',
      `no size between required_bytes ${required} and limit_bytes ${limit} is a multiple of ${policy.alignBytes} bytes of at least ${policy.minBytes} bytes`,
    );
  }
  if (size > max) {
    throw new CsiError('CSI_ERR_CAPACITY', `${size} bytes exceeds the maximum volume size of ${policy.maxBytes} bytes`);
  }
  return Number(size);
}

/** True when an existing size satisfies `range` (CreateVolume idempotency). */
export function capacityFits(sizeBytes: number, range: CapacityRange | null | undefined): boolean {
  const required = int64Exact(range?.required_bytes) ?? 0n;
  const limit = int64Exact(range?.limit_bytes) ?? 0n;
  const size = BigInt(sizeBytes);
  return size >= required && (limit <= 0n || size <= limit);
}
