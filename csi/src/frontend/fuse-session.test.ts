// SPDX-License-Identifier: Apache-2.0
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  Errno,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FUSE_MAX_IO_BYTES,
  FUSE_REQUEST_HEADROOM_BYTES,
  InitFlag,
  Opcode,
} from './fuse-abi.js';
import { frame, frames } from './fuse-frames.testing.js';
import { FuseSession, probeDirectPosition } from './fuse-session.js';
import {
  CTL_FLAGS as ENGINE_CTL_FLAGS,
  CTL_GATE as ENGINE_CTL_GATE,
  CTL_GENERATION as ENGINE_CTL_GENERATION,
  CTL_INFLIGHT as ENGINE_CTL_INFLIGHT,
} from '../engine/shared-state.js';
import { createSharedBitmap, fillBits } from './shared-bitmap.js';
import {
  CTL_OPENS,
  CTL_STATE,
  CTL_VERSION,
  CTL_WORDS,
  type EngineFastPath,
  VIEW_ACTIVE,
  type ViewDescriptor,
  type WorkerControl,
  type WorkerRequest,
} from './view-protocol.js';

/** Engine fast-path arrays as the engine would publish them (blocks of 4 KiB). */
function engineState(blocks: number, granuleShift = 0): EngineFastPath {
  return {
    control: new Int32Array(new SharedArrayBuffer(32)),
    settled: new Uint32Array(createSharedBitmap(blocks).buffer),
    meta: new Uint32Array(createSharedBitmap(blocks).buffer),
    blockSize: 4096,
    blockCount: blocks,
    granuleShift,
    generation: 0,
  };
}

interface Reply {
  readonly unique: bigint;
  readonly error: number;
  readonly body: Uint8Array;
}

/** A session over in-memory "files" and a recording /dev/fuse. */
function harness(opts: { control?: () => WorkerControl | undefined } = {}) {
  const files = new Map<number, Uint8Array>();
  const replies: Reply[] = [];
  const calls: WorkerRequest[] = [];
  const directReads: Array<{ offset: number; length: number; position: number }> = [];
  const inBuf = new Uint8Array(FUSE_MAX_IO_BYTES + FUSE_REQUEST_HEADROOM_BYTES);
  const outBuf = new Uint8Array(FUSE_MAX_IO_BYTES + FUSE_REQUEST_HEADROOM_BYTES);
  let mainErrno = 0;
  const session = new FuseSession({
    index: 0,
    dev: {
      read: () => -Errno.ENODEV,
      write(buf, length) {
        const dv = new DataView(buf.buffer, buf.byteOffset, length);
        expect(dv.getUint32(0, true)).toBe(length);
        replies.push({ unique: dv.getBigUint64(8, true), error: dv.getInt32(4, true), body: buf.slice(16, length) });
        return 0;
      },
    },
    file: {
      pread(fd, buf, offset, length, position) {
        if (fd >= 1000) {
          // An O_DIRECT descriptor: the "kernel" accepts buffer positions at phase 96 of 512 only.
          directReads.push({ offset, length, position });
          if (offset % 512 !== 96 || length % 512 !== 0 || position % 512 !== 0) {
            throw Object.assign(new Error('EINVAL'), { errno: -Errno.EINVAL });
          }
          fd -= 1000;
        }
        const f = files.get(fd) as Uint8Array;
        const n = Math.max(0, Math.min(length, f.length - position));
        buf.set(f.subarray(position, position + n), offset);
        return n;
      },
      pwrite(fd, buf, offset, length, position) {
        (files.get(fd) as Uint8Array).set(buf.subarray(offset, offset + length), position);
        return length;
      },
      fdatasync: () => undefined,
    },
    submit(msg) {
      // Plays the main thread: record the hand-off and answer it.
      calls.push(msg);
      replies.push({
        unique: (BigInt(msg.uniqueHi) << 32n) | BigInt(msg.uniqueLo),
        error: mainErrno === 0 ? 0 : -mainErrno,
        body: new Uint8Array(),
      });
    },
    control: opts.control ?? (() => undefined),
    emit: () => undefined,
    inBuf,
    outBuf,
    maxWrite: FUSE_MAX_IO_BYTES,
    timeouts: { entryValidSec: 1, attrValidSec: 60 },
    parallelDirectWrites: true,
    directDataPosition: 96,
  });
  const send = (f: Uint8Array): Reply | undefined => {
    const before = replies.length;
    inBuf.set(f);
    session.handleFrame(f.length);
    expect(replies.length - before).toBeLessThanOrEqual(1);
    return replies.length > before ? replies.at(-1) : undefined;
  };
  const view = (d: Partial<ViewDescriptor> & { nodeId: number; name: string }, data?: Uint8Array): Int32Array => {
    const ctl = new SharedArrayBuffer(CTL_WORDS * 4);
    Atomics.store(new Int32Array(ctl), CTL_STATE, VIEW_ACTIVE);
    const fd = 100 + d.nodeId;
    if (data) files.set(fd, data);
    session.addView({
      kind: 'file',
      readOnly: false,
      sizeBytes: data?.length ?? 1 << 20,
      fd,
      fdDirect: -1,
      ctl,
      blockShift: 12,
      engine: null,
      mtimeSec: 0,
      version: 0,
      ...d,
    });
    return new Int32Array(ctl);
  };
  return {
    session,
    send,
    view,
    files,
    calls,
    directReads,
    replies,
    setMainErrno: (e: number) => {
      mainErrno = e;
    },
  };
}

describe('FuseSession', () => {
  it('1-1 INIT answers major 7, our minor, and only flags the kernel offered', () => {
    const t = harness();
    const r = t.send(frames.init(2, InitFlag.ASYNC_READ | InitFlag.MAX_PAGES | (1 << 9)));
    expect(r?.error).toBe(0);
    const dv = new DataView(r?.body.buffer as ArrayBuffer);
    expect(dv.getUint32(0, true)).toBe(7);
    expect(dv.getUint32(4, true)).toBe(31);
    expect(dv.getUint32(12, true)).toBe(InitFlag.ASYNC_READ | InitFlag.MAX_PAGES);
    expect(dv.getUint32(20, true)).toBe(FUSE_MAX_IO_BYTES);
    expect(t.session.initialized).toBe(true);
  });

  it('1-2 LOOKUP finds exposed views by name; unknown names get ENOENT', () => {
    const t = harness();
    t.view({ nodeId: 7, name: 'vol-a' });
    const r = t.send(frames.lookup(4, 'vol-a'));
    expect(r?.error).toBe(0);
    expect(new DataView(r?.body.buffer as ArrayBuffer).getBigUint64(0, true)).toBe(7n);
    expect(t.send(frames.lookup(6, 'vol-b'))?.error).toBe(-Errno.ENOENT);
  });

  it('1-3 file view: WRITE then READ round-trips bytes; READ past the end is short', () => {
    const t = harness();
    t.view({ nodeId: 2, name: 'v' }, new Uint8Array(16384));
    const data = Uint8Array.from({ length: 5000 }, (_, i) => (i * 7) & 0xff);
    expect(t.send(frames.write(2, 2, 1000, data))?.error).toBe(0);
    const r = t.send(frames.read(4, 2, 1000, 5000));
    expect(Buffer.from(r?.body ?? []).equals(Buffer.from(data))).toBe(true);
    expect(t.send(frames.read(6, 2, 16384 - 10, 4096))?.body.length).toBe(10);
    expect(t.send(frames.read(8, 2, 1 << 30, 4096))?.body.length).toBe(0);
    expect(t.send(frames.write(10, 2, 16384 - 10, new Uint8Array(20)))?.error).toBe(-Errno.ENOSPC);
  });

  it('1-4 read-only view: OPEN for write and WRITE answer EROFS, OPEN read-only counts a handle', () => {
    const t = harness();
    const ctl = t.view({ nodeId: 3, name: 'snap', readOnly: true }, new Uint8Array(8192));
    expect(t.send(frames.open(2, 3, 2))?.error).toBe(-Errno.EROFS);
    expect(t.send(frames.write(4, 3, 0, new Uint8Array(10)))?.error).toBe(-Errno.EROFS);
    expect(t.send(frames.open(6, 3, 0))?.error).toBe(0);
    expect(Atomics.load(ctl, CTL_OPENS)).toBe(1);
    t.send(frames.release(8, 3));
    expect(Atomics.load(ctl, CTL_OPENS)).toBe(0);
  });

  it('1-4b RELEASE on a worker that has not seen the view yet (OPEN went to another worker) still closes the handle', () => {
    const queue: WorkerControl[] = [];
    const t = harness({ control: () => queue.shift() });
    const ctl = new SharedArrayBuffer(CTL_WORDS * 4);
    const c = new Int32Array(ctl);
    Atomics.store(c, CTL_STATE, VIEW_ACTIVE);
    Atomics.store(c, CTL_OPENS, 1); // the other worker's OPEN
    queue.push({
      t: 'add',
      view: {
        nodeId: 9,
        name: 'vol-late',
        kind: 'file',
        readOnly: false,
        sizeBytes: 4096,
        fd: 109,
        fdDirect: -1,
        ctl,
        blockShift: 12,
        engine: null,
        mtimeSec: 0,
        version: 0,
      },
    });
    expect(t.send(frames.release(2, 9))?.error).toBe(0);
    expect(Atomics.load(c, CTL_OPENS)).toBe(0);
  });

  it('1-4c a grown view: once the main thread published a newer version, GETATTR and I/O use the new size', () => {
    const queue: WorkerControl[] = [];
    const t = harness({ control: () => queue.shift() });
    const data = new Uint8Array(16384);
    const ctl = t.view({ nodeId: 4, name: 'grow', sizeBytes: 8192 }, data);
    const sizeOf = (r: { body: Uint8Array } | undefined): bigint =>
      new DataView(r!.body.buffer, r!.body.byteOffset).getBigUint64(16 + 8, true);
    expect(sizeOf(t.send(frames.getattr(2, 4)))).toBe(8192n);
    expect(t.send(frames.write(4, 4, 8192, new Uint8Array(4096).fill(7)))?.error).toBe(-Errno.ENOSPC);
    // The update is queued but its version not yet published: the worker keeps the old descriptor.
    const grown = {
      nodeId: 4,
      name: 'grow',
      kind: 'file' as const,
      readOnly: false,
      sizeBytes: 16384,
      fd: 104,
      fdDirect: -1,
      ctl: ctl.buffer as SharedArrayBuffer,
      blockShift: 12,
      engine: null,
      mtimeSec: 0,
      version: 1,
    };
    queue.push({ t: 'update', view: grown });
    expect(sizeOf(t.send(frames.getattr(6, 4)))).toBe(8192n);
    Atomics.store(ctl, CTL_VERSION, 1);
    expect(sizeOf(t.send(frames.getattr(8, 4)))).toBe(16384n);
    expect(queue).toHaveLength(0);
    expect(t.send(frames.write(10, 4, 8192, new Uint8Array(4096).fill(7)))?.error).toBe(0);
    expect(data.subarray(8192, 12288).every((b) => b === 7)).toBe(true);
  });

  it('1-5 live view: writes touching an unsettled block go to the engine; settled ones go to the clone file', () => {
    const t = harness();
    const e = engineState(16);
    t.view({ nodeId: 4, name: 'live', kind: 'live', engine: e }, new Uint8Array(16 * 4096));
    fillBits(e.settled, 0, 3, true);
    expect(t.send(frames.write(2, 4, 0, new Uint8Array(4 * 4096).fill(1)))?.error).toBe(0);
    expect(t.calls).toHaveLength(0);
    expect((t.files.get(104) as Uint8Array)[3 * 4096]).toBe(1);
    expect(t.send(frames.write(4, 4, 3 * 4096 + 100, new Uint8Array(4096).fill(2)))?.error).toBe(0);
    expect(t.calls).toHaveLength(1);
    expect(t.calls[0]).toMatchObject({ t: 'write', worker: 0, nodeId: 4, offset: 3 * 4096 + 100, uniqueLo: 4 });
    const handed = t.calls[0] as Extract<WorkerRequest, { t: 'write' }>;
    expect(handed.data.length).toBe(4096);
    expect(handed.data.every((b) => b === 2)).toBe(true);
    expect(handed.data.buffer.byteLength).toBe(4096); // a copy, not a view of the request buffer
    expect((t.files.get(104) as Uint8Array)[4 * 4096]).toBe(0); // the engine writes slow-path data
    t.setMainErrno(Errno.EIO);
    expect(t.send(frames.write(6, 4, 8 * 4096, new Uint8Array(10)))?.error).toBe(-Errno.EIO);
    expect(Atomics.load(e.control, ENGINE_CTL_INFLIGHT)).toBe(0);
  });

  it('1-6 live view: closed gate or a new engine generation routes settled writes to the engine', () => {
    const t = harness();
    const e = engineState(16);
    fillBits(e.settled, 0, 15, true);
    t.view({ nodeId: 4, name: 'live', kind: 'live', engine: e }, new Uint8Array(16 * 4096));
    Atomics.store(e.control, ENGINE_CTL_GATE, 1);
    t.send(frames.write(2, 4, 0, new Uint8Array(10)));
    Atomics.store(e.control, ENGINE_CTL_GATE, 0);
    Atomics.store(e.control, ENGINE_CTL_GENERATION, 1);
    t.send(frames.write(4, 4, 0, new Uint8Array(10)));
    expect(t.calls.map((c) => c.t)).toEqual(['write', 'write']);
    expect(Atomics.load(e.control, ENGINE_CTL_INFLIGHT)).toBe(0);
  });

  it('1-7 live view: granules whose meta bit is clear read as zeros; reads via engine when flagged', () => {
    const t = harness();
    const e = engineState(8, 1);
    const data = new Uint8Array(8 * 4096).fill(0xaa);
    t.view({ nodeId: 5, name: 'live', kind: 'live', engine: e }, data);
    fillBits(e.meta, 0, 0, true); // granule 0 = blocks 0-1
    fillBits(e.meta, 2, 2, true); // granule 2 = blocks 4-5
    const r = t.send(frames.read(2, 5, 4096, 5 * 4096));
    const body = r?.body ?? new Uint8Array();
    expect(body.length).toBe(5 * 4096);
    expect(body.subarray(0, 4096).every((b) => b === 0xaa)).toBe(true); // block 1
    expect(body.subarray(4096, 3 * 4096).every((b) => b === 0)).toBe(true); // blocks 2-3
    expect(body.subarray(3 * 4096).every((b) => b === 0xaa)).toBe(true); // blocks 4-5
    expect(t.calls).toHaveLength(0);
    Atomics.store(e.control, ENGINE_CTL_FLAGS, 1);
    t.send(frames.read(4, 5, 0, 4096));
    expect(t.calls).toEqual([{ t: 'read', worker: 0, nodeId: 5, uniqueLo: 4, uniqueHi: 0, offset: 0, length: 4096 }]);
  });

  it('1-8 FALLOCATE: punch on a live view calls discard; on a file view EOPNOTSUPP; preallocate is a no-op', () => {
    const t = harness();
    t.view({ nodeId: 6, name: 'live', kind: 'live', engine: engineState(2) }, new Uint8Array(8192));
    t.view({ nodeId: 7, name: 'file' }, new Uint8Array(8192));
    const punch = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    expect(t.send(frames.fallocate(2, 6, 0, 1 << 20, punch))?.error).toBe(0);
    expect(t.calls).toEqual([
      { t: 'discard', worker: 0, nodeId: 6, uniqueLo: 2, uniqueHi: 0, offset: 0, length: 8192, mode: punch },
    ]);
    expect(t.send(frames.fallocate(4, 7, 0, 4096, punch))?.error).toBe(-Errno.EOPNOTSUPP);
    expect(t.send(frames.fallocate(6, 7, 0, 4096, 0))?.error).toBe(0);
    expect(t.send(frames.fallocate(8, 6, 0, 4096, 0x40))?.error).toBe(-Errno.EOPNOTSUPP);
  });

  it('1-9 unknown opcodes get ENOSYS, FORGET and INTERRUPT get no reply, removed views ENOENT', () => {
    const t = harness();
    const ctl = t.view({ nodeId: 8, name: 'v' }, new Uint8Array(4096));
    expect(t.send(frame({ opcode: 12345, unique: 2 }))?.error).toBe(-Errno.ENOSYS);
    expect(t.send(frame({ opcode: Opcode.LOOKUP + 20, unique: 4 }))?.error).toBe(-Errno.ENOSYS);
    expect(t.send(frames.forget(6, 8))).toBeUndefined();
    expect(t.send(frames.interrupt(8, 2))).toBeUndefined();
    Atomics.store(ctl, CTL_STATE, 2);
    expect(t.send(frames.read(10, 8, 0, 10))?.error).toBe(-Errno.ENOENT);
  });

  it('1-10 O_DIRECT reads: aligned requests use the direct descriptor at a probed buffer position', () => {
    const t = harness();
    const data = Uint8Array.from({ length: 64 * 1024 }, (_, i) => (i * 13) & 0xff);
    t.view({ nodeId: 9, name: 'd', fdDirect: 1109 }, data);
    const r1 = t.send(frames.read(2, 9, 4096, 8192));
    expect(Buffer.from(r1?.body ?? []).equals(Buffer.from(data.subarray(4096, 12288)))).toBe(true);
    expect(t.directReads).toEqual([{ offset: 96, length: 8192, position: 4096 }]);
    const before = t.directReads.length;
    const r2 = t.send(frames.read(4, 9, 100, 1000)); // unaligned: buffered descriptor
    expect(Buffer.from(r2?.body ?? []).equals(Buffer.from(data.subarray(100, 1100)))).toBe(true);
    expect(t.directReads.length).toBe(before);
  });

  it.each([
    { name: '1-11 probe finds the unique aligned phase', accept: (k: number) => k % 512 === 96, expected: 96 },
    { name: '1-12 probe is inconclusive when every phase works (a hole)', accept: () => true, expected: -1 },
    { name: '1-13 probe gives up when no phase works', accept: () => false, expected: -1 },
  ])('$name', ({ accept, expected }) => {
    const pread = (_fd: number, _b: Uint8Array, k: number, len: number): number => {
      if (!accept(k)) throw Object.assign(new Error('EINVAL'), { errno: -Errno.EINVAL });
      return len;
    };
    expect(probeDirectPosition(new Uint8Array(8192), 3, { pread })).toBe(expected);
  });

  it('2-1 fuzz: random and mutated frames never throw; each answerable frame gets exactly one reply', () => {
    const t = harness();
    t.view({ nodeId: 2, name: 'v' }, new Uint8Array(64 * 1024));
    const seeds = [
      frames.read(0, 2, 0, 4096),
      frames.write(0, 2, 100, new Uint8Array(300)),
      frames.lookup(0, 'v'),
      frames.fallocate(0, 2, 0, 4096, 3),
      frames.getattr(0, 2),
      frames.open(0, 2, 2),
      frames.statfs(0),
      frames.init(0),
    ];
    fc.assert(
      fc.property(
        fc.constantFrom(...seeds),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 8 }),
        fc.nat(),
        fc.integer({ min: 1, max: 2 ** 31 }),
        (seed, flips, cut, unique) => {
          const f = seed.slice(0, Math.max(40, seed.length - (cut % 16)));
          for (const [pos, val] of flips) if (pos % f.length >= 4) f[pos % f.length] = val;
          const dv = new DataView(f.buffer);
          dv.setUint32(0, f.length, true);
          dv.setBigUint64(8, BigInt(unique), true);
          const opcode = dv.getUint32(4, true);
          const r = t.send(f);
          const silent = opcode === Opcode.FORGET || opcode === Opcode.INTERRUPT || opcode === Opcode.BATCH_FORGET;
          if (silent && r === undefined) return;
          expect(r?.unique).toBe(BigInt(unique));
          expect(r?.error ?? 1).toBeLessThanOrEqual(0);
        },
      ),
      { numRuns: 3000 },
    );
    expect(t.session.stats.requests).toBeGreaterThan(0);
  });

  it('2-2 READ sizes are capped at the negotiated maximum', () => {
    const t = harness();
    t.view({ nodeId: 2, name: 'v' }, new Uint8Array(3 << 20));
    const r = t.send(frames.read(2, 2, 0, 0xffffffff));
    expect(r?.body.length).toBe(FUSE_MAX_IO_BYTES); // max_read, whatever the kernel asks
  });
});
