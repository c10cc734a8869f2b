// SPDX-License-Identifier: Apache-2.0
// volume_capability.mount.mount_flags, checked before anything is attached or mounted. Each flag is one
// mount option (`noatime`, `errors=remount-ro`); the node plugin refuses, as INVALID_ARGUMENT
// (CSI_ERR_BAD_MOUNT_FLAGS), what it cannot pass to mount(8) safely:
//   - malformed flags: empty, over 256 bytes, commas (one flag would smuggle in several), spaces, quotes,
//     control characters; more than 64 flags
//   - options that make mount(8) do something else than mount the staged device: bind, rbind, move,
//     remount, loop (and offset/sizelimit/encryption), helper=/uhelper=, user/users/owner/group/nofail/noauto
//     and the other fstab-only options, x-* and X-* (X-mount.mkdir would create directories)
//   - `rw` on a read-only volume (snapshots, read-only access modes)
// What remains goes to the file system's own parser before the mount (path-ops.ts checkFsOptions).
import { CsiError } from '../errors.js';

export const MOUNT_FLAGS_MAX = 64;
export const MOUNT_FLAG_MAX_BYTES = 256;

const FLAG_RE = /^[A-Za-z0-9_][A-Za-z0-9_.:@+%/=-]*$/;

/** Option names (before `=`) the node plugin decides itself or that are not for the kernel. */
export const RESERVED_MOUNT_OPTIONS: ReadonlySet<string> = new Set([
  'bind',
  'rbind',
  'move',
  'rmove',
  'remount',
  'loop',
  'offset',
  'sizelimit',
  'encryption',
  'helper',
  'uhelper',
  'user',
  'nouser',
  'users',
  'owner',
  'group',
  'auto',
  'noauto',
  'nofail',
  '_netdev',
  'comment',
  'source',
  'fstype',
  'make-shared',
  'make-private',
  'make-slave',
  'make-unbindable',
]);

function bad(flag: string, why: string): CsiError {
  return new CsiError('CSI_ERR_BAD_MOUNT_FLAGS', `mount flag ${JSON.stringify(flag.slice(0, 80))} ${why}`, {
    details: { flag: flag.slice(0, 256) },
  });
}

/** The flags, checked (see the header); CSI_ERR_BAD_MOUNT_FLAGS for the first one refused. */
export function checkMountFlags(flags: readonly unknown[] | undefined | null, readOnly: boolean): string[] {
  const list = flags ?? [];
  if (list.length > MOUNT_FLAGS_MAX) {
    throw new CsiError(
      'CSI_ERR_BAD_MOUNT_FLAGS',
      `${list.length} mount flags; at most ${MOUNT_FLAGS_MAX} are accepted`,
    );
  }
  const out: string[] = [];
  for (const f of list) {
    if (typeof f !== 'string') throw bad(String(f), 'is not a string');
    if (f === '') throw bad(f, 'is empty');
    if (Buffer.byteLength(f) > MOUNT_FLAG_MAX_BYTES) throw bad(f, `is longer than ${MOUNT_FLAG_MAX_BYTES} bytes`);
    if (f.includes(',')) throw bad(f, 'contains a comma: give each option as a flag of its own');
    if (!FLAG_RE.test(f))
      throw bad(f, 'contains characters mount options do not use (spaces, quotes, control characters, ...)');
    const name = f.split('=', 1)[0]!.toLowerCase();
    if (RESERVED_MOUNT_OPTIONS.has(name) || name.startsWith('x-')) {
      throw bad(
        f,
        'is reserved: the node plugin decides how the volume is mounted (no binds, loops, helpers or mount(8) extensions)',
      );
    }
    if (readOnly && name === 'rw') throw bad(f, 'asks for a writable mount of a read-only volume');
    out.push(f);
  }
  return out;
}
