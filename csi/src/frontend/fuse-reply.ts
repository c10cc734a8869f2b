// SPDX-License-Identifier: Apache-2.0
// Encoders for FUSE replies and notifications. Each writes into `dv` at `at` and returns the bytes written.
//
// Layout of fuse_out_header (16 bytes, little-endian): 0 len u32 | 4 error i32 (0 or -errno) | 8 unique u64.
// Notifications carry unique 0 and the notify code in `error`.
import {
  ATTR_BYTES,
  ATTR_OUT_BYTES,
  DIRENT_HEADER_BYTES,
  ENTRY_OUT_BYTES,
  FUSE_NOTIFY_INVAL_ENTRY,
  FUSE_NOTIFY_RESEND,
  FUSE_NOTIFY_INVAL_INODE,
  INIT_OUT_BYTES,
  NOTIFY_INVAL_ENTRY_OUT_BYTES,
  NOTIFY_INVAL_INODE_OUT_BYTES,
  OPEN_OUT_BYTES,
  OUT_HEADER_BYTES,
  STATFS_OUT_BYTES,
  WRITE_OUT_BYTES,
} from './fuse-abi.js';

const TWO_32 = 2 ** 32;

export function encodeOutHeader(
  dv: DataView,
  totalLen: number,
  errno: number,
  uniqueLo: number,
  uniqueHi: number,
): number {
  dv.setUint32(0, totalLen, true);
  dv.setInt32(4, errno === 0 ? 0 : -Math.abs(errno), true);
  dv.setUint32(8, uniqueLo, true);
  dv.setUint32(12, uniqueHi, true);
  return OUT_HEADER_BYTES;
}

function setU64(dv: DataView, at: number, v: number): void {
  dv.setUint32(at, v % TWO_32, true);
  dv.setUint32(at + 4, Math.floor(v / TWO_32), true);
}

export interface Attr {
  readonly ino: number;
  readonly size: number;
  readonly mode: number;
  readonly nlink: number;
  readonly mtimeSec: number;
  readonly blksize: number;
}

export function encodeAttr(dv: DataView, at: number, a: Attr): number {
  setU64(dv, at, a.ino);
  setU64(dv, at + 8, a.size);
  setU64(dv, at + 16, Math.ceil(a.size / 512));
  for (const off of [24, 32, 40]) setU64(dv, at + off, a.mtimeSec); // atime, mtime, ctime
  for (let off = 48; off < ATTR_BYTES; off += 4) dv.setUint32(at + off, 0, true);
  dv.setUint32(at + 60, a.mode, true);
  dv.setUint32(at + 64, a.nlink, true);
  dv.setUint32(at + 80, a.blksize, true);
  return ATTR_BYTES;
}

export interface CacheTimeouts {
  readonly entryValidSec: number;
  readonly attrValidSec: number;
}

export function encodeEntryOut(dv: DataView, at: number, nodeId: number, a: Attr, t: CacheTimeouts): number {
  setU64(dv, at, nodeId);
  setU64(dv, at + 8, 0); // generation
  setU64(dv, at + 16, t.entryValidSec);
  setU64(dv, at + 24, t.attrValidSec);
  dv.setUint32(at + 32, 0, true);
  dv.setUint32(at + 36, 0, true);
  encodeAttr(dv, at + 40, a);
  return ENTRY_OUT_BYTES;
}

export function encodeAttrOut(dv: DataView, at: number, a: Attr, t: CacheTimeouts): number {
  setU64(dv, at, t.attrValidSec);
  dv.setUint32(at + 8, 0, true);
  dv.setUint32(at + 12, 0, true);
  encodeAttr(dv, at + 16, a);
  return ATTR_OUT_BYTES;
}

export interface InitReply {
  readonly minor: number;
  readonly maxReadahead: number;
  readonly flags: number;
  readonly maxBackground: number;
  readonly congestionThreshold: number;
  readonly maxWrite: number;
  readonly maxPages: number;
}

export function encodeInitOut(dv: DataView, at: number, r: InitReply, major: number): number {
  for (let off = 0; off < INIT_OUT_BYTES; off += 4) dv.setUint32(at + off, 0, true);
  dv.setUint32(at, major, true);
  dv.setUint32(at + 4, r.minor, true);
  dv.setUint32(at + 8, r.maxReadahead, true);
  dv.setUint32(at + 12, r.flags >>> 0, true);
  dv.setUint16(at + 16, r.maxBackground, true);
  dv.setUint16(at + 18, r.congestionThreshold, true);
  dv.setUint32(at + 20, r.maxWrite, true);
  dv.setUint32(at + 24, 1, true); // time_gran: 1 ns
  dv.setUint16(at + 28, r.maxPages, true);
  return INIT_OUT_BYTES;
}

export function encodeOpenOut(dv: DataView, at: number, fh: number, openFlags: number): number {
  setU64(dv, at, fh);
  dv.setUint32(at + 8, openFlags, true);
  dv.setUint32(at + 12, 0, true);
  return OPEN_OUT_BYTES;
}

export function encodeWriteOut(dv: DataView, at: number, size: number): number {
  dv.setUint32(at, size, true);
  dv.setUint32(at + 4, 0, true);
  return WRITE_OUT_BYTES;
}

export interface StatfsReply {
  readonly blocks: number;
  readonly bfree: number;
  readonly files: number;
  readonly bsize: number;
}

export function encodeStatfsOut(dv: DataView, at: number, s: StatfsReply): number {
  for (let off = 0; off < STATFS_OUT_BYTES; off += 4) dv.setUint32(at + off, 0, true);
  setU64(dv, at, s.blocks);
  setU64(dv, at + 8, s.bfree);
  setU64(dv, at + 16, s.bfree); // bavail
  setU64(dv, at + 24, s.files);
  setU64(dv, at + 32, 0); // ffree
  dv.setUint32(at + 40, s.bsize, true);
  dv.setUint32(at + 44, 255, true); // namelen
  dv.setUint32(at + 48, s.bsize, true); // frsize
  return STATFS_OUT_BYTES;
}

export interface DirEntry {
  readonly ino: number;
  readonly name: string;
  readonly type: number;
}

/**
 * Encodes the entries at index >= `fromOffset` that fit in `maxBytes`. Each record's `off` is the index of
 * the next entry, the cookie the kernel sends back in its next READDIR.
 */
export function encodeDirents(
  dv: DataView,
  at: number,
  entries: readonly DirEntry[],
  fromOffset: number,
  maxBytes: number,
): number {
  let used = 0;
  for (let i = fromOffset; i < entries.length; i++) {
    const e = entries[i];
    if (!e) break;
    const name = Buffer.from(e.name, 'latin1');
    const rec = (DIRENT_HEADER_BYTES + name.length + 7) & ~7;
    if (used + rec > maxBytes) break;
    const p = at + used;
    setU64(dv, p, e.ino);
    setU64(dv, p + 8, i + 1);
    dv.setUint32(p + 16, name.length, true);
    dv.setUint32(p + 20, e.type, true);
    new Uint8Array(dv.buffer, dv.byteOffset + p + DIRENT_HEADER_BYTES, rec - DIRENT_HEADER_BYTES).fill(0);
    new Uint8Array(dv.buffer, dv.byteOffset + p + DIRENT_HEADER_BYTES, name.length).set(name);
    used += rec;
  }
  return used;
}

/** A FUSE_NOTIFY_INVAL_ENTRY message (unique 0, error = notify code), for writing to /dev/fuse. */
export function encodeNotifyInvalEntry(parent: number, name: string): Uint8Array {
  const nameBytes = Buffer.from(name, 'latin1');
  const total = OUT_HEADER_BYTES + NOTIFY_INVAL_ENTRY_OUT_BYTES + nameBytes.length + 1;
  const buf = new Uint8Array(total);
  const dv = new DataView(buf.buffer);
  dv.setUint32(0, total, true);
  dv.setInt32(4, FUSE_NOTIFY_INVAL_ENTRY, true);
  setU64(dv, OUT_HEADER_BYTES, parent);
  dv.setUint32(OUT_HEADER_BYTES + 8, nameBytes.length, true);
  buf.set(nameBytes, OUT_HEADER_BYTES + NOTIFY_INVAL_ENTRY_OUT_BYTES);
  return buf;
}

/** A FUSE_NOTIFY_RESEND message: a bare out header (unique 0, error = the notify code). */
export function encodeNotifyResend(): Uint8Array {
  const buf = new Uint8Array(OUT_HEADER_BYTES);
  const dv = new DataView(buf.buffer);
  dv.setUint32(0, OUT_HEADER_BYTES, true);
  dv.setInt32(4, FUSE_NOTIFY_RESEND, true);
  return buf;
}

/**
 * A FUSE_NOTIFY_INVAL_INODE message: the kernel forgets the cached attributes of `nodeId` (its next stat or
 * size lookup sends GETATTR). `offset` -1 keeps the page cache; offset >= 0 also drops the pages of
 * [offset, offset + length), length 0 meaning to the end.
 */
export function encodeNotifyInvalInode(nodeId: number, offset = -1, length = 0): Uint8Array {
  const total = OUT_HEADER_BYTES + NOTIFY_INVAL_INODE_OUT_BYTES;
  const buf = new Uint8Array(total);
  const dv = new DataView(buf.buffer);
  dv.setUint32(0, total, true);
  dv.setInt32(4, FUSE_NOTIFY_INVAL_INODE, true);
  setU64(dv, OUT_HEADER_BYTES, nodeId);
  dv.setBigInt64(OUT_HEADER_BYTES + 8, BigInt(offset), true);
  dv.setBigInt64(OUT_HEADER_BYTES + 16, BigInt(length), true);
  return buf;
}
