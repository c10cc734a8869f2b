// SPDX-License-Identifier: Apache-2.0
// The FUSE server: mounts one FUSE file system, runs N data-path workers on its /dev/fuse descriptor, and
// exposes views (one regular file each) backed by a plain file (`file`), by the engine's production volume
// (`live`) or by a handler on this thread (`remote`). See view-protocol.ts for the shared-memory contract.
//
// Threading: workers serve every request they can alone (pass-through and the live fast path); the rest
// are handed off here (WorkerRequest, handoff.ts); this thread runs them and writes their replies to /dev/fuse.
// It must never block on I/O that goes through the mount (see mount/exec.ts): it would deadlock against its
// own workers.
import { closeSync, constants as fsConstants, openSync, statSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Registry } from 'prom-client';
import type { Logger } from '../../../common/src/log.js';
import { MountError } from '../mount/errors.js';
import { Errno, FUSE_MAX_IO_BYTES, FUSE_ROOT_ID } from './fuse-abi.js';
import { DatapathMetrics } from './datapath-metrics.js';
import { encodeNotifyInvalEntry, encodeNotifyInvalInode, encodeNotifyResend } from './fuse-reply.js';
import {
  abortFuseConnection,
  closeFuseDevice,
  fuseConnectionId,
  mountFuse,
  openFuseDevice,
  unmountFuse,
} from './fuse-mount.js';
import { type SessionRecord, type ViewKind, writeSessionRecord } from './session-record.js';
import { DIRECT_PROBE_SPAN_BYTES, errnoOf } from './worker-io.js';
import {
  CTL_BUSY,
  CTL_GATE,
  CTL_OPENS,
  CTL_STATE,
  CTL_VERSION,
  CTL_WORDS,
  type EngineFastPath,
  VIEW_ACTIVE,
  VIEW_REMOVED,
  type ViewDescriptor,
  type WorkerRequest,
  type WorkerControl,
} from './view-protocol.js';

export type { LiveViewHandler, RemoteViewHandler } from './handoff.js';
import { type LiveViewHandler, type RemoteViewHandler, replyHandoff, runHandoff } from './handoff.js';
import { WorkerPool } from './worker-pool.js';

export type ViewSpec =
  | { readonly kind: 'file'; readonly name: string; readonly path: string; readonly readOnly: boolean }
  | {
      readonly kind: 'live';
      readonly name: string;
      /** The clone file; workers pread/pwrite it directly. */
      readonly path: string;
      readonly sizeBytes: number;
      readonly blockSizeBytes: number;
      /** The engine's current fast-path arrays (called again when the engine's generation changes). */
      readonly fastPath: () => EngineFastPath;
      readonly handler: LiveViewHandler;
    }
  | {
      readonly kind: 'remote';
      readonly name: string;
      readonly sizeBytes: number;
      readonly blockSizeBytes: number;
      readonly readOnly: boolean;
      readonly handler: RemoteViewHandler;
    };

export interface FuseServerOptions {
  readonly mountpoint: string;
  readonly log: Logger;
  /** Data-path worker threads (default 4; the measurements in datapath.md used 4 on 2 cores). */
  readonly workers?: number;
  readonly source?: string;
  readonly entryValidSec?: number;
  readonly attrValidSec?: number;
  readonly parallelDirectWrites?: boolean;
  /** Registry for the data-path metrics (datapath-metrics.ts); none registered when absent. */
  readonly registry?: Registry;
  /**
   * Serve sector-aligned reads and fast-path writes of file and live views with O_DIRECT (default false:
   * buffered I/O measured faster on this machine kind, see ADR 0003).
   */
  readonly directIo?: boolean;
  readonly initTimeoutMs?: number;
  /**
   * Where the session record (session-record.ts) is kept, so that a successor process can adopt the
   * connection; none is written when absent.
   */
  readonly recordPath?: string;
}

interface ExposedView {
  readonly d: ViewDescriptor;
  readonly ctl: Int32Array;
  readonly spec: ViewSpec;
  /** Handed-off requests of this view not yet answered (shared by every ExposedView of one node id). */
  readonly pending: { count: number };
}

const VIEW_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._@:+-]{0,199}$/;

export { workerScriptPath } from './worker-pool.js';

export class FuseServer {
  private pool: WorkerPool | undefined;
  private readonly views = new Map<string, ExposedView>();
  private readonly byNode = new Map<number, ExposedView>();
  private nextNodeId = FUSE_ROOT_ID + 1;
  /** Node ids the kernel may still know from a predecessor, by view name (adopted connections only). */
  private readonly reserved = new Map<string, { nodeId: number; kind: ViewKind }>();
  private connectionId = -1;
  private released = false;
  private stopping = false;
  private stopped = false;
  private dioProbePath: string | null = null;
  private readonly metrics: DatapathMetrics | undefined;

  private constructor(
    private readonly opts: FuseServerOptions,
    private readonly fuseFd: number,
    private readonly log: Logger,
  ) {
    this.metrics = opts.registry
      ? new DatapathMetrics(opts.registry, {
          workerCounters: () => this.pool?.counters ?? [],
          handoffsInFlight: () => this.handoffsInFlight(),
          views: () => this.views.size,
        })
      : undefined;
  }

  /** Mounts a new FUSE file system on `mountpoint` and starts its workers. Needs root. */
  static async start(opts: FuseServerOptions): Promise<FuseServer> {
    if (process.getuid?.() !== 0) throw new MountError('DP_ERR_NOT_ROOT', 'the FUSE server must run as root');
    await mkdir(opts.mountpoint, { recursive: true });
    const fd = openFuseDevice();
    const server = new FuseServer(opts, fd, opts.log.child({ mountpoint: opts.mountpoint }));
    try {
      await mountFuse(fd, {
        mountpoint: opts.mountpoint,
        source: opts.source ?? 'loopsnap',
        maxReadBytes: FUSE_MAX_IO_BYTES,
      });
    } catch (err) {
      closeFuseDevice(fd);
      throw err;
    }
    try {
      if (opts.directIo === true) server.dioProbePath = await writeDioProbe(dirname(opts.mountpoint));
      const pool = new WorkerPool({
        fuseFd: fd,
        log: server.log,
        entryValidSec: opts.entryValidSec ?? 1,
        attrValidSec: opts.attrValidSec ?? 3600,
        parallelDirectWrites: opts.parallelDirectWrites ?? true,
        dioProbePath: server.dioProbePath,
        views: () => [...server.views.values()].map((v) => v.d),
        onRequest: (m) => void server.answer(m),
      });
      server.pool = pool;
      pool.start(Math.max(1, opts.workers ?? 4));
      await pool.waitInit(opts.initTimeoutMs ?? 10_000);
      server.connectionId = (await fuseConnectionId(opts.mountpoint)) ?? -1;
      server.writeRecord();
    } catch (err) {
      await server.stop({ force: true }).catch(() => undefined);
      throw err;
    }
    server.log.info({ workers: server.pool?.size }, 'Started FUSE server');
    return server;
  }

  /**
   * Takes over the live connection behind `fuseFd` (a descriptor of the same open /dev/fuse file the
   * predecessor served; its mount stays as it is) as described by `record`. No worker reads yet: re-expose
   * the views first (addView reuses their node ids), then `resume()`. Throws DP_ERR_ADOPT when the mount at
   * the record's mount point is not that connection or the connection is gone.
   */
  static async adopt(opts: FuseServerOptions, fuseFd: number, record: SessionRecord): Promise<FuseServer> {
    if (process.getuid?.() !== 0) throw new MountError('DP_ERR_NOT_ROOT', 'the FUSE server must run as root');
    if (record.mountpoint !== opts.mountpoint) {
      throw new MountError('DP_ERR_ADOPT', `session record is for ${record.mountpoint}, not ${opts.mountpoint}`);
    }
    const id = await fuseConnectionId(opts.mountpoint);
    if (id !== record.connectionId) {
      throw new MountError(
        'DP_ERR_ADOPT',
        `FUSE connection ${String(id)} at ${opts.mountpoint} is not the recorded connection ${record.connectionId}`,
      );
    }
    if (!(await connectionAlive(id))) {
      throw new MountError('DP_ERR_ADOPT', `FUSE connection ${id} at ${opts.mountpoint} is gone`);
    }
    const server = new FuseServer(opts, fuseFd, opts.log.child({ mountpoint: opts.mountpoint }));
    server.connectionId = id;
    server.nextNodeId = record.nextNodeId;
    for (const [name, v] of Object.entries(record.views)) server.reserved.set(name, { ...v });
    if (opts.directIo === true) server.dioProbePath = await writeDioProbe(dirname(opts.mountpoint));
    server.log.info({ connection: id, views: server.reserved.size }, 'Adopted FUSE connection');
    return server;
  }

  /**
   * Starts the workers of an adopted connection and asks the kernel to resend every request the predecessor
   * had read but not answered (FUSE_NOTIFY_RESEND; block writes are idempotent, so a repeat is safe). Views
   * of the record not exposed again by now are dropped: the kernel's requests for them get ENOENT.
   */
  resume(): void {
    if (this.pool) return;
    for (const name of this.reserved.keys()) {
      this.log.warn({ view: name }, 'View of the predecessor was not exposed again; dropping it');
    }
    this.reserved.clear();
    this.writeRecord();
    const pool = new WorkerPool({
      fuseFd: this.fuseFd,
      log: this.log,
      entryValidSec: this.opts.entryValidSec ?? 1,
      attrValidSec: this.opts.attrValidSec ?? 3600,
      parallelDirectWrites: this.opts.parallelDirectWrites ?? true,
      dioProbePath: this.dioProbePath,
      views: () => [...this.views.values()].map((v) => v.d),
      onRequest: (m) => void this.answer(m),
    });
    this.pool = pool;
    pool.start(Math.max(1, this.opts.workers ?? 4));
    const msg = encodeNotifyResend();
    try {
      writeSync(this.fuseFd, msg, 0, msg.byteLength);
    } catch (err) {
      // Kernels before 6.9 answer EINVAL: requests the predecessor held stay unanswered until the mount goes.
      this.log.error({ err }, 'FUSE_NOTIFY_RESEND failed; requests the predecessor held may hang');
    }
    this.log.info({ workers: pool.size, views: this.views.size }, 'Resumed FUSE server');
  }

  /** The /dev/fuse descriptor of the connection (for the keeper process, see csi/src/keeper/). */
  get device(): number {
    return this.fuseFd;
  }

  /** The connection id (`/sys/fs/fuse/connections/<id>`), -1 before the handshake. */
  get connection(): number {
    return this.connectionId;
  }

  /**
   * Stops serving without ending the connection, for a successor to adopt it: closes every view's gate (new
   * requests wait inside the workers, read but unanswered, until the successor asks for them again), waits
   * for requests in flight, and stops restarting workers. The mount, the views' node ids and the kernel's
   * open files stay as they are; the caller flushes the engine and exits the process (which ends the
   * workers blocked on /dev/fuse). Never unmounts, never closes the device.
   */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    this.stopping = true;
    this.pool?.stopRestarting();
    for (const v of this.views.values()) Atomics.store(v.ctl, CTL_GATE, 1);
    for (const v of this.views.values()) {
      await waitZero(v.ctl, CTL_BUSY);
      while (v.pending.count > 0) await new Promise((r) => setTimeout(r, 1));
    }
    this.writeRecord();
    this.log.info({ views: this.views.size }, 'Released FUSE connection for a successor');
  }

  /** Sets a view's open count after adoption (opens the predecessor counted are not known here). */
  setOpenCount(name: string, opens: number): void {
    const v = this.views.get(name);
    if (v) Atomics.store(v.ctl, CTL_OPENS, opens);
  }

  private writeRecord(): void {
    if (this.opts.recordPath === undefined || this.connectionId < 0) return;
    const views: Record<string, { nodeId: number; kind: ViewKind }> = {};
    for (const [name, v] of this.reserved) views[name] = v;
    for (const v of this.views.values()) views[v.d.name] = { nodeId: v.d.nodeId, kind: v.d.kind };
    writeSessionRecord(this.opts.recordPath, {
      format: 1,
      connectionId: this.connectionId,
      mountpoint: this.opts.mountpoint,
      nextNodeId: this.nextNodeId,
      views,
    });
  }

  get mountpoint(): string {
    return this.opts.mountpoint;
  }

  pathOf(name: string): string {
    return join(this.opts.mountpoint, name);
  }

  viewNames(): string[] {
    return [...this.views.keys()];
  }

  /** Exposes a view as `<mountpoint>/<name>`; returns that path. */
  addView(spec: ViewSpec): string {
    if (this.stopping) throw new MountError('DP_ERR_SERVER_STOPPED', 'FUSE server is stopping');
    if (!VIEW_NAME_RE.test(spec.name))
      throw new MountError('DP_ERR_BAD_NAME', `bad view name ${JSON.stringify(spec.name)}`);
    if (this.views.has(spec.name)) throw new MountError('DP_ERR_VIEW_EXISTS', `view ${spec.name} is already exposed`);
    const ctlBuf = new SharedArrayBuffer(CTL_WORDS * 4);
    const ctl = new Int32Array(ctlBuf);
    Atomics.store(ctl, CTL_STATE, VIEW_ACTIVE);
    let fd = -1;
    let fdDirect = -1;
    let sizeBytes: number;
    if (spec.kind === 'file') {
      fd = openSync(spec.path, spec.readOnly ? 'r' : 'r+');
      sizeBytes = statSync(spec.path).size;
    } else if (spec.kind === 'live') {
      fd = openSync(spec.path, 'r+');
      sizeBytes = spec.sizeBytes;
    } else {
      sizeBytes = spec.sizeBytes;
    }
    if (fd >= 0 && spec.kind !== 'remote' && this.opts.directIo === true) {
      fdDirect = openDirect(spec.path, spec.kind === 'file' && spec.readOnly);
    }
    const blockSizeBytes = spec.kind === 'file' ? 4096 : spec.blockSizeBytes;
    const known = this.reserved.get(spec.name);
    this.reserved.delete(spec.name);
    const d: ViewDescriptor = {
      nodeId: known?.nodeId ?? this.nextNodeId++,
      name: spec.name,
      kind: spec.kind,
      readOnly: spec.kind === 'live' ? false : spec.readOnly,
      sizeBytes,
      fd,
      fdDirect,
      ctl: ctlBuf,
      blockShift: Math.log2(blockSizeBytes),
      engine: spec.kind === 'live' ? spec.fastPath() : null,
      mtimeSec: Math.floor(Date.now() / 1000),
      version: 0,
    };
    const v: ExposedView = { d, ctl, spec, pending: { count: 0 } };
    this.views.set(spec.name, v);
    this.byNode.set(d.nodeId, v);
    // On disk before the kernel can look the name up and learn the node id.
    this.writeRecord();
    this.pool?.broadcast({ t: 'add', view: d } satisfies WorkerControl);
    this.log.info({ view: spec.name, kind: spec.kind, sizeBytes, nodeId: d.nodeId }, 'Exposed view');
    return this.pathOf(spec.name);
  }

  /**
   * Re-reads a live view's engine arrays and hands them to the workers (after the engine replaced them,
   * e.g. on resize; until then workers see a stale generation and use the slow path, which stays correct).
   */
  refreshLiveView(name: string): void {
    const v = this.views.get(name);
    const missing = new MountError('DP_ERR_VIEW_NOT_FOUND', `live view ${name} is not exposed`);
    if (v === undefined) throw missing;
    if (v.spec.kind !== 'live') throw missing;
    this.update(v, { engine: v.spec.fastPath() });
  }

  /**
   * Grows view `name` to `sizeBytes` (never shrinks): its descriptor (and, for a live view, the engine arrays,
   * which a grown engine has replaced) goes to the workers, then the kernel's cached attributes of the file
   * are dropped (FUSE_NOTIFY_INVAL_INODE), so the next stat or loop capacity query asks GETATTR and gets the
   * new size. The engine behind the view must have grown first. Returns the node id of the view's file.
   */
  growView(name: string, sizeBytes: number): number {
    const v = this.views.get(name);
    if (v === undefined || v.spec.kind === 'file') {
      throw new MountError('DP_ERR_VIEW_NOT_FOUND', `engine view ${name} is not exposed`);
    }
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes < v.d.sizeBytes) {
      throw new Error(`view ${name} cannot shrink from ${v.d.sizeBytes} to ${sizeBytes} bytes`);
    }
    const d = this.update(v, { sizeBytes, ...(v.spec.kind === 'live' ? { engine: v.spec.fastPath() } : {}) });
    this.invalidateAttributes(d.nodeId);
    this.log.info({ view: name, sizeBytes }, 'Grew view');
    return d.nodeId;
  }

  /** Size of view `name` as the workers serve it (undefined when not exposed). */
  viewSize(name: string): number | undefined {
    return this.views.get(name)?.d.sizeBytes;
  }

  /** Drops the kernel's cached attributes of the file with this node id (no-op when it has none cached). */
  invalidateAttributes(nodeId: number): void {
    try {
      const msg = encodeNotifyInvalInode(nodeId);
      writeSync(this.fuseFd, msg, 0, msg.byteLength);
    } catch {
      // ENOENT: the kernel holds no inode for it (never looked up, or forgotten).
    }
  }

  /** Posts a new descriptor of `v` to the workers, then publishes its version (view-protocol.ts CTL_VERSION). */
  private update(v: ExposedView, change: Partial<Pick<ViewDescriptor, 'sizeBytes' | 'engine'>>): ViewDescriptor {
    const d: ViewDescriptor = { ...v.d, ...change, version: v.d.version + 1 };
    const nv: ExposedView = { d, ctl: v.ctl, spec: v.spec, pending: v.pending };
    this.views.set(d.name, nv);
    this.byNode.set(d.nodeId, nv);
    this.pool?.broadcast({ t: 'update', view: d } satisfies WorkerControl);
    Atomics.store(v.ctl, CTL_VERSION, d.version);
    return d;
  }

  /** Open handles on a view (a loop device attached to it holds one). */
  /** Requests handed off to the main thread and not answered yet (foreground slow-path load). */
  handoffsInFlight(): number {
    let n = 0;
    for (const v of this.byNode.values()) n += v.pending.count;
    return n;
  }

  openCount(name: string): number {
    const v = this.views.get(name);
    return v ? Atomics.load(v.ctl, CTL_OPENS) : 0;
  }

  /**
   * Stops exposing a view. Refuses (DP_ERR_VIEW_BUSY) while the file is open, unless `force`. Waits for
   * requests in flight on it, then closes its descriptor. Unknown names are not an error.
   */
  async removeView(name: string, opts: { force?: boolean } = {}): Promise<void> {
    const v = this.views.get(name);
    if (!v) return;
    if (!opts.force && Atomics.load(v.ctl, CTL_OPENS) > 0) {
      throw new MountError('DP_ERR_VIEW_BUSY', `view ${name} is open (detach its loop device first)`);
    }
    Atomics.store(v.ctl, CTL_STATE, VIEW_REMOVED);
    this.views.delete(name);
    await waitZero(v.ctl, CTL_BUSY);
    while (v.pending.count > 0) await new Promise((r) => setTimeout(r, 1));
    this.byNode.delete(v.d.nodeId);
    closeViewFds(v.d);
    this.invalidateEntry(name);
    this.writeRecord();
    this.log.info({ view: name }, 'Removed view');
  }

  /**
   * Runs `fn` while no request of the view is in flight: closes its gate (new requests wait in the workers),
   * waits for requests inside the workers and for handed-off ones, runs `fn`, reopens the gate. For work that
   * must see a view idle (refreshing an RW snapshot under its view). `fn` must not wait for I/O on this view.
   */
  async quiesce<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const v = this.views.get(name);
    if (!v) throw new MountError('DP_ERR_VIEW_NOT_FOUND', `view ${name} is not exposed`);
    if (Atomics.compareExchange(v.ctl, CTL_GATE, 0, 1) !== 0) {
      throw new MountError('DP_ERR_VIEW_BUSY', `view ${name} is already quiesced`);
    }
    try {
      await waitZero(v.ctl, CTL_BUSY);
      while (v.pending.count > 0) await new Promise((r) => setTimeout(r, 1));
      return await fn();
    } finally {
      Atomics.store(v.ctl, CTL_GATE, 0);
      Atomics.notify(v.ctl, CTL_GATE);
    }
  }

  /**
   * Unmounts and stops the workers. Refuses while a view is open unless `force`, which detaches the mount
   * lazily and aborts the connection (I/O on still-attached loop devices then fails with EIO).
   */
  async stop(opts: { force?: boolean } = {}): Promise<void> {
    if (this.stopped) return;
    const busy = [...this.views.values()].filter((v) => Atomics.load(v.ctl, CTL_OPENS) > 0).map((v) => v.d.name);
    if (busy.length > 0 && !opts.force) {
      throw new MountError('DP_ERR_VIEW_BUSY', `views still open: ${busy.join(', ')}`);
    }
    this.stopping = true;
    this.pool?.stopRestarting();
    const connection = await fuseConnectionId(this.opts.mountpoint);
    await unmountFuse(this.opts.mountpoint, { lazy: opts.force === true });
    if (this.pool && !(await this.pool.waitExit(5000)) && connection !== undefined) {
      await abortFuseConnection(connection);
      await this.pool.waitExit(5000);
    }
    await this.pool?.terminate();
    // Handed-off requests still running (their replies now fail harmlessly) must not see a closed fd reused.
    for (let i = 0; i < 10_000 && [...this.byNode.values()].some((v) => v.pending.count > 0); i++) {
      await new Promise((r) => setTimeout(r, 1));
    }
    for (const v of this.views.values()) {
      Atomics.store(v.ctl, CTL_STATE, VIEW_REMOVED);
      closeViewFds(v.d);
    }
    this.views.clear();
    this.byNode.clear();
    closeFuseDevice(this.fuseFd);
    if (this.dioProbePath) await rm(this.dioProbePath, { force: true });
    this.stopped = true;
    this.log.info('Stopped FUSE server');
  }

  // ----- hand-off ---------------------------------------------------------------------------------------

  /** Runs a handed-off request and writes its reply to the kernel. Never throws. */
  private async answer(m: WorkerRequest): Promise<void> {
    // After release() the successor owns every unanswered request (FUSE_NOTIFY_RESEND re-queues them);
    // a hand-off that was still queued on the message port is dropped, never answered with an error.
    if (this.released) return;
    const v = this.byNode.get(m.nodeId);
    if (!v || v.spec.kind === 'file') {
      replyHandoff(this.fuseFd, m, v ? Errno.EOPNOTSUPP : Errno.ENOENT);
      return;
    }
    v.pending.count++;
    try {
      const body = await runHandoff(v.spec, m);
      if (!replyHandoff(this.fuseFd, m, 0, body) && !this.stopped)
        this.log.warn({ view: v.d.name }, 'Failed to write FUSE reply');
    } catch (err) {
      this.metrics?.handoffErrors.inc({ op: m.t });
      this.log.warn(
        { err, request: m.t, view: v.d.name, offset: 'offset' in m ? m.offset : undefined },
        'Failed data-path request',
      );
      replyHandoff(this.fuseFd, m, errnoOf(err));
    } finally {
      v.pending.count--;
    }
  }

  private invalidateEntry(name: string): void {
    try {
      const msg = encodeNotifyInvalEntry(FUSE_ROOT_ID, name);
      writeSync(this.fuseFd, msg, 0, msg.byteLength);
    } catch {
      // ENOENT: the kernel had no cached entry.
    }
  }
}

/**
 * False when the fuse control file system (/sys/fs/fuse/connections) is mounted and lacks connection `id`.
 * Without it (containers rarely mount it) the descriptor the keeper held is the proof of life.
 */
async function connectionAlive(id: number): Promise<boolean> {
  const dir = '/sys/fs/fuse/connections';
  if ((await readdir(dir).catch(() => [])).length === 0) return true;
  return stat(`${dir}/${id}`).then(
    () => true,
    () => false,
  );
}

/** A fully written, fsynced page-multiple file next to the mount point (see probeDirectPosition). */
async function writeDioProbe(dir: string): Promise<string | null> {
  const path = join(dir, '.loopsnap-dio-probe');
  try {
    await writeFile(path, randomBytes(2 * DIRECT_PROBE_SPAN_BYTES), { flush: true });
    return path;
  } catch {
    return null;
  }
}

function openDirect(path: string, readOnly: boolean): number {
  try {
    return openSync(path, (readOnly ? fsConstants.O_RDONLY : fsConstants.O_RDWR) | fsConstants.O_DIRECT);
  } catch {
    return -1; // the backing file system refuses O_DIRECT: buffered reads only
  }
}

function closeViewFds(d: ViewDescriptor): void {
  if (d.fd >= 0) closeSync(d.fd);
  if (d.fdDirect >= 0) closeSync(d.fdDirect);
}

/** Resolves once ctl[index] is 0 (polls; the main thread cannot Atomics.wait without stalling the loop). */
async function waitZero(ctl: Int32Array, index: number): Promise<void> {
  for (let i = 0; Atomics.load(ctl, index) !== 0; i++) {
    await new Promise<void>((resolve) => (i < 50 ? setImmediate(resolve) : setTimeout(resolve, 1)));
  }
}
