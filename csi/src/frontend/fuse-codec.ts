// SPDX-License-Identifier: Apache-2.0
// Bounds-checked parser for FUSE requests read from /dev/fuse (replies: fuse-reply.ts).
//
// Invariant: parseRequest never throws and never reads outside [0, length) of its buffer. A request whose
// fuse_in_header is readable but whose body is short or inconsistent becomes { op: 'malformed' } and is
// answered with an error; a frame too short to carry a header (so no `unique` to answer) becomes
// { op: 'garbage' } and is dropped. Offsets beyond 2^53 are rejected as malformed (EOVERFLOW).
//
// Layout of fuse_in_header (40 bytes, little-endian):
//   0 len u32 | 4 opcode u32 | 8 unique u64 | 16 nodeid u64 | 24 uid u32 | 28 gid u32 | 32 pid u32 |
//   36 total_extlen u16 | 38 padding u16
import {
  Errno,
  FALLOCATE_IN_BYTES,
  FLUSH_IN_BYTES,
  FSYNC_IN_BYTES,
  FUSE_FSYNC_FDATASYNC,
  GETATTR_IN_BYTES,
  IN_HEADER_BYTES,
  INIT_IN_MIN_BYTES,
  INTERRUPT_IN_BYTES,
  OPEN_IN_BYTES,
  Opcode,
  READ_IN_BYTES,
  RELEASE_IN_BYTES,
  SETATTR_IN_BYTES,
  WRITE_IN_BYTES,
} from './fuse-abi.js';

/** Longest file name we accept in LOOKUP (NAME_MAX). */
export const MAX_NAME_BYTES = 255;

export interface RequestHeader {
  readonly len: number;
  readonly opcode: number;
  /** `unique` as two 32-bit halves, echoed verbatim in the reply. */
  readonly uniqueLo: number;
  readonly uniqueHi: number;
  readonly nodeId: number;
  readonly uid: number;
  readonly gid: number;
  readonly pid: number;
}

export type FuseRequest =
  | {
      readonly op: 'init';
      readonly h: RequestHeader;
      major: number;
      minor: number;
      maxReadahead: number;
      flags: number;
    }
  | { readonly op: 'lookup'; readonly h: RequestHeader; name: string }
  | { readonly op: 'forget'; readonly h: RequestHeader }
  | { readonly op: 'getattr'; readonly h: RequestHeader }
  | { readonly op: 'setattr'; readonly h: RequestHeader; valid: number; size: number }
  | { readonly op: 'open' | 'opendir'; readonly h: RequestHeader; flags: number }
  | { readonly op: 'read' | 'readdir'; readonly h: RequestHeader; fh: number; offset: number; size: number }
  | { readonly op: 'write'; readonly h: RequestHeader; fh: number; offset: number; size: number; dataOffset: number }
  | { readonly op: 'statfs' | 'destroy'; readonly h: RequestHeader }
  | { readonly op: 'release' | 'releasedir' | 'flush'; readonly h: RequestHeader; fh: number }
  | { readonly op: 'fsync' | 'fsyncdir'; readonly h: RequestHeader; fh: number; datasync: boolean }
  | { readonly op: 'interrupt'; readonly h: RequestHeader; targetLo: number; targetHi: number }
  | { readonly op: 'fallocate'; readonly h: RequestHeader; fh: number; offset: number; length: number; mode: number }
  | { readonly op: 'unknown'; readonly h: RequestHeader }
  | { readonly op: 'malformed'; readonly h: RequestHeader; errno: number; reason: string }
  | { readonly op: 'garbage'; reason: string };

const TWO_32 = 2 ** 32;
const MAX_SAFE_HI = 2 ** 21; // hi word of a u64 that still fits in a double exactly

class Malformed {
  constructor(
    readonly errno: number,
    readonly reason: string,
  ) {}
}

/** Cursor over the request body; every read checks the bound first. */
class BodyReader {
  constructor(
    private readonly dv: DataView,
    private pos: number,
    private readonly end: number,
  ) {}

  need(bytes: number, what: string): void {
    if (this.pos + bytes > this.end) throw new Malformed(Errno.EINVAL, `${what}: body shorter than ${bytes} bytes`);
  }

  u32(): number {
    const v = this.dv.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }

  u64(what: string): number {
    const lo = this.dv.getUint32(this.pos, true);
    const hi = this.dv.getUint32(this.pos + 4, true);
    this.pos += 8;
    if (hi >= MAX_SAFE_HI) throw new Malformed(Errno.EOVERFLOW, `${what} exceeds 2^53`);
    return hi * TWO_32 + lo;
  }

  skip(bytes: number): void {
    this.pos += bytes;
  }

  get offset(): number {
    return this.pos;
  }

  get remaining(): number {
    return this.end - this.pos;
  }
}

export function parseHeader(dv: DataView, length: number): RequestHeader | string {
  if (length < IN_HEADER_BYTES || dv.byteLength < IN_HEADER_BYTES) return `frame of ${length} bytes has no header`;
  const len = dv.getUint32(0, true);
  const nodeLo = dv.getUint32(16, true);
  const nodeHi = dv.getUint32(20, true);
  return {
    len,
    opcode: dv.getUint32(4, true),
    uniqueLo: dv.getUint32(8, true),
    uniqueHi: dv.getUint32(12, true),
    // Node ids we hand out are small; an id beyond 2^53 is mapped to -1, which matches no node.
    nodeId: nodeHi >= MAX_SAFE_HI ? -1 : nodeHi * TWO_32 + nodeLo,
    uid: dv.getUint32(24, true),
    gid: dv.getUint32(28, true),
    pid: dv.getUint32(32, true),
  };
}

/**
 * Parses one frame. `dv` views the read buffer, `length` is the byte count read(2) returned.
 * `maxWrite` bounds the accepted WRITE payload (the value negotiated at INIT).
 */
export function parseRequest(dv: DataView, length: number, maxWrite: number): FuseRequest {
  const h = parseHeader(dv, length);
  if (typeof h === 'string') return { op: 'garbage', reason: h };
  if (h.len !== length) {
    return { op: 'malformed', h, errno: Errno.EINVAL, reason: `header len ${h.len} != frame length ${length}` };
  }
  if (length > dv.byteLength) {
    return { op: 'malformed', h, errno: Errno.EINVAL, reason: `frame length ${length} exceeds buffer` };
  }
  const r = new BodyReader(dv, IN_HEADER_BYTES, length);
  try {
    return parseBody(h, r, dv, maxWrite);
  } catch (err) {
    if (err instanceof Malformed) return { op: 'malformed', h, errno: err.errno, reason: err.reason };
    return { op: 'malformed', h, errno: Errno.EIO, reason: `parser fault: ${String(err)}` };
  }
}

function parseBody(h: RequestHeader, r: BodyReader, dv: DataView, maxWrite: number): FuseRequest {
  switch (h.opcode) {
    case Opcode.INIT: {
      r.need(INIT_IN_MIN_BYTES, 'INIT');
      return { op: 'init', h, major: r.u32(), minor: r.u32(), maxReadahead: r.u32(), flags: r.u32() };
    }
    case Opcode.LOOKUP:
      return { op: 'lookup', h, name: readName(dv, r) };
    case Opcode.FORGET:
      r.need(8, 'FORGET');
      return { op: 'forget', h };
    case Opcode.BATCH_FORGET:
      return { op: 'forget', h };
    case Opcode.GETATTR:
      r.need(GETATTR_IN_BYTES, 'GETATTR');
      return { op: 'getattr', h };
    case Opcode.SETATTR: {
      r.need(SETATTR_IN_BYTES, 'SETATTR');
      const valid = r.u32();
      r.skip(4 + 8); // padding, fh
      return { op: 'setattr', h, valid, size: r.u64('SETATTR size') };
    }
    case Opcode.OPEN:
    case Opcode.OPENDIR:
      r.need(OPEN_IN_BYTES, 'OPEN');
      return { op: h.opcode === Opcode.OPEN ? 'open' : 'opendir', h, flags: r.u32() };
    case Opcode.READ:
    case Opcode.READDIR: {
      r.need(READ_IN_BYTES, 'READ');
      const fh = r.u64('READ fh');
      const offset = r.u64('READ offset');
      const size = r.u32();
      return { op: h.opcode === Opcode.READ ? 'read' : 'readdir', h, fh, offset, size };
    }
    case Opcode.WRITE: {
      r.need(WRITE_IN_BYTES, 'WRITE');
      const fh = r.u64('WRITE fh');
      const offset = r.u64('WRITE offset');
      const size = r.u32();
      r.skip(4 + 8 + 4 + 4); // write_flags, lock_owner, flags, padding
      if (size > maxWrite) throw new Malformed(Errno.EINVAL, `WRITE of ${size} bytes exceeds max_write ${maxWrite}`);
      if (size > r.remaining) throw new Malformed(Errno.EINVAL, `WRITE claims ${size} bytes, frame has ${r.remaining}`);
      if (offset + size > Number.MAX_SAFE_INTEGER) throw new Malformed(Errno.EOVERFLOW, 'WRITE end exceeds 2^53');
      return { op: 'write', h, fh, offset, size, dataOffset: r.offset };
    }
    case Opcode.STATFS:
      return { op: 'statfs', h };
    case Opcode.DESTROY:
      return { op: 'destroy', h };
    case Opcode.RELEASE:
    case Opcode.RELEASEDIR:
      r.need(RELEASE_IN_BYTES, 'RELEASE');
      return { op: h.opcode === Opcode.RELEASE ? 'release' : 'releasedir', h, fh: r.u64('RELEASE fh') };
    case Opcode.FLUSH:
      r.need(FLUSH_IN_BYTES, 'FLUSH');
      return { op: 'flush', h, fh: r.u64('FLUSH fh') };
    case Opcode.FSYNC:
    case Opcode.FSYNCDIR: {
      r.need(FSYNC_IN_BYTES, 'FSYNC');
      const fh = r.u64('FSYNC fh');
      const datasync = (r.u32() & FUSE_FSYNC_FDATASYNC) !== 0;
      return { op: h.opcode === Opcode.FSYNC ? 'fsync' : 'fsyncdir', h, fh, datasync };
    }
    case Opcode.INTERRUPT: {
      r.need(INTERRUPT_IN_BYTES, 'INTERRUPT');
      return { op: 'interrupt', h, targetLo: r.u32(), targetHi: r.u32() };
    }
    case Opcode.FALLOCATE: {
      r.need(FALLOCATE_IN_BYTES, 'FALLOCATE');
      const fh = r.u64('FALLOCATE fh');
      const offset = r.u64('FALLOCATE offset');
      const length = r.u64('FALLOCATE length');
      const mode = r.u32();
      if (offset + length > Number.MAX_SAFE_INTEGER) throw new Malformed(Errno.EOVERFLOW, 'FALLOCATE end exceeds 2^53');
      return { op: 'fallocate', h, fh, offset, length, mode };
    }
    default:
      return { op: 'unknown', h };
  }
}

/** A NUL-terminated name filling the body: 1..255 bytes, no '/', valid UTF-8 is not required (latin1 kept). */
function readName(dv: DataView, r: BodyReader): string {
  const start = r.offset;
  const end = start + r.remaining;
  let nul = -1;
  for (let i = start; i < end; i++) {
    if (dv.getUint8(i) === 0) {
      nul = i;
      break;
    }
  }
  if (nul < 0) throw new Malformed(Errno.EINVAL, 'LOOKUP name is not NUL-terminated');
  const n = nul - start;
  if (n === 0) throw new Malformed(Errno.EINVAL, 'LOOKUP name is empty');
  if (n > MAX_NAME_BYTES) throw new Malformed(Errno.ENAMETOOLONG, 'LOOKUP name longer than 255 bytes');
  const bytes = new Uint8Array(dv.buffer, dv.byteOffset + start, n);
  if (bytes.includes(0x2f)) throw new Malformed(Errno.EINVAL, "LOOKUP name contains '/'");
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1');
}
