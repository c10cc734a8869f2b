// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from 'vitest';
import { CsiError } from '../errors.js';
import { int64Exact } from '../grpc/csi-types.js';
import { capacityFits, resolveCapacity } from './capacity.js';

const MiB = 1024 * 1024;
const policy = { defaultBytes: 8 * MiB, alignBytes: 4096, minBytes: MiB, maxBytes: 16 * 1024 ** 4 };
const MAX = ((1n << 63n) - 1n).toString();

function outcome(range: { required_bytes?: string; limit_bytes?: string }): string {
  try {
    return String(resolveCapacity(range, policy));
  } catch (err) {
    expect(err).toBeInstanceOf(CsiError);
    return `${(err as CsiError).grpcStatus}: ${(err as Error).message}`;
  }
}

describe('capacities are int64 end to end', () => {
  it.each([
    ['1-1 unset is the default', {}, String(8 * MiB)],
    ['1-2 not block aligned rounds up', { required_bytes: String(MiB + 1) }, String(MiB + 4096)],
    ['1-3 2^63-1 as a limit is no limit', { required_bytes: String(4 * MiB), limit_bytes: MAX }, String(4 * MiB)],
    [
      '1-4 2^53+1 is too large, exactly',
      { required_bytes: '9007199254740993' },
      'OUT_OF_RANGE: 9007199254740993 bytes',
    ],
    ['1-5 2^63-1 is too large, not invalid', { required_bytes: MAX }, `OUT_OF_RANGE: ${MAX} bytes`],
    ['1-6 2^63 is not an int64', { required_bytes: '9223372036854775808' }, 'INVALID_ARGUMENT'],
    ['1-7 negative', { required_bytes: '-1' }, 'INVALID_ARGUMENT'],
    ['1-8 negative limit', { limit_bytes: '-5' }, 'INVALID_ARGUMENT'],
    ['1-9 not a number', { required_bytes: '12abc' }, 'INVALID_ARGUMENT'],
    ['1-10 required above limit', { required_bytes: String(8 * MiB), limit_bytes: String(4 * MiB) }, 'OUT_OF_RANGE'],
    [
      '1-11 no aligned size below the limit',
      { required_bytes: String(MiB + 1), limit_bytes: String(MiB + 2) },
      'OUT_OF_RANGE',
    ],
    ['1-12 a limit alone caps the default', { limit_bytes: String(2 * MiB) }, String(2 * MiB)],
  ])('%s', (_n, range, want) => {
    expect(outcome(range)).toContain(want);
  });

  it('1-13 capacityFits compares exactly', () => {
    expect(capacityFits(4 * MiB, { required_bytes: String(4 * MiB), limit_bytes: MAX })).toBe(true);
    expect(capacityFits(4 * MiB, { required_bytes: '9007199254740993' })).toBe(false);
  });

  it('1-14 int64Exact keeps every digit', () => {
    expect(int64Exact('9007199254740993')).toBe(9007199254740993n);
    expect(int64Exact(MAX)).toBe((1n << 63n) - 1n);
    expect(int64Exact('-9223372036854775808')).toBe(-(1n << 63n));
    expect(int64Exact('9223372036854775808')).toBeUndefined();
    expect(int64Exact('1e3')).toBeUndefined();
    expect(int64Exact(1.5)).toBeUndefined();
    expect(int64Exact('')).toBe(0n);
  });
});
