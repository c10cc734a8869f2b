// SPDX-License-Identifier: Apache-2.0
// READ, WRITE, FLUSH/FSYNC and FALLOCATE of one worker: the fast path (the worker alone, on the view's
// backing file) and the hand-off to the main thread for everything else (see view-protocol.ts).
import {
  Errno,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  OUT_HEADER_BYTES,
  WRITE_PAYLOAD_OFFSET,
} from './fuse-abi.js';
import type { RequestHeader } from './fuse-codec.js';
import { encodeWriteOut } from './fuse-reply.js';
import { allSet, enterDirectWrite, leaveDirectWrite, readsDirect } from '../engine/shared-state.js';
import {
  COUNTER_FAST_READ,
  COUNTER_FAST_WRITE,
  COUNTER_HANDOFF_DISCARD,
  COUNTER_HANDOFF_FLUSH,
  COUNTER_HANDOFF_READ,
  COUNTER_HANDOFF_WRITE,
  type WorkerRequest,
} from './view-protocol.js';
import { aligned, errnoOf, type FileIo, SENT, type Sent } from './worker-io.js';
import type { ViewState } from './worker-views.js';

/** How the data plane answers; implemented by the session. */
export interface Replies {
  readonly outDv: DataView;
  ok(h: RequestHeader, bodyBytes: number): Sent;
  error(h: RequestHeader, errno: number): Sent;
  /** Replies with the n data bytes at outBuf[at, at+n); the header goes right before them. */
  data(h: RequestHeader, at: number, n: number): Sent;
}

export interface DataPlaneDeps {
  readonly index: number;
  readonly file: FileIo;
  /** Hands a request to the main thread (which will reply to the kernel); `transfer` moves write data. */
  submit(msg: WorkerRequest, transfer?: ArrayBuffer[]): void;
  readonly inBuf: Uint8Array;
  readonly outBuf: Uint8Array;
  readonly maxWrite: number;
  /** Position in outBuf for O_DIRECT read data, or -1: buffered reads only. */
  readonly directDataPosition: number;
  /** inBuf is placed so that a WRITE's payload is O_DIRECT-aligned. */
  readonly directWrites: boolean;
  readonly counters: Float64Array;
}

const HANDOFF_COUNTER: Readonly<Record<WorkerRequest['t'], number>> = {
  read: COUNTER_HANDOFF_READ,
  write: COUNTER_HANDOFF_WRITE,
  discard: COUNTER_HANDOFF_DISCARD,
  flush: COUNTER_HANDOFF_FLUSH,
};

export class DataPlane {
  private directPos: number;
  private directWritesOk: boolean;
  handedOff = 0;

  constructor(
    private readonly deps: DataPlaneDeps,
    private readonly reply: Replies,
  ) {
    this.directPos = deps.directDataPosition;
    this.directWritesOk = deps.directWrites;
  }

  read(h: RequestHeader, v: ViewState, offset: number, size: number): Sent {
    const limit = Math.min(size, this.deps.maxWrite);
    const n = offset >= v.d.sizeBytes ? 0 : Math.min(limit, v.d.sizeBytes - offset);
    if (n === 0) return this.reply.ok(h, 0);
    if (v.d.kind === 'remote' || (v.engine && !readsDirect(v.engine))) {
      return this.handOff({ t: 'read', ...this.base(h, v), offset, length: n });
    }
    // O_DIRECT (when enabled and the request is sector-aligned): data lands at an aligned position of the
    // reply buffer with the reply header right before it.
    const at = v.d.fdDirect >= 0 && aligned(offset, n) ? this.directPos : -1;
    if (at > 0) {
      try {
        this.readData(v, v.d.fdDirect, at, offset, n);
        this.deps.counters[COUNTER_FAST_READ]! += 1;
        return this.reply.data(h, at, n);
      } catch (err) {
        if (errnoOf(err) !== Errno.EINVAL) throw err;
        this.directPos = -1; // this file system wants another alignment: stay buffered
      }
    }
    this.readData(v, v.d.fd, OUT_HEADER_BYTES, offset, n);
    this.deps.counters[COUNTER_FAST_READ]! += 1;
    return this.reply.data(h, OUT_HEADER_BYTES, n);
  }

  write(h: RequestHeader, v: ViewState, offset: number, size: number, dataOffset: number): Sent {
    if (v.d.readOnly) return this.reply.error(h, Errno.EROFS);
    if (size === 0) return this.reply.ok(h, encodeWriteOut(this.reply.outDv, OUT_HEADER_BYTES, 0));
    if (offset + size > v.d.sizeBytes) return this.reply.error(h, Errno.ENOSPC);
    // Engine fast-path protocol (engine/shared-state.ts): counted in before the checks, so an exclusive engine
    // section that saw no write in flight after closing the gate cannot overlap this one.
    if (
      v.engine &&
      enterDirectWrite(v.engine, Math.floor(offset / v.blockBytes), Math.floor((offset + size - 1) / v.blockBytes))
    ) {
      try {
        this.writeData(v, dataOffset, size, offset);
      } finally {
        leaveDirectWrite(v.engine);
      }
      this.deps.counters[COUNTER_FAST_WRITE]! += 1;
      return this.reply.ok(h, encodeWriteOut(this.reply.outDv, OUT_HEADER_BYTES, size));
    }
    if (v.d.kind !== 'file') {
      // Slow path: the main thread performs the whole write through the engine (COW, meta bit, data).
      const data = new Uint8Array(this.deps.inBuf.subarray(dataOffset, dataOffset + size)); // a copy
      return this.handOff({ t: 'write', ...this.base(h, v), offset, data }, [data.buffer as ArrayBuffer]);
    }
    this.writeData(v, dataOffset, size, offset);
    this.deps.counters[COUNTER_FAST_WRITE]! += 1;
    return this.reply.ok(h, encodeWriteOut(this.reply.outDv, OUT_HEADER_BYTES, size));
  }

  /** FLUSH/FSYNC: for a live view the engine's flush covers the clone file (fast-path writes included). */
  sync(h: RequestHeader, v: ViewState): Sent {
    if (v.d.kind !== 'file') return this.handOff({ t: 'flush', ...this.base(h, v) });
    if (!v.d.readOnly) this.deps.file.fdatasync(v.d.fd);
    return this.reply.ok(h, 0);
  }

  /**
   * PUNCH_HOLE and ZERO_RANGE mean "this range reads as zeros afterwards" (loop turns DISCARD and
   * WRITE_ZEROES into them); the engine clears meta bit map granules and zeroes partial ones. Plain
   * preallocation is a no-op (the engine allocates on write). Pass-through views answer EOPNOTSUPP, which
   * loop treats as "discard unsupported" (never ENOSYS: that would switch fallocate off for the whole mount).
   */
  fallocate(h: RequestHeader, v: ViewState, offset: number, length: number, mode: number): Sent {
    const known = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE;
    if ((mode & ~known) !== 0) return this.reply.error(h, Errno.EOPNOTSUPP);
    const zeroing = (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) !== 0;
    if (!zeroing) return this.reply.ok(h, 0);
    if (v.d.readOnly) return this.reply.error(h, Errno.EROFS);
    if (v.d.kind === 'file') return this.reply.error(h, Errno.EOPNOTSUPP);
    if (offset >= v.d.sizeBytes || length === 0) return this.reply.ok(h, 0);
    const len = Math.min(length, v.d.sizeBytes - offset);
    return this.handOff({ t: 'discard', ...this.base(h, v), offset, length: len, mode });
  }

  // ----- helpers ------------------------------------------------------------------------------------------

  private readData(v: ViewState, fd: number, at: number, offset: number, n: number): void {
    if (v.engine) this.readLive(v, v.engine.meta, fd, at, offset, n);
    else this.preadFull(fd, at, n, offset);
  }

  /** Reads [offset, offset+n) of a live view into outBuf: clone data for valid granules, zeros elsewhere. */
  private readLive(v: ViewState, valid: Uint32Array, fd: number, base: number, offset: number, n: number): void {
    const gb = v.granuleBytes;
    const g0 = Math.floor(offset / gb);
    const g1 = Math.floor((offset + n - 1) / gb);
    if (allSet(valid, g0, g1)) {
      this.preadFull(fd, base, n, offset);
      return;
    }
    let pos = offset;
    const end = offset + n;
    while (pos < end) {
      const g = Math.floor(pos / gb);
      const isValid = allSet(valid, g, g);
      let runEnd = Math.min(end, (g + 1) * gb);
      while (runEnd < end && allSet(valid, Math.floor(runEnd / gb), Math.floor(runEnd / gb)) === isValid) {
        runEnd = Math.min(end, runEnd + gb);
      }
      const at = base + (pos - offset);
      if (isValid) this.preadFull(fd, at, runEnd - pos, pos);
      else this.deps.outBuf.fill(0, at, at + (runEnd - pos));
      pos = runEnd;
    }
  }

  /** O_DIRECT for aligned writes when enabled; buffered otherwise, or once the kernel refuses. */
  private writeData(v: ViewState, dataOffset: number, size: number, offset: number): void {
    if (this.directWritesOk && v.d.fdDirect >= 0 && dataOffset === WRITE_PAYLOAD_OFFSET && aligned(offset, size)) {
      try {
        this.pwriteFull(v.d.fdDirect, dataOffset, size, offset);
        return;
      } catch (err) {
        if (errnoOf(err) !== Errno.EINVAL) throw err;
        this.directWritesOk = false;
      }
    }
    this.pwriteFull(v.d.fd, dataOffset, size, offset);
  }

  private pwriteFull(fd: number, dataOffset: number, size: number, position: number): void {
    let done = 0;
    while (done < size) {
      const w = this.deps.file.pwrite(fd, this.deps.inBuf, dataOffset + done, size - done, position + done);
      if (w <= 0) throw Object.assign(new Error('short write'), { errno: -Errno.EIO });
      done += w;
    }
  }

  private preadFull(fd: number, at: number, n: number, position: number): void {
    let done = 0;
    while (done < n) {
      const r = this.deps.file.pread(fd, this.deps.outBuf, at + done, n - done, position + done);
      if (r <= 0) {
        // Past the end of a sparse backing file: the rest reads as zeros.
        this.deps.outBuf.fill(0, at + done, at + n);
        return;
      }
      done += r;
    }
  }

  private base(h: RequestHeader, v: ViewState) {
    return { worker: this.deps.index, nodeId: v.d.nodeId, uniqueLo: h.uniqueLo, uniqueHi: h.uniqueHi };
  }

  /** The main thread now owns the reply of this request. */
  private handOff(msg: WorkerRequest, transfer?: ArrayBuffer[]): Sent {
    this.handedOff++;
    this.deps.counters[HANDOFF_COUNTER[msg.t]]! += 1;
    this.deps.submit(msg, transfer);
    return SENT;
  }
}
