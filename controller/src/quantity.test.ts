// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from 'vitest';
import { formatQuantityBytes, nsToTime, parseQuantityBytes } from './quantity.js';

describe('quantities', () => {
  it.each([
    ['1Gi', 1073741824n],
    ['64Mi', 67108864n],
    ['1G', 1000000000n],
    ['1.5Gi', 1610612736n],
    ['1e3', 1000n],
    ['100', 100n],
    ['0.5', 1n],
  ])('2-1 - parses %s', (q, bytes) => {
    expect(parseQuantityBytes(q)).toBe(bytes);
  });

  it('2-2 - rejects garbage with a clear error', () => {
    expect(() => parseQuantityBytes('ten gigs')).toThrow(/invalid quantity "ten gigs"/);
  });

  it.each([
    [1073741824n, '1Gi'],
    [67108864n, '64Mi'],
    [1000n, '1000'],
    [0n, '0'],
    [3n * 1024n, '3Ki'],
  ])('2-3 - formats %s bytes as %s and round-trips', (bytes, q) => {
    expect(formatQuantityBytes(bytes)).toBe(q);
    expect(parseQuantityBytes(q)).toBe(bytes);
  });

  it('2-4 - formats nanosecond timestamps as metav1.Time', () => {
    expect(nsToTime(1_700_000_000_123_456_789n)).toBe('2023-11-14T22:13:20Z');
  });
});
