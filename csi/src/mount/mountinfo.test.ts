// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from 'vitest';
import { parseMountInfo, unescapeMountField } from './mountinfo.js';

describe('parseMountInfo', () => {
  it('1-1 parses fields around optional tags and the separator', () => {
    const text = [
      '36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue',
      '90 25 0:52 / /var/lib/loopsnap/fuse rw,nosuid,nodev,relatime shared:5 - fuse.loopsnap loopsnap rw,user_id=0',
      '91 25 7:3 / /var/lib/kubelet/staging\\040dir rw,relatime - ext4 /dev/loop3 rw',
    ].join('\n');
    const m = parseMountInfo(text);
    expect(m).toHaveLength(3);
    expect(m[0]).toMatchObject({ id: 36, parentId: 35, major: 98, minor: 0, root: '/mnt1', mountPoint: '/mnt2' });
    expect(m[0]).toMatchObject({ fsType: 'ext3', source: '/dev/root', superOptions: 'rw,errors=continue' });
    expect(m[1]).toMatchObject({ fsType: 'fuse.loopsnap', minor: 52, mountPoint: '/var/lib/loopsnap/fuse' });
    expect(m[2]).toMatchObject({
      major: 7,
      minor: 3,
      mountPoint: '/var/lib/kubelet/staging dir',
      source: '/dev/loop3',
    });
  });

  it('1-2 skips lines without a separator and blank lines', () => {
    expect(parseMountInfo('garbage line\n\n1 2 3:4 / /x rw\n')).toEqual([]);
  });

  it('1-3 unescapes octal escapes for space, tab, newline and backslash', () => {
    expect(unescapeMountField('a\\040b\\011c\\012d\\134e')).toBe('a b\tc\nd\\e');
  });
});
