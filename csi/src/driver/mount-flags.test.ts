// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from 'vitest';
import { CsiError } from '../errors.js';
import { checkMountFlags } from './mount-flags.js';

describe('checkMountFlags', () => {
  it.each([
    ['1-1 none', [], false, 'ok'],
    [
      '1-2 ordinary options',
      ['noatime', 'errors=remount-ro', 'discard', 'context=system_u:object_r:x:s0'],
      false,
      'ok',
    ],
    ['1-3 a comma smuggles options', ['noatime,bind'], false, 'comma'],
    ['1-4 bind', ['bind'], false, 'reserved'],
    ['1-5 loop with an offset', ['offset=4096'], false, 'reserved'],
    ['1-6 X-mount.mkdir', ['X-mount.mkdir=0755'], false, 'reserved'],
    ['1-7 x-systemd', ['x-systemd.automount'], false, 'reserved'],
    ['1-8 helper', ['helper=evil'], false, 'reserved'],
    ['1-9 spaces and quotes', ['a b'], false, 'characters'],
    ['1-10 NUL', ['a\0b'], false, 'characters'],
    ['1-11 empty', [''], false, 'empty'],
    ['1-12 too long', ['a'.repeat(257)], false, 'longer than 256'],
    ['1-13 too many', Array.from({ length: 65 }, (_, i) => `o${i}`), false, 'at most 64'],
    ['1-14 rw on a read-only volume', ['rw'], true, 'read-only'],
    ['1-15 ro on a read-only volume', ['ro'], true, 'ok'],
    ['1-16 not a string', [42], false, 'not a string'],
  ])('%s', (_n, flags, readOnly, want) => {
    let got = 'ok';
    try {
      checkMountFlags(flags as unknown[], readOnly);
    } catch (err) {
      expect(err).toBeInstanceOf(CsiError);
      expect((err as CsiError).code).toBe('CSI_ERR_BAD_MOUNT_FLAGS');
      expect((err as CsiError).grpcStatus).toBe('INVALID_ARGUMENT');
      got = (err as Error).message;
    }
    expect(got).toContain(want);
  });
});
