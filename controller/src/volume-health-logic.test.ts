// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from 'vitest';
import { decideVolumeHealth } from './volume-health-logic.js';

describe('decideVolumeHealth', () => {
  const full = { abnormal: true, message: 'writes refused: ENOSPC' };
  it('reports an abnormal condition once per message', () => {
    expect(decideVolumeHealth(undefined, full)).toEqual({ type: 'abnormal', message: full.message });
    expect(decideVolumeHealth(full.message, full)).toEqual({ type: 'none' });
    expect(decideVolumeHealth('older reason', full)).toEqual({ type: 'abnormal', message: full.message });
  });
  it('says when the volume is healthy again, and nothing while it stays healthy', () => {
    expect(decideVolumeHealth(full.message, { abnormal: false, message: '' })).toEqual({
      type: 'normal',
      previous: full.message,
    });
    expect(decideVolumeHealth(undefined, { abnormal: false, message: '' })).toEqual({ type: 'none' });
  });
  it('gives an abnormal condition without a message a default one; an unknown volume says nothing', () => {
    expect(decideVolumeHealth(undefined, { abnormal: true, message: '' })).toEqual({
      type: 'abnormal',
      message: 'the node plugin reports the volume abnormal',
    });
    expect(decideVolumeHealth('x', undefined)).toEqual({ type: 'none' });
  });
});
