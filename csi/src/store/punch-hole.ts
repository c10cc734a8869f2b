// SPDX-License-Identifier: Apache-2.0
// fallocate(2) with FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE through koffi (Node has no fallocate): gives
// a range of a file back to the file system while the file keeps its size (the range reads as zeros). Used
// to return the space of free save-pool slots (issue 15: a deleted snapshot's space comes back). Linux with
// glibc only; elsewhere, or when the file system cannot punch (EOPNOTSUPP), punchHole answers false.
import koffi from 'koffi';

const FALLOC_FL_KEEP_SIZE = 1;
const FALLOC_FL_PUNCH_HOLE = 2;

type Fallocate = (fd: number, mode: number, offset: bigint, length: bigint) => number;
let fallocate: Fallocate | null | undefined;

function fn(): Fallocate | null {
  if (fallocate !== undefined) return fallocate;
  try {
    if (process.platform !== 'linux') throw new Error('not Linux');
    const libc = koffi.load('libc.so.6');
    fallocate = libc.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)') as Fallocate;
  } catch {
    fallocate = null;
  }
  return fallocate;
}

/** Punches [offset, offset + length) of `fd`; true when the space was given back. */
export function punchHole(fd: number, offset: number, length: number): boolean {
  const f = fn();
  if (f === null || length <= 0) return false;
  return f(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, BigInt(offset), BigInt(length)) === 0;
}
