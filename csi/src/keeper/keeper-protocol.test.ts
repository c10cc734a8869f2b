// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from 'vitest';
import { decodeMessage, encodeMessage, keeperSocketPath, restartDelayMs } from './keeper-protocol.js';

describe('keeper protocol', () => {
  it('encodes and decodes the messages between keepers', () => {
    for (const m of [
      { t: 'handover', pid: 4242 },
      { t: 'done' },
      { t: 'connection', connectionId: 40 },
      { t: 'refused', reason: 'not serving yet' },
    ] as const) {
      expect(decodeMessage(encodeMessage(m))).toEqual(m);
    }
  });

  it('rejects a payload without a type', () => {
    expect(() => decodeMessage(Buffer.from('{"pid":1}'))).toThrow(/without a type/);
    expect(() => decodeMessage(Buffer.from('not json'))).toThrow(SyntaxError);
  });

  it('restarts at once after a crash, then backs off exponentially up to 30 s', () => {
    expect([1, 2, 3, 4, 5].map(restartDelayMs)).toEqual([0, 250, 500, 1000, 2000]);
    expect(restartDelayMs(50)).toBe(30_000);
  });

  it('keeps its socket in the state dir', () => {
    expect(keeperSocketPath('/var/lib/loopsnap')).toBe('/var/lib/loopsnap/keeper.sock');
  });
});
