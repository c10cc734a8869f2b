// SPDX-License-Identifier: Apache-2.0
// The I/O ports of a data-path worker's session and the O_DIRECT helpers it uses.
import { Errno, OUT_HEADER_BYTES } from './fuse-abi.js';

/** The /dev/fuse descriptor as the session sees it. Errors are returned as negative errno values. */
export interface FuseDeviceIo {
  read(buf: Uint8Array): number;
  write(buf: Uint8Array, length: number): number;
}

/** Positional file I/O on view descriptors (throws Node errors carrying `errno`). */
export interface FileIo {
  pread(fd: number, buf: Uint8Array, offset: number, length: number, position: number): number;
  pwrite(fd: number, buf: Uint8Array, offset: number, length: number, position: number): number;
  fdatasync(fd: number): void;
}

/** Marks a handler path that has answered its request (exactly one reply per answerable request). */
export type Sent = 'sent';
export const SENT: Sent = 'sent';

/** errno of a Node fs exception (its `errno` is negative), EIO for anything else. */
export function errnoOf(err: unknown): number {
  const e = (err as { errno?: unknown } | null)?.errno;
  if (typeof e === 'number' && e !== 0) return Math.abs(e);
  return Errno.EIO;
}

/** O_DIRECT alignment asked of requests and buffers (the logical block size of common disks). */
export const DIRECT_ALIGN_BYTES = 512;
/** How far into a buffer the alignment probe looks (a page covers every 512-byte phase). */
export const DIRECT_PROBE_SPAN_BYTES = 4096;
const DIRECT_PROBE_READ_BYTES = 4096;

export function aligned(offset: number, length: number): boolean {
  return offset % DIRECT_ALIGN_BYTES === 0 && length % DIRECT_ALIGN_BYTES === 0;
}

/**
 * Finds the first position >= OUT_HEADER_BYTES in `buf` whose address suits O_DIRECT, by reading a page of
 * `probeFd` (an O_DIRECT descriptor of a fully written file, so no hole hides a misalignment) at every
 * 16-byte phase: the kernel answers EINVAL for misaligned buffers, and Node cannot tell addresses. The
 * answer must be unique among neighbouring phases, else -1 (no O_DIRECT).
 */
export function probeDirectPosition(buf: Uint8Array, probeFd: number, file: Pick<FileIo, 'pread'>): number {
  const works = (k: number): boolean => {
    try {
      return file.pread(probeFd, buf, k, DIRECT_PROBE_READ_BYTES, 0) === DIRECT_PROBE_READ_BYTES;
    } catch {
      return false;
    }
  };
  for (let k = OUT_HEADER_BYTES; k < OUT_HEADER_BYTES + DIRECT_PROBE_SPAN_BYTES; k += 16) {
    if (works(k)) return works(k + 16) ? -1 : k;
  }
  return -1;
}
