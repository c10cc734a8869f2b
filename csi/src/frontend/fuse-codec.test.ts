// SPDX-License-Identifier: Apache-2.0
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DT_REG, Errno, IN_HEADER_BYTES, Opcode, OUT_HEADER_BYTES } from './fuse-abi.js';
import { type FuseRequest, parseRequest } from './fuse-codec.js';
import {
  encodeAttrOut,
  encodeDirents,
  encodeEntryOut,
  encodeInitOut,
  encodeNotifyInvalEntry,
  encodeNotifyInvalInode,
  encodeOutHeader,
} from './fuse-reply.js';
import { frame, frames } from './fuse-frames.testing.js';

const MAX_WRITE = 1 << 20;

function parse(buf: Uint8Array, length = buf.length): FuseRequest {
  return parseRequest(new DataView(buf.buffer, buf.byteOffset, buf.byteLength), length, MAX_WRITE);
}

const KNOWN_OPS = new Set([
  'init',
  'lookup',
  'forget',
  'getattr',
  'setattr',
  'open',
  'opendir',
  'read',
  'readdir',
  'write',
  'statfs',
  'destroy',
  'release',
  'releasedir',
  'flush',
  'fsync',
  'fsyncdir',
  'interrupt',
  'fallocate',
  'unknown',
  'malformed',
  'garbage',
]);

describe('fuse-codec parseRequest', () => {
  it.each([
    { name: '1-1 INIT', buf: frames.init(2), check: { op: 'init', major: 7, minor: 45 } },
    { name: '1-2 LOOKUP', buf: frames.lookup(4, 'vol-a@snap-1'), check: { op: 'lookup', name: 'vol-a@snap-1' } },
    {
      name: '1-3 READ',
      buf: frames.read(6, 7, 2 ** 40, 4096),
      check: { op: 'read', fh: 7, offset: 2 ** 40, size: 4096 },
    },
    { name: '1-4 FSYNC datasync', buf: frames.fsync(8, 3), check: { op: 'fsync', fh: 3, datasync: true } },
    {
      name: '1-5 FALLOCATE',
      buf: frames.fallocate(10, 3, 8192, 1 << 20, 3),
      check: { op: 'fallocate', offset: 8192, length: 1 << 20, mode: 3 },
    },
    { name: '1-6 unknown opcode', buf: frame({ opcode: 9999, unique: 12 }), check: { op: 'unknown' } },
    { name: '1-7 STATFS', buf: frames.statfs(14), check: { op: 'statfs' } },
  ])('$name', ({ buf, check }) => {
    expect(parse(buf)).toMatchObject(check);
  });

  it('2-1 WRITE points at its payload', () => {
    const data = Uint8Array.from({ length: 100 }, (_, i) => i);
    const buf = frames.write(20, 5, 4096, data);
    const r = parse(buf);
    expect(r).toMatchObject({ op: 'write', offset: 4096, size: 100, dataOffset: IN_HEADER_BYTES + 40 });
    if (r.op !== 'write') throw new Error('not a write');
    expect(Array.from(buf.subarray(r.dataOffset, r.dataOffset + r.size))).toEqual(Array.from(data));
  });

  it('2-2 echoes a 64-bit unique verbatim', () => {
    const buf = frames.statfs(0);
    new DataView(buf.buffer).setBigUint64(8, 0xfedcba9876543210n, true);
    const r = parse(buf);
    if (r.op === 'garbage') throw new Error('garbage');
    const out = new DataView(new ArrayBuffer(16));
    encodeOutHeader(out, 16, Errno.ENOSYS, r.h.uniqueLo, r.h.uniqueHi);
    expect(out.getBigUint64(8, true)).toBe(0xfedcba9876543210n);
    expect(out.getInt32(4, true)).toBe(-Errno.ENOSYS);
  });

  it.each([
    { name: '3-1 frame shorter than a header', buf: new Uint8Array(39), op: 'garbage' },
    {
      name: '3-2 header len disagrees with read length',
      buf: frame({ opcode: Opcode.STATFS, unique: 2 }, undefined, 99),
      op: 'malformed',
    },
    { name: '3-3 READ body truncated', buf: frames.read(2, 1, 0, 10).subarray(0, 60), op: 'malformed' },
    {
      name: '3-4 LOOKUP without NUL',
      buf: frame({ opcode: Opcode.LOOKUP, unique: 2 }, Buffer.from('abc')),
      op: 'malformed',
    },
    { name: '3-5 LOOKUP with slash', buf: frames.lookup(2, 'a/b'), op: 'malformed' },
    { name: '3-6 LOOKUP of 256 bytes', buf: frames.lookup(2, 'x'.repeat(256)), op: 'malformed' },
    {
      name: '3-7 WRITE claiming more than it carries',
      buf: frames.write(2, 1, 0, new Uint8Array(10), 11),
      op: 'malformed',
    },
    {
      name: '3-8 WRITE beyond max_write',
      buf: frames.write(2, 1, 0, new Uint8Array(10), MAX_WRITE + 1),
      op: 'malformed',
    },
    {
      name: '3-9 READ offset beyond 2^53',
      buf: frames.read(2, 1, 0, 10),
      op: 'malformed',
      patch: [IN_HEADER_BYTES + 12, 0x00400000],
    },
  ])('$name', ({ buf, op, patch }) => {
    const copy = buf.slice();
    if (patch) {
      const dv = new DataView(copy.buffer);
      dv.setUint32(0, copy.length, true);
      dv.setUint32(patch[0] as number, patch[1] as number, true);
    }
    const r = parse(copy);
    expect(r.op).toBe(op);
    if (r.op === 'malformed') expect(r.errno).toBeGreaterThan(0);
  });

  it('3-10 READ body truncated keeps a consistent header len but is still rejected', () => {
    const buf = frames.read(2, 1, 0, 10).slice(0, 60);
    new DataView(buf.buffer).setUint32(0, 60, true);
    expect(parse(buf)).toMatchObject({ op: 'malformed', errno: Errno.EINVAL });
  });

  it('4-1 fuzz: arbitrary bytes never throw and classify into known kinds', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 400 }), fc.boolean(), (bytes, fixLen) => {
        const buf = bytes.slice();
        if (fixLen && buf.length >= 4) new DataView(buf.buffer).setUint32(0, buf.length, true);
        const r = parse(buf);
        expect(KNOWN_OPS.has(r.op)).toBe(true);
        if (buf.length < IN_HEADER_BYTES) expect(r.op).toBe('garbage');
        else expect(r.op).not.toBe('garbage');
        if (r.op === 'write') expect(r.dataOffset + r.size).toBeLessThanOrEqual(buf.length);
      }),
      { numRuns: 5000 },
    );
  });

  it('4-2 fuzz: opcodes we serve with random bodies of random length never throw', () => {
    const opcodes = [1, 2, 3, 4, 14, 15, 16, 17, 18, 20, 25, 26, 27, 28, 29, 30, 36, 38, 42, 43];
    fc.assert(
      fc.property(
        fc.constantFrom(...opcodes),
        fc.uint8Array({ maxLength: 120 }),
        fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
        (opcode, b, unique) => {
          const buf = frame({ opcode, unique: 0 }, b);
          new DataView(buf.buffer).setBigUint64(8, unique, true);
          const r = parse(buf);
          expect(r.op).not.toBe('garbage');
          if (r.op !== 'garbage') {
            expect(BigInt(r.h.uniqueHi) * 2n ** 32n + BigInt(r.h.uniqueLo)).toBe(unique);
            expect(r.h.opcode).toBe(opcode);
          }
        },
      ),
      { numRuns: 5000 },
    );
  });

  it('4-3 fuzz: a valid frame truncated or length-corrupted anywhere is rejected, not crashed on', () => {
    const valid = [
      frames.init(2),
      frames.read(4, 2, 4096, 4096),
      frames.write(6, 2, 0, new Uint8Array(64)),
      frames.fallocate(8, 2, 0, 4096, 3),
      frames.lookup(10, 'v'),
    ];
    fc.assert(
      fc.property(fc.constantFrom(...valid), fc.nat(), fc.nat(), (v, cut, lenValue) => {
        const n = cut % (v.length + 1);
        const buf = v.slice(0, n);
        if (n >= 4) new DataView(buf.buffer).setUint32(0, lenValue % 2 === 0 ? n : lenValue, true);
        const r = parse(buf, n);
        expect(KNOWN_OPS.has(r.op)).toBe(true);
      }),
      { numRuns: 5000 },
    );
  });
});

describe('fuse-codec encoders', () => {
  it('5-1 INIT reply carries major 7, minor, max_write and max_pages at their offsets', () => {
    const dv = new DataView(new ArrayBuffer(128));
    const n = encodeInitOut(
      dv,
      16,
      {
        minor: 31,
        maxReadahead: 1 << 17,
        flags: 0x8421,
        maxBackground: 64,
        congestionThreshold: 48,
        maxWrite: 1 << 20,
        maxPages: 256,
      },
      7,
    );
    expect(n).toBe(64);
    expect(dv.getUint32(16, true)).toBe(7);
    expect(dv.getUint32(20, true)).toBe(31);
    expect(dv.getUint32(28, true)).toBe(0x8421);
    expect(dv.getUint16(32, true)).toBe(64);
    expect(dv.getUint32(36, true)).toBe(1 << 20);
    expect(dv.getUint16(44, true)).toBe(256);
  });

  it('5-2 entry and attr replies place size and mode per struct fuse_attr', () => {
    const dv = new DataView(new ArrayBuffer(256));
    const attr = { ino: 5, size: 3 * 2 ** 32 + 7, mode: 0o100600, nlink: 1, mtimeSec: 1000, blksize: 4096 };
    expect(encodeEntryOut(dv, 0, 5, attr, { entryValidSec: 1, attrValidSec: 3600 })).toBe(128);
    expect(dv.getBigUint64(0, true)).toBe(5n);
    expect(dv.getBigUint64(24, true)).toBe(3600n);
    expect(dv.getBigUint64(40 + 8, true)).toBe(BigInt(attr.size));
    expect(dv.getUint32(40 + 60, true)).toBe(0o100600);
    expect(encodeAttrOut(dv, 128, attr, { entryValidSec: 1, attrValidSec: 60 })).toBe(104);
    expect(dv.getUint32(128 + 16 + 60, true)).toBe(0o100600);
  });

  it('5-3 dirents are 8-aligned records with the next-offset cookie, cut at the size limit', () => {
    const entries = [
      { ino: 1, name: '.', type: 4 },
      { ino: 1, name: '..', type: 4 },
      { ino: 2, name: 'vol-a', type: DT_REG },
    ];
    const dv = new DataView(new ArrayBuffer(200));
    expect(encodeDirents(dv, 0, entries, 0, 200)).toBe(32 + 32 + 32);
    expect(dv.getBigUint64(64 + 8, true)).toBe(3n);
    expect(dv.getUint32(64 + 16, true)).toBe(5);
    expect(encodeDirents(dv, 0, entries, 2, 200)).toBe(32);
    expect(encodeDirents(dv, 0, entries, 0, 40)).toBe(32);
    expect(encodeDirents(dv, 0, entries, 3, 200)).toBe(0);
  });

  it('5-4 notify inval_entry is unique 0, error = code 3, NUL-terminated name', () => {
    const m = encodeNotifyInvalEntry(1, 'vol-a');
    const dv = new DataView(m.buffer);
    expect(dv.getUint32(0, true)).toBe(m.length);
    expect(dv.getInt32(4, true)).toBe(3);
    expect(dv.getBigUint64(8, true)).toBe(0n);
    expect(dv.getUint32(OUT_HEADER_BYTES + 8, true)).toBe(5);
    expect(m[m.length - 1]).toBe(0);
  });

  it('5-5 notify inval_inode is unique 0, error = code 2, ino, off -1 (attributes only), len 0', () => {
    const m = encodeNotifyInvalInode(2 ** 33 + 7);
    const dv = new DataView(m.buffer);
    expect(m.length).toBe(OUT_HEADER_BYTES + 24);
    expect(dv.getUint32(0, true)).toBe(m.length);
    expect(dv.getInt32(4, true)).toBe(2);
    expect(dv.getBigUint64(8, true)).toBe(0n);
    expect(dv.getBigUint64(OUT_HEADER_BYTES, true)).toBe(2n ** 33n + 7n);
    expect(dv.getBigInt64(OUT_HEADER_BYTES + 8, true)).toBe(-1n);
    expect(dv.getBigInt64(OUT_HEADER_BYTES + 16, true)).toBe(0n);
    const pages = new DataView(encodeNotifyInvalInode(5, 4096, 8192).buffer);
    expect(pages.getBigInt64(OUT_HEADER_BYTES + 8, true)).toBe(4096n);
    expect(pages.getBigInt64(OUT_HEADER_BYTES + 16, true)).toBe(8192n);
  });
});
