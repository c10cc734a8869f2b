// SPDX-License-Identifier: Apache-2.0
// One data-path worker's FUSE request loop: read a request from /dev/fuse, serve it, write the reply.
// Everything here is synchronous (blocking syscalls in a worker thread). What the worker cannot serve alone
// it hands off to the main thread, which replies to the kernel (see view-protocol.ts).
//
// The file system has one directory (the root, node 1) holding one regular file per exposed view. Node ids
// are handed out by the main thread and never reused; the file handle is the node id.
import {
  DT_DIR,
  DT_REG,
  Errno,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
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
  S_IFDIR,
  S_IFREG,
  WRITE_PAYLOAD_OFFSET,
} from './fuse-abi.js';
import {
  type Attr,
  type CacheTimeouts,
  type DirEntry,
  encodeAttrOut,
  encodeDirents,
  encodeEntryOut,
  encodeInitOut,
  encodeOpenOut,
  encodeOutHeader,
  encodeStatfsOut,
  encodeWriteOut,
  type FuseRequest,
  parseRequest,
  type RequestHeader,
} from './fuse-codec.js';
import { allSet } from './shared-bitmap.js';
import {
  COUNTER_FAST_READ,
  COUNTER_FAST_WRITE,
  COUNTER_HANDOFF_DISCARD,
  COUNTER_HANDOFF_FLUSH,
  COUNTER_HANDOFF_READ,
  COUNTER_HANDOFF_WRITE,
  COUNTER_MALFORMED,
  COUNTER_REQUESTS,
  COUNTER_SLOTS,
  CTL_BUSY,
  CTL_GATE,
  CTL_OPENS,
  CTL_STATE,
  ENGINE_CTL_FLAGS,
  ENGINE_CTL_GATE,
  ENGINE_CTL_GENERATION,
  ENGINE_CTL_INFLIGHT,
  ENGINE_FLAG_READS_VIA_ENGINE,
  type EngineFastPath,
  VIEW_ACTIVE,
  type ViewDescriptor,
  type WorkerRequest,
  type WorkerControl,
  type WorkerEvent,
} from './view-protocol.js';

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
  /**
   * Position in outBuf where data of O_DIRECT reads goes (found by probeDirectPosition), or -1 / absent to
   * serve reads buffered only.
   */
  readonly directDataPosition?: number;
  /**
   * True when inBuf is placed so that a WRITE's payload is O_DIRECT-aligned: fast-path writes of aligned
   * requests then go through the view's O_DIRECT descriptor.
   */
  readonly directWrites?: boolean;
  /** Request counters (view-protocol.ts COUNTER_*), shared with the main thread for metrics. */
  readonly counters?: Float64Array;
  /** Bound on Atomics.wait while a view's gate is closed, in ms (the gate is re-checked after it). */
  readonly gateWaitMs?: number;
}

interface ViewState {
  readonly d: ViewDescriptor;
  readonly ctl: Int32Array;
  readonly engine: EngineFastPath | null;
  readonly blockBytes: number;
  /** Bytes per meta-bit-map granule (live views). */
  readonly granuleBytes: number;
}

/** O_DIRECT alignment asked of requests and buffers (the logical block size of common disks). */
export const DIRECT_ALIGN_BYTES = 512;
/** How far into outBuf the alignment probe looks (a page covers every 512-byte phase). */
export const DIRECT_PROBE_SPAN_BYTES = 4096;
const DIRECT_PROBE_READ_BYTES = 4096;

/**
 * Finds the first position >= OUT_HEADER_BYTES in `buf` whose address suits O_DIRECT, by reading a page of
 * `probeFd` (an O_DIRECT descriptor of a fully written file, so no hole hides a misalignment) at every
 * 16-byte phase: the kernel answers EINVAL for misaligned buffers, and Node cannot tell addresses. The
 * answer must be unique among neighbouring phases, else -1 (buffered reads only).
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

function aligned(offset: number, length: number): boolean {
  return offset % DIRECT_ALIGN_BYTES === 0 && length % DIRECT_ALIGN_BYTES === 0;
}

const HANDOFF_COUNTER: Readonly<Record<WorkerRequest['t'], number>> = {
  read: COUNTER_HANDOFF_READ,
  write: COUNTER_HANDOFF_WRITE,
  discard: COUNTER_HANDOFF_DISCARD,
  flush: COUNTER_HANDOFF_FLUSH,
};

/** Marks a handler path that has answered its request (exactly one reply per answerable request). */
type Sent = 'sent';
const SENT: Sent = 'sent';

const DIR_ATTR_MODE = S_IFDIR | 0o755;
const WANTED_INIT_FLAGS =
  InitFlag.ASYNC_READ | InitFlag.BIG_WRITES | InitFlag.MAX_PAGES | InitFlag.ASYNC_DIO | InitFlag.PARALLEL_DIROPS;
const STARTED_SEC = Math.floor(Date.now() / 1000);

export class FuseSession {
  private readonly inDv: DataView;
  private readonly outDv: DataView;
  private readonly views = new Map<number, ViewState>();
  private readonly byName = new Map<string, number>();
  private stopping = false;
  private initDone = false;
  /** Aligned data position for O_DIRECT reads in outBuf (>= OUT_HEADER_BYTES), or -1: buffered only. */
  private directPos: number;
  /** Counters, reported for tests and logs. */
  readonly stats = { requests: 0, malformed: 0, garbage: 0, handedOff: 0, replyErrors: 0 };

  private readonly counters: Float64Array;
  private directWritesOk: boolean;

  constructor(private readonly deps: SessionDeps) {
    this.directPos = deps.directDataPosition ?? -1;
    this.directWritesOk = deps.directWrites === true;
    this.counters = deps.counters ?? new Float64Array(COUNTER_SLOTS);
    this.inDv = new DataView(deps.inBuf.buffer, deps.inBuf.byteOffset, deps.inBuf.byteLength);
    this.outDv = new DataView(deps.outBuf.buffer, deps.outBuf.byteOffset, deps.outBuf.byteLength);
  }

  addView(d: ViewDescriptor): void {
    const blockBytes = 2 ** d.blockShift;
    this.views.set(d.nodeId, {
      d,
      ctl: new Int32Array(d.ctl),
      engine: d.engine,
      blockBytes,
      granuleBytes: d.engine ? d.engine.blockSize * 2 ** d.engine.granuleShift : blockBytes,
    });
    this.byName.set(d.name, d.nodeId);
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
    this.stats.requests++;
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
        this.stats.garbage++;
        this.log('warn', 'Dropped FUSE frame without header', { reason: req.reason });
        return undefined;
      case 'malformed':
        this.stats.malformed++;
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
        return req.h.nodeId === FUSE_ROOT_ID ? this.onOpenOut(req.h, 0) : this.replyError(req.h, Errno.ENOTDIR);
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
        return this.withView(req.h, (v) => this.onRead(req.h, v, req.offset, req.size));
      case 'write':
        return this.withView(req.h, (v) => this.onWrite(req.h, v, req.offset, req.size, req.dataOffset));
      case 'flush':
      case 'fsync':
        return this.withView(req.h, (v) => this.onSync(req.h, v));
      case 'fallocate':
        return this.withView(req.h, (v) => this.onFallocate(req.h, v, req.offset, req.length, req.mode));
      case 'unknown':
        return this.replyError(req.h, Errno.ENOSYS);
    }
  }

  // ----- control plane of the tiny file system ------------------------------------------------------------

  private onInit(req: Extract<FuseRequest, { op: 'init' }>): Sent {
    if (req.major !== FUSE_KERNEL_VERSION) {
      // Protocol rule: answer with our major only; the kernel then retries or gives up.
      encodeInitOut(this.outDv, OUT_HEADER_BYTES, { ...emptyInit(), minor: 0 }, FUSE_KERNEL_VERSION);
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
    const v = this.viewByName(name);
    if (!v) return this.replyError(h, Errno.ENOENT);
    const body = encodeEntryOut(this.outDv, OUT_HEADER_BYTES, v.d.nodeId, fileAttr(v), this.deps.timeouts);
    return this.replyOk(h, body);
  }

  private onGetattr(h: RequestHeader): Sent {
    if (h.nodeId === FUSE_ROOT_ID)
      return this.replyOk(h, encodeAttrOut(this.outDv, OUT_HEADER_BYTES, dirAttr(), this.deps.timeouts));
    const v = this.viewById(h.nodeId);
    if (!v) return this.replyError(h, Errno.ENOENT);
    return this.replyOk(h, encodeAttrOut(this.outDv, OUT_HEADER_BYTES, fileAttr(v), this.deps.timeouts));
  }

  /** Mode, owner and time changes are accepted and ignored; the size of a view is set by the engine only. */
  private onSetattr(h: RequestHeader, valid: number, size: number): Sent {
    if (h.nodeId === FUSE_ROOT_ID)
      return this.replyOk(h, encodeAttrOut(this.outDv, OUT_HEADER_BYTES, dirAttr(), this.deps.timeouts));
    const v = this.viewById(h.nodeId);
    if (!v) return this.replyError(h, Errno.ENOENT);
    if ((valid & FATTR_SIZE) !== 0 && size !== v.d.sizeBytes) {
      return this.replyError(h, v.d.readOnly ? Errno.EROFS : Errno.EPERM);
    }
    return this.replyOk(h, encodeAttrOut(this.outDv, OUT_HEADER_BYTES, fileAttr(v), this.deps.timeouts));
  }

  private onReaddir(h: RequestHeader, offset: number, size: number): Sent {
    if (h.nodeId !== FUSE_ROOT_ID) return this.replyError(h, Errno.ENOTDIR);
    this.drainControl();
    const entries: DirEntry[] = [
      { ino: FUSE_ROOT_ID, name: '.', type: DT_DIR },
      { ino: FUSE_ROOT_ID, name: '..', type: DT_DIR },
    ];
    for (const v of this.views.values()) {
      if (Atomics.load(v.ctl, CTL_STATE) === VIEW_ACTIVE)
        entries.push({ ino: v.d.nodeId, name: v.d.name, type: DT_REG });
    }
    const room = Math.min(size, this.deps.outBuf.byteLength - OUT_HEADER_BYTES);
    return this.replyOk(h, encodeDirents(this.outDv, OUT_HEADER_BYTES, entries, offset, room));
  }

  private onStatfs(h: RequestHeader): Sent {
    let bytes = 0;
    for (const v of this.views.values()) bytes += v.d.sizeBytes;
    const bsize = 4096;
    const body = encodeStatfsOut(this.outDv, OUT_HEADER_BYTES, {
      blocks: Math.ceil(bytes / bsize),
      bfree: 0,
      files: this.views.size,
      bsize,
    });
    return this.replyOk(h, body);
  }

  private onOpen(h: RequestHeader, flags: number): Sent {
    if (h.nodeId === FUSE_ROOT_ID) return this.replyError(h, Errno.EISDIR);
    const v = this.viewById(h.nodeId);
    if (!v) return this.replyError(h, Errno.ENOENT);
    if (v.d.readOnly && (flags & O_ACCMODE) !== O_RDONLY) return this.replyError(h, Errno.EROFS);
    Atomics.add(v.ctl, CTL_OPENS, 1);
    return this.onOpenOut(h, this.deps.parallelDirectWrites ? FOPEN_PARALLEL_DIRECT_WRITES : 0, v.d.nodeId);
  }

  private onOpenOut(h: RequestHeader, openFlags: number, fh = 0): Sent {
    return this.replyOk(h, encodeOpenOut(this.outDv, OUT_HEADER_BYTES, fh, openFlags));
  }

  private onRelease(h: RequestHeader): Sent {
    const v = this.views.get(h.nodeId);
    if (v) Atomics.sub(v.ctl, CTL_OPENS, 1);
    return this.replyOk(h, 0);
  }

  // ----- data plane ---------------------------------------------------------------------------------------

  /** Runs `fn` with the view entered (BUSY held, gate open, view active); answers ENOENT for a gone view. */
  private withView(h: RequestHeader, fn: (v: ViewState) => Sent): Sent {
    const v = this.viewById(h.nodeId);
    if (!v) return this.replyError(h, Errno.ENOENT);
    const ctl = v.ctl;
    for (;;) {
      Atomics.add(ctl, CTL_BUSY, 1);
      if (Atomics.load(ctl, CTL_GATE) === 0) break;
      this.leave(ctl);
      Atomics.wait(ctl, CTL_GATE, 1, this.deps.gateWaitMs ?? 1000);
    }
    try {
      if (Atomics.load(ctl, CTL_STATE) !== VIEW_ACTIVE) return this.replyError(h, Errno.ENOENT);
      return fn(v);
    } finally {
      this.leave(ctl);
    }
  }

  private leave(ctl: Int32Array): void {
    if (Atomics.sub(ctl, CTL_BUSY, 1) === 1) Atomics.notify(ctl, CTL_BUSY);
  }

  private onRead(h: RequestHeader, v: ViewState, offset: number, size: number): Sent {
    const limit = Math.min(size, this.deps.maxWrite);
    const n = offset >= v.d.sizeBytes ? 0 : Math.min(limit, v.d.sizeBytes - offset);
    if (n === 0) return this.replyOk(h, 0);
    if (v.d.kind === 'remote' || (v.engine && !readsDirect(v.engine))) {
      return this.handOff(h, { t: 'read', ...this.base(h, v), offset, length: n });
    }
    // O_DIRECT when the request is sector-aligned: no readahead (8 MiB on this machine's disk) and no second
    // page cache under the loop device's own direct I/O. Data lands at an aligned position of the reply
    // buffer with the reply header right before it.
    const at = this.directPosition(v, offset, n);
    if (at > 0) {
      try {
        this.readData(v, v.d.fdDirect, at, offset, n);
        this.counters[COUNTER_FAST_READ]! += 1;
        return this.replyData(h, at, n);
      } catch (err) {
        if (errnoOf(err) !== Errno.EINVAL) throw err;
        this.directPos = -1; // this file system wants another alignment: stay buffered
      }
    }
    this.readData(v, v.d.fd, OUT_HEADER_BYTES, offset, n);
    this.counters[COUNTER_FAST_READ]! += 1;
    return this.replyData(h, OUT_HEADER_BYTES, n);
  }

  private readData(v: ViewState, fd: number, at: number, offset: number, n: number): void {
    if (v.engine) this.readLive(v, v.engine.meta, fd, at, offset, n);
    else this.preadFull(fd, at, n, offset);
  }

  /** Position in outBuf for O_DIRECT data of this request, or -1 to read buffered. */
  private directPosition(v: ViewState, offset: number, n: number): number {
    if (v.d.fdDirect < 0 || !aligned(offset, n)) return -1;
    return this.directPos;
  }

  /** Replies with the n data bytes at outBuf[at, at+n); the header goes right before them. */
  private replyData(h: RequestHeader, at: number, n: number): Sent {
    const start = at - OUT_HEADER_BYTES;
    const dv =
      start === 0 ? this.outDv : new DataView(this.outDv.buffer, this.outDv.byteOffset + start, OUT_HEADER_BYTES);
    encodeOutHeader(dv, OUT_HEADER_BYTES + n, 0, h.uniqueLo, h.uniqueHi);
    this.sendFrom(start, OUT_HEADER_BYTES + n);
    return SENT;
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

  private onWrite(h: RequestHeader, v: ViewState, offset: number, size: number, dataOffset: number): Sent {
    if (v.d.readOnly) return this.replyError(h, Errno.EROFS);
    if (size === 0) return this.replyOk(h, encodeWriteOut(this.outDv, OUT_HEADER_BYTES, 0));
    if (offset + size > v.d.sizeBytes) return this.replyError(h, Errno.ENOSPC);
    if (v.engine) {
      const ctl = v.engine.control;
      // Engine fast-path protocol: count in, then check; an exclusive engine section that saw the count at
      // 0 after closing the gate cannot overlap this write.
      Atomics.add(ctl, ENGINE_CTL_INFLIGHT, 1);
      try {
        if (this.mayWriteDirect(v, v.engine, offset, size)) {
          this.writeData(v, dataOffset, size, offset);
          this.counters[COUNTER_FAST_WRITE]! += 1;
          return this.replyOk(h, encodeWriteOut(this.outDv, OUT_HEADER_BYTES, size));
        }
      } finally {
        Atomics.sub(ctl, ENGINE_CTL_INFLIGHT, 1);
      }
    }
    if (v.d.kind !== 'file') {
      // Slow path: the main thread performs the whole write through the engine (COW, meta bit, data).
      const data = new Uint8Array(this.deps.inBuf.subarray(dataOffset, dataOffset + size)); // a copy
      return this.handOff(h, { t: 'write', ...this.base(h, v), offset, data }, [data.buffer as ArrayBuffer]);
    }
    this.writeData(v, dataOffset, size, offset);
    this.counters[COUNTER_FAST_WRITE]! += 1;
    return this.replyOk(h, encodeWriteOut(this.outDv, OUT_HEADER_BYTES, size));
  }

  /**
   * O_DIRECT for aligned writes: no dirty pages pile up under the loop device's own direct I/O, and the
   * engine's flush (fsync of the clone file) stays short. Buffered otherwise, or if the kernel refuses.
   */
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

  private mayWriteDirect(v: ViewState, e: EngineFastPath, offset: number, size: number): boolean {
    if (Atomics.load(e.control, ENGINE_CTL_GATE) !== 0) return false;
    if (Atomics.load(e.control, ENGINE_CTL_GENERATION) !== e.generation) return false;
    const b0 = Math.floor(offset / v.blockBytes);
    const b1 = Math.floor((offset + size - 1) / v.blockBytes);
    return b1 < e.blockCount && allSet(e.settled, b0, b1);
  }

  private pwriteFull(fd: number, dataOffset: number, size: number, position: number): void {
    let done = 0;
    while (done < size) {
      const w = this.deps.file.pwrite(fd, this.deps.inBuf, dataOffset + done, size - done, position + done);
      if (w <= 0) throw Object.assign(new Error('short write'), { errno: -Errno.EIO });
      done += w;
    }
  }

  /** FLUSH/FSYNC: for a live view the engine's flush covers the clone file (fast-path writes included). */
  private onSync(h: RequestHeader, v: ViewState): Sent {
    if (v.d.kind === 'file' && !v.d.readOnly) this.deps.file.fdatasync(v.d.fd);
    if (v.d.kind !== 'file') return this.handOff(h, { t: 'flush', ...this.base(h, v) });
    return this.replyOk(h, 0);
  }

  /**
   * PUNCH_HOLE and ZERO_RANGE mean "this range reads as zeros afterwards" (loop turns DISCARD and
   * WRITE_ZEROES into them); the engine clears meta bit map granules and zeroes partial ones. Plain
   * preallocation is a no-op (the engine allocates on write). Pass-through views answer EOPNOTSUPP, which
   * loop treats as "discard unsupported" (never ENOSYS: that would switch fallocate off for the whole mount).
   */
  private onFallocate(h: RequestHeader, v: ViewState, offset: number, length: number, mode: number): Sent {
    const known = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE;
    if ((mode & ~known) !== 0) return this.replyError(h, Errno.EOPNOTSUPP);
    const zeroing = (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) !== 0;
    if (!zeroing) return this.replyOk(h, 0);
    if (v.d.readOnly) return this.replyError(h, Errno.EROFS);
    if (v.d.kind === 'file') return this.replyError(h, Errno.EOPNOTSUPP);
    if (offset >= v.d.sizeBytes || length === 0) return this.replyOk(h, 0);
    const len = Math.min(length, v.d.sizeBytes - offset);
    return this.handOff(h, { t: 'discard', ...this.base(h, v), offset, length: len, mode });
  }

  private base(h: RequestHeader, v: ViewState) {
    return { worker: this.deps.index, nodeId: v.d.nodeId, uniqueLo: h.uniqueLo, uniqueHi: h.uniqueHi };
  }

  /** The main thread now owns the reply of this request. */
  private handOff(_h: RequestHeader, msg: WorkerRequest, transfer?: ArrayBuffer[]): Sent {
    this.stats.handedOff++;
    this.counters[HANDOFF_COUNTER[msg.t]]! += 1;
    this.deps.submit(msg, transfer);
    return SENT;
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

  // ----- view registry ------------------------------------------------------------------------------------

  private drainControl(): void {
    for (let m = this.deps.control(); m; m = this.deps.control()) {
      if (m.t === 'add' || m.t === 'update') this.addView(m.view);
      else if (m.t === 'stop') this.stopping = true;
    }
    for (const [id, v] of this.views) {
      if (Atomics.load(v.ctl, CTL_STATE) !== VIEW_ACTIVE) {
        this.views.delete(id);
        if (this.byName.get(v.d.name) === id) this.byName.delete(v.d.name);
      }
    }
  }

  private viewById(nodeId: number): ViewState | undefined {
    let v = this.views.get(nodeId);
    if (!v || Atomics.load(v.ctl, CTL_STATE) !== VIEW_ACTIVE || staleEngine(v)) {
      this.drainControl();
      v = this.views.get(nodeId);
    }
    return v && Atomics.load(v.ctl, CTL_STATE) === VIEW_ACTIVE ? v : undefined;
  }

  private viewByName(name: string): ViewState | undefined {
    this.drainControl();
    const id = this.byName.get(name);
    return id === undefined ? undefined : this.viewById(id);
  }

  // ----- replies ------------------------------------------------------------------------------------------

  private replyOk(h: RequestHeader, bodyBytes: number): Sent {
    const total = OUT_HEADER_BYTES + bodyBytes;
    encodeOutHeader(this.outDv, total, 0, h.uniqueLo, h.uniqueHi);
    this.send(total);
    return SENT;
  }

  private replyError(h: RequestHeader, errno: number): Sent {
    encodeOutHeader(this.outDv, OUT_HEADER_BYTES, errno, h.uniqueLo, h.uniqueHi);
    this.send(OUT_HEADER_BYTES);
    return SENT;
  }

  private send(total: number): void {
    this.sendFrom(0, total);
  }

  private sendFrom(start: number, total: number): void {
    const r = this.deps.dev.write(start === 0 ? this.deps.outBuf : this.deps.outBuf.subarray(start), total);
    // ENOENT: the request was interrupted and is gone; nothing to do.
    if (r < 0 && r !== -Errno.ENOENT) {
      this.stats.replyErrors++;
      this.log('warn', 'Failed to write FUSE reply', { errno: -r });
    }
  }

  private log(level: 'debug' | 'info' | 'warn' | 'error', msg: string, fields: Record<string, unknown>): void {
    this.deps.emit({ t: 'log', worker: this.deps.index, level, msg, fields });
  }

  get initialized(): boolean {
    return this.initDone;
  }
}

/** The engine replaced its arrays (resize); the main thread has posted the new ones. */
function staleEngine(v: ViewState): boolean {
  return v.engine !== null && Atomics.load(v.engine.control, ENGINE_CTL_GENERATION) !== v.engine.generation;
}

function readsDirect(e: EngineFastPath): boolean {
  return (
    (Atomics.load(e.control, ENGINE_CTL_FLAGS) & ENGINE_FLAG_READS_VIA_ENGINE) === 0 &&
    Atomics.load(e.control, ENGINE_CTL_GENERATION) === e.generation
  );
}

function emptyInit() {
  return { minor: 0, maxReadahead: 0, flags: 0, maxBackground: 0, congestionThreshold: 0, maxWrite: 0, maxPages: 0 };
}

function dirAttr(): Attr {
  return { ino: FUSE_ROOT_ID, size: 0, mode: DIR_ATTR_MODE, nlink: 2, mtimeSec: STARTED_SEC, blksize: 4096 };
}

function fileAttr(v: ViewState): Attr {
  return {
    ino: v.d.nodeId,
    size: v.d.sizeBytes,
    mode: S_IFREG | (v.d.readOnly ? 0o400 : 0o600),
    nlink: 1,
    mtimeSec: v.d.mtimeSec,
    blksize: v.blockBytes,
  };
}

/** errno of a Node fs exception (its `errno` is negative), EIO for anything else. */
export function errnoOf(err: unknown): number {
  const e = (err as { errno?: unknown } | null)?.errno;
  if (typeof e === 'number' && e !== 0) return Math.abs(e);
  return Errno.EIO;
}
