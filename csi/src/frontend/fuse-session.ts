// SPDX-License-Identifier: Apache-2.0
// One data-path worker's FUSE request loop: read a request from /dev/fuse, serve it, write the reply.
// Everything here is synchronous (blocking syscalls in a worker thread). What the worker cannot serve alone
// it hands off to the main thread, which replies to the kernel (see view-protocol.ts; data-plane.ts serves
// READ/WRITE/FSYNC/FALLOCATE).
//
// The file system has one directory (the root, node 1) holding one regular file per exposed view. Node ids
// are handed out by the main thread and never reused; the file handle is the node id.
import {
  DT_DIR,
  DT_REG,
  Errno,
  FATTR_SIZE,
  FOPEN_PARALLEL_DIRECT_WRITES,
  FUSE_KERNEL_VERSION,
  FUSE_MAX_PAGES,
  FUSE_OUR_MINOR_VERSION,
  FUSE_ROOT_ID,
  InitFlag,
  O_ACCMODE,
  O_RDONLY,
  OUT_HEADER_BYTES,
} from './fuse-abi.js';
import { type FuseRequest, parseRequest, type RequestHeader } from './fuse-codec.js';
import {
  type CacheTimeouts,
  type DirEntry,
  encodeAttrOut,
  encodeDirents,
  encodeEntryOut,
  encodeInitOut,
  encodeOpenOut,
  encodeOutHeader,
  encodeStatfsOut,
} from './fuse-reply.js';
import { DataPlane } from './data-plane.js';
import {
  COUNTER_MALFORMED,
  COUNTER_REQUESTS,
  COUNTER_SLOTS,
  CTL_BUSY,
  CTL_GATE,
  CTL_OPENS,
  CTL_STATE,
  VIEW_ACTIVE,
  type ViewDescriptor,
  type WorkerControl,
  type WorkerEvent,
  type WorkerRequest,
} from './view-protocol.js';
import { errnoOf, type FileIo, type FuseDeviceIo, SENT, type Sent } from './worker-io.js';
import { dirAttr, fileAttr, type ViewState, WorkerViews } from './worker-views.js';

export { errnoOf, probeDirectPosition } from './worker-io.js';
export type { FileIo, FuseDeviceIo } from './worker-io.js';

export interface SessionDeps {
  readonly index: number;
  readonly dev: FuseDeviceIo;
  readonly file: FileIo;
  /** Hands a request to the main thread (which will reply to the kernel); `transfer` moves write data. */
  submit(msg: WorkerRequest, transfer?: ArrayBuffer[]): void;
  /** Next pending control message, if any (non-blocking). */
  control(): WorkerControl | undefined;
  emit(ev: WorkerEvent): void;
  readonly inBuf: Uint8Array;
  readonly outBuf: Uint8Array;
  readonly maxWrite: number;
  readonly timeouts: CacheTimeouts;
  readonly parallelDirectWrites: boolean;
  /** Position in outBuf where O_DIRECT read data goes (probeDirectPosition), or -1 / absent: buffered. */
  readonly directDataPosition?: number;
  /** inBuf is placed so that a WRITE's payload is O_DIRECT-aligned (fast-path writes may use O_DIRECT). */
  readonly directWrites?: boolean;
  /** Request counters (view-protocol.ts COUNTER_*), shared with the main thread for metrics. */
  readonly counters?: Float64Array;
  /** Bound on Atomics.wait while a view's gate is closed, in ms (the gate is re-checked after it). */
  readonly gateWaitMs?: number;
}

const WANTED_INIT_FLAGS =
  InitFlag.ASYNC_READ | InitFlag.BIG_WRITES | InitFlag.MAX_PAGES | InitFlag.ASYNC_DIO | InitFlag.PARALLEL_DIROPS;

export class FuseSession {
  private readonly inDv: DataView;
  private readonly outDv: DataView;
  private readonly views: WorkerViews;
  private readonly data: DataPlane;
  private readonly counters: Float64Array;
  private stopping = false;
  private initDone = false;
  /** Counters, reported for tests and logs. */
  private readonly counts = { requests: 0, malformed: 0, garbage: 0, replyErrors: 0 };

  constructor(private readonly deps: SessionDeps) {
    this.counters = deps.counters ?? new Float64Array(COUNTER_SLOTS);
    this.inDv = new DataView(deps.inBuf.buffer, deps.inBuf.byteOffset, deps.inBuf.byteLength);
    this.outDv = new DataView(deps.outBuf.buffer, deps.outBuf.byteOffset, deps.outBuf.byteLength);
    this.views = new WorkerViews(deps.control, () => {
      this.stopping = true;
    });
    this.data = new DataPlane(
      {
        index: deps.index,
        file: deps.file,
        submit: (msg, transfer) => deps.submit(msg, transfer),
        inBuf: deps.inBuf,
        outBuf: deps.outBuf,
        maxWrite: deps.maxWrite,
        directDataPosition: deps.directDataPosition ?? -1,
        directWrites: deps.directWrites === true,
        counters: this.counters,
      },
      {
        outDv: this.outDv,
        ok: (h, bodyBytes) => this.replyOk(h, bodyBytes),
        error: (h, errno) => this.replyError(h, errno),
        data: (h, at, n) => this.replyData(h, at, n),
      },
    );
  }

  get stats(): Readonly<{
    requests: number;
    malformed: number;
    garbage: number;
    replyErrors: number;
    handedOff: number;
  }> {
    return { ...this.counts, handedOff: this.data.handedOff };
  }

  get initialized(): boolean {
    return this.initDone;
  }

  addView(d: ViewDescriptor): void {
    this.views.add(d);
  }

  /** Serves requests until the connection goes away (unmount or abort); returns the reason. */
  serve(): string {
    for (;;) {
      if (this.stopping) return 'stopped';
      const n = this.deps.dev.read(this.deps.inBuf);
      if (n < 0) {
        if (n === -Errno.ENOENT || n === -Errno.EINTR || n === -Errno.EAGAIN) continue;
        if (n === -Errno.ENODEV) return 'unmounted';
        return `read /dev/fuse failed: errno ${-n}`;
      }
      this.handleFrame(n);
    }
  }

  /** Serves one frame already in inBuf[0, n). Never throws. */
  handleFrame(n: number): void {
    this.counts.requests++;
    this.counters[COUNTER_REQUESTS]! += 1;
    const req = parseRequest(this.inDv, n, this.deps.maxWrite);
    try {
      this.dispatch(req);
    } catch (err) {
      // A bug or an unexpected I/O exception: answer EIO rather than leave the kernel waiting.
      this.log('error', 'Failed FUSE request', { op: req.op, err: String(err) });
      if (req.op !== 'garbage') this.replyError(req.h, errnoOf(err));
    }
  }

  private dispatch(req: FuseRequest): Sent | undefined {
    switch (req.op) {
      case 'garbage':
        this.counts.garbage++;
        this.log('warn', 'Dropped FUSE frame without header', { reason: req.reason });
        return undefined;
      case 'malformed':
        this.counts.malformed++;
        this.counters[COUNTER_MALFORMED]! += 1;
        this.log('warn', 'Rejected malformed FUSE request', { opcode: req.h.opcode, reason: req.reason });
        return this.replyError(req.h, req.errno);
      case 'init':
        return this.onInit(req);
      case 'forget':
      case 'interrupt':
        return undefined; // no reply: requests finish quickly, the kernel handles the interrupted waiter itself
      case 'destroy':
        this.stopping = true;
        return this.replyOk(req.h, 0);
      case 'lookup':
        return this.onLookup(req.h, req.name);
      case 'getattr':
        return this.onGetattr(req.h);
      case 'setattr':
        return this.onSetattr(req.h, req.valid, req.size);
      case 'opendir':
        return req.h.nodeId === FUSE_ROOT_ID ? this.openOut(req.h, 0, 0) : this.replyError(req.h, Errno.ENOTDIR);
      case 'readdir':
        return this.onReaddir(req.h, req.offset, req.size);
      case 'releasedir':
      case 'fsyncdir':
        return this.replyOk(req.h, 0);
      case 'statfs':
        return this.onStatfs(req.h);
      case 'open':
        return this.onOpen(req.h, req.flags);
      case 'release':
        return this.onRelease(req.h);
      case 'read':
        return this.withView(req.h, (v) => this.data.read(req.h, v, req.offset, req.size));
      case 'write':
        return this.withView(req.h, (v) => this.data.write(req.h, v, req.offset, req.size, req.dataOffset));
      case 'flush':
      case 'fsync':
        return this.withView(req.h, (v) => this.data.sync(req.h, v));
      case 'fallocate':
        return this.withView(req.h, (v) => this.data.fallocate(req.h, v, req.offset, req.length, req.mode));
      case 'unknown':
        return this.replyError(req.h, Errno.ENOSYS);
    }
  }

  // ----- control plane of the tiny file system ------------------------------------------------------------

  private onInit(req: Extract<FuseRequest, { op: 'init' }>): Sent {
    if (req.major !== FUSE_KERNEL_VERSION) {
      // Protocol rule: answer with our major only; the kernel then retries or gives up.
      const none = { minor: 0, maxReadahead: 0, flags: 0, maxBackground: 0, congestionThreshold: 0, maxWrite: 0 };
      encodeInitOut(this.outDv, OUT_HEADER_BYTES, { ...none, maxPages: 0 }, FUSE_KERNEL_VERSION);
      return this.replyOk(req.h, 8);
    }
    const flags = req.flags & WANTED_INIT_FLAGS;
    const minor = Math.min(req.minor, FUSE_OUR_MINOR_VERSION);
    const body = encodeInitOut(
      this.outDv,
      OUT_HEADER_BYTES,
      {
        minor,
        maxReadahead: req.maxReadahead,
        flags,
        maxBackground: 64,
        congestionThreshold: 48,
        maxWrite: this.deps.maxWrite,
        maxPages: FUSE_MAX_PAGES,
      },
      FUSE_KERNEL_VERSION,
    );
    const sent = this.replyOk(req.h, body);
    this.initDone = true;
    this.deps.emit({
      t: 'init',
      worker: this.deps.index,
      major: req.major,
      minor,
      flags,
      maxWrite: this.deps.maxWrite,
    });
    return sent;
  }

  private onLookup(h: RequestHeader, name: string): Sent {
    if (h.nodeId !== FUSE_ROOT_ID) return this.replyError(h, Errno.ENOTDIR);
    const v = this.views.byName(name);
    if (!v) return this.replyError(h, Errno.ENOENT);
    const body = encodeEntryOut(this.outDv, OUT_HEADER_BYTES, v.d.nodeId, fileAttr(v), this.deps.timeouts);
    return this.replyOk(h, body);
  }

  private onGetattr(h: RequestHeader): Sent {
    if (h.nodeId === FUSE_ROOT_ID) {
      return this.replyOk(h, encodeAttrOut(this.outDv, OUT_HEADER_BYTES, dirAttr(), this.deps.timeouts));
    }
    const v = this.views.get(h.nodeId);
    if (!v) return this.replyError(h, Errno.ENOENT);
    return this.replyOk(h, encodeAttrOut(this.outDv, OUT_HEADER_BYTES, fileAttr(v), this.deps.timeouts));
  }

  /** Mode, owner and time changes are accepted and ignored; the size of a view is set by the engine only. */
  private onSetattr(h: RequestHeader, valid: number, size: number): Sent {
    if (h.nodeId === FUSE_ROOT_ID) {
      return this.replyOk(h, encodeAttrOut(this.outDv, OUT_HEADER_BYTES, dirAttr(), this.deps.timeouts));
    }
    const v = this.views.get(h.nodeId);
    if (!v) return this.replyError(h, Errno.ENOENT);
    if ((valid & FATTR_SIZE) !== 0 && size !== v.d.sizeBytes) {
      return this.replyError(h, v.d.readOnly ? Errno.EROFS : Errno.EPERM);
    }
    return this.replyOk(h, encodeAttrOut(this.outDv, OUT_HEADER_BYTES, fileAttr(v), this.deps.timeouts));
  }

  private onReaddir(h: RequestHeader, offset: number, size: number): Sent {
    if (h.nodeId !== FUSE_ROOT_ID) return this.replyError(h, Errno.ENOTDIR);
    const entries: DirEntry[] = [
      { ino: FUSE_ROOT_ID, name: '.', type: DT_DIR },
      { ino: FUSE_ROOT_ID, name: '..', type: DT_DIR },
      ...this.views.active().map((v) => ({ ino: v.d.nodeId, name: v.d.name, type: DT_REG })),
    ];
    const room = Math.min(size, this.deps.outBuf.byteLength - OUT_HEADER_BYTES);
    return this.replyOk(h, encodeDirents(this.outDv, OUT_HEADER_BYTES, entries, offset, room));
  }

  private onStatfs(h: RequestHeader): Sent {
    const views = this.views.active();
    const bsize = 4096;
    const bytes = views.reduce((n, v) => n + v.d.sizeBytes, 0);
    const body = encodeStatfsOut(this.outDv, OUT_HEADER_BYTES, {
      blocks: Math.ceil(bytes / bsize),
      bfree: 0,
      files: views.length,
      bsize,
    });
    return this.replyOk(h, body);
  }

  private onOpen(h: RequestHeader, flags: number): Sent {
    if (h.nodeId === FUSE_ROOT_ID) return this.replyError(h, Errno.EISDIR);
    const v = this.views.get(h.nodeId);
    if (!v) return this.replyError(h, Errno.ENOENT);
    if (v.d.readOnly && (flags & O_ACCMODE) !== O_RDONLY) return this.replyError(h, Errno.EROFS);
    Atomics.add(v.ctl, CTL_OPENS, 1);
    return this.openOut(h, v.d.nodeId, this.deps.parallelDirectWrites ? FOPEN_PARALLEL_DIRECT_WRITES : 0);
  }

  private openOut(h: RequestHeader, fh: number, openFlags: number): Sent {
    return this.replyOk(h, encodeOpenOut(this.outDv, OUT_HEADER_BYTES, fh, openFlags));
  }

  private onRelease(h: RequestHeader): Sent {
    const v = this.views.peek(h.nodeId);
    if (v) Atomics.sub(v.ctl, CTL_OPENS, 1);
    return this.replyOk(h, 0);
  }

  /** Runs `fn` with the view entered (BUSY held, gate open, view active); answers ENOENT for a gone view. */
  private withView(h: RequestHeader, fn: (v: ViewState) => Sent): Sent {
    const v = this.views.get(h.nodeId);
    if (!v) return this.replyError(h, Errno.ENOENT);
    const ctl = v.ctl;
    for (;;) {
      Atomics.add(ctl, CTL_BUSY, 1);
      if (Atomics.load(ctl, CTL_GATE) === 0) break;
      leave(ctl);
      Atomics.wait(ctl, CTL_GATE, 1, this.deps.gateWaitMs ?? 1000);
    }
    try {
      if (Atomics.load(ctl, CTL_STATE) !== VIEW_ACTIVE) return this.replyError(h, Errno.ENOENT);
      return fn(v);
    } finally {
      leave(ctl);
    }
  }

  // ----- replies ------------------------------------------------------------------------------------------

  private replyOk(h: RequestHeader, bodyBytes: number): Sent {
    const total = OUT_HEADER_BYTES + bodyBytes;
    encodeOutHeader(this.outDv, total, 0, h.uniqueLo, h.uniqueHi);
    this.send(0, total);
    return SENT;
  }

  private replyError(h: RequestHeader, errno: number): Sent {
    encodeOutHeader(this.outDv, OUT_HEADER_BYTES, errno, h.uniqueLo, h.uniqueHi);
    this.send(0, OUT_HEADER_BYTES);
    return SENT;
  }

  /** Replies with the n data bytes at outBuf[at, at+n); the header goes right before them. */
  private replyData(h: RequestHeader, at: number, n: number): Sent {
    const start = at - OUT_HEADER_BYTES;
    const dv =
      start === 0 ? this.outDv : new DataView(this.outDv.buffer, this.outDv.byteOffset + start, OUT_HEADER_BYTES);
    encodeOutHeader(dv, OUT_HEADER_BYTES + n, 0, h.uniqueLo, h.uniqueHi);
    this.send(start, OUT_HEADER_BYTES + n);
    return SENT;
  }

  private send(start: number, total: number): void {
    const r = this.deps.dev.write(start === 0 ? this.deps.outBuf : this.deps.outBuf.subarray(start), total);
    // ENOENT: the request was interrupted and is gone; nothing to do.
    if (r < 0 && r !== -Errno.ENOENT) {
      this.counts.replyErrors++;
      this.log('warn', 'Failed to write FUSE reply', { errno: -r });
    }
  }

  private log(level: 'debug' | 'info' | 'warn' | 'error', msg: string, fields: Record<string, unknown>): void {
    this.deps.emit({ t: 'log', worker: this.deps.index, level, msg, fields });
  }
}

function leave(ctl: Int32Array): void {
  if (Atomics.sub(ctl, CTL_BUSY, 1) === 1) Atomics.notify(ctl, CTL_BUSY);
}
