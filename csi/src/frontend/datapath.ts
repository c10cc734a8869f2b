// SPDX-License-Identifier: Apache-2.0
// The node plugin's data path for one state dir: the FUSE mount at <stateDir>/fuse, the views exposed on it,
// loop devices on those views, and consistent cuts. This is the API the CSI node service calls.
//
//   start(stateDir)           clean up what a dead predecessor left (cleanupStale), mount FUSE, start workers;
//                             or, given the predecessor's /dev/fuse descriptor (the keeper process holds one,
//                             csi/src/keeper/), adopt its connection: views are exposed again under their
//                             node ids (adoptedViews), then resume() starts the workers and has the kernel
//                             resend what the predecessor had read but not answered
//   release()                 stop serving for a successor (connection, mount and loop devices untouched)
//   exposeLive / exposeSnapshot / exposeRw / exposeFile   -> <stateDir>/fuse/<name>
//   attach(name)              loop device (direct I/O, discard) on a view
//   grow(name, sizeBytes)     online growth: workers, the kernel's FUSE inode, the loop devices' capacity
//   cut(mountpoint?, fn)      fsfreeze -f, fn() (the engine's snapshot creation, which quiesces the fast
//                             path itself), fsfreeze -u -- thaw guaranteed
//   detach / unexpose / stop
//
// Views of one volume share a RangeLock (see range-lock.ts): snapshot and RW reads take it shared, production
// writes and discards through the slow path exclusive, so a snapshot read that resolved a block to the clone
// completes before that block is copied out and overwritten.
import { mkdir, readFile, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { Registry } from 'prom-client';
import type { Logger } from '../../../common/src/log.js';
import { type CleanupReport, cleanupStale } from '../mount/cleanup.js';
import { MountError } from '../mount/errors.js';
import { withFrozenFs } from '../mount/freeze.js';
import { run } from '../mount/exec.js';
import { attachLoop, detachLoop, type LoopDevice, loopForFile, loopsForFile } from '../mount/loop-device.js';
import { readMountInfo } from '../mount/mountinfo.js';
import { closeFuseDevice, FUSE_FSTYPE } from './fuse-mount.js';
import { readSessionRecord, sessionRecordPath } from './session-record.js';
import { FuseServer } from './fuse-server.js';
import { RangeLock } from './range-lock.js';
import type { EngineFastPath } from './view-protocol.js';

/** How long a detach waits for the kernel to release the view file (RELEASE) before unexposing fails. */
const DETACH_RELEASE_TIMEOUT_MS = 30_000;
/** Attribute invalidations a growth sends before it gives up on the kernel reporting the new size. */
const GROW_ATTR_ATTEMPTS = 5;

/** The engine's production volume, as the data path uses it (implemented by engine-ports.ts). */
export interface LiveVolumePort {
  readonly sizeBytes: number;
  readonly blockSize: number;
  /** The clone file; workers pread/pwrite it for the fast path. */
  readonly clonePath: string;
  /** Shared arrays of the fast-path protocol (engine/shared-state.ts), current generation. */
  fastPath(): EngineFastPath;
  read(offset: number, into: Uint8Array): Promise<void>;
  write(offset: number, data: Uint8Array): Promise<void>;
  /** Afterwards [offset, offset + length) reads as zeros. */
  discard(offset: number, length: number): Promise<void>;
  /** Durability barrier: every acknowledged write (fast path included) and its metadata. */
  flush(): Promise<void>;
}

/** A read-only snapshot of a volume. */
export interface SnapshotViewPort {
  readonly sizeBytes: number;
  readonly blockSize: number;
  read(offset: number, into: Uint8Array): Promise<void>;
}

/** A read-write snapshot (RW clone) of a volume. */
export interface RwViewPort extends SnapshotViewPort {
  write(offset: number, data: Uint8Array): Promise<void>;
  discard(offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
}

export interface DatapathOptions {
  readonly stateDir: string;
  readonly log: Logger;
  /** Data-path worker threads (default 4). */
  readonly workers?: number;
  /** Registry for the data-path metrics; none registered when absent. */
  readonly registry?: Registry;
  /** O_DIRECT for aligned fast-path reads and writes of the backing files (default false, see ADR 0003). */
  readonly directIo?: boolean;
  /**
   * A descriptor of the /dev/fuse file a predecessor served (inherited from the keeper): its connection is
   * adopted when the session record matches, else the descriptor is closed and a fresh mount made.
   */
  readonly inheritedFuseFd?: number;
}

export class Datapath {
  private readonly locks = new Map<string, RangeLock>();

  private constructor(
    readonly stateDir: string,
    private readonly server: FuseServer,
    private readonly log: Logger,
    /** What start-up cleanup removed. */
    readonly cleanup: CleanupReport,
    /** Views of the adopted connection still to be exposed again, by name (empty for a fresh mount). */
    private readonly toReexpose: readonly string[],
  ) {}

  /** True when this data path took over a predecessor's live connection (nothing was cleaned up). */
  get adopted(): boolean {
    return this.adoptedConnection;
  }

  private adoptedConnection = false;

  /** Views the predecessor served (adopted connection): expose each again, then resume(). */
  adoptedViews(): string[] {
    return [...this.toReexpose];
  }

  static fuseMountpointOf(stateDir: string): string {
    return join(stateDir, 'fuse');
  }

  /** Cleans up stale state of an earlier run under `stateDir` (and only there), then mounts and serves. */
  static async start(opts: DatapathOptions): Promise<Datapath> {
    const mountpoint = Datapath.fuseMountpointOf(opts.stateDir);
    const log = opts.log.child({ component: 'datapath' });
    await mkdir(opts.stateDir, { recursive: true });
    const recordPath = sessionRecordPath(opts.stateDir);
    const serverOpts = {
      mountpoint,
      log,
      source: 'loopsnap',
      recordPath,
      ...(opts.workers === undefined ? {} : { workers: opts.workers }),
      ...(opts.registry === undefined ? {} : { registry: opts.registry }),
      ...(opts.directIo === undefined ? {} : { directIo: opts.directIo }),
    };
    if (opts.inheritedFuseFd !== undefined) {
      const { record, problem } = readSessionRecord(recordPath);
      try {
        if (!record) throw new MountError('DP_ERR_ADOPT', problem ?? 'no session record');
        const server = await FuseServer.adopt(serverOpts, opts.inheritedFuseFd, record);
        const dp = new Datapath(opts.stateDir, server, log, NOTHING_CLEANED, Object.keys(record.views));
        dp.adoptedConnection = true;
        return dp;
      } catch (err) {
        log.warn({ err }, 'Cannot adopt the FUSE connection of the predecessor; cleaning up and mounting afresh');
        closeFuseDevice(opts.inheritedFuseFd);
      }
    }
    const cleanup = await cleanupStale({ fuseMountpoint: mountpoint, fuseFsType: FUSE_FSTYPE, log });
    const server = await FuseServer.start(serverOpts);
    return new Datapath(opts.stateDir, server, log, cleanup, []);
  }

  /**
   * Starts serving an adopted connection (after the views were exposed again) and sets each view's open
   * count from the loop devices attached to it. A no-op for a fresh mount.
   */
  async resume(): Promise<void> {
    this.server.resume();
    for (const name of this.server.viewNames()) {
      this.server.setOpenCount(name, (await this.loopsOf(name)).length);
    }
  }

  /** Loop devices attached to view `name`. */
  loopsOf(name: string): Promise<LoopDevice[]> {
    return loopsForFile(this.pathOf(name), this.mountDevice);
  }

  /** Stops serving without ending the connection (FuseServer.release); the process exits afterwards. */
  release(): Promise<void> {
    return this.server.release();
  }

  /** The /dev/fuse descriptor of the connection. */
  get fuseDevice(): number {
    return this.server.device;
  }

  /** "0:<minor>" of the FUSE mount, for finding loop devices whose mount namespace is gone. */
  get mountDevice(): string | undefined {
    const id = this.connectionId;
    return id >= 0 ? `0:${id}` : undefined;
  }

  /** The connection id of the mount (`/sys/fs/fuse/connections/<id>`). */
  get connectionId(): number {
    return this.server.connection;
  }

  /** Why the FUSE mount cannot serve I/O (no mount of its connection in this mount namespace), or undefined. */
  async mountProblem(): Promise<string | undefined> {
    const id = this.connectionId;
    if (id < 0) return 'the FUSE connection is not set up';
    const mounted = (await readMountInfo()).some(
      (m) => m.major === 0 && m.minor === id && m.fsType.startsWith(FUSE_FSTYPE),
    );
    return mounted ? undefined : `the FUSE mount of connection ${id} (${this.fuseMountpoint}) is gone`;
  }

  get fuseMountpoint(): string {
    return this.server.mountpoint;
  }

  pathOf(name: string): string {
    return this.server.pathOf(name);
  }

  views(): string[] {
    return this.server.viewNames();
  }

  private lockOf(volumeId: string): RangeLock {
    let l = this.locks.get(volumeId);
    if (!l) {
      l = new RangeLock();
      this.locks.set(volumeId, l);
    }
    return l;
  }

  /** Exposes a plain file as a view with no engine in the path (baseline, tests). */
  exposeFile(name: string, path: string, opts: { readOnly?: boolean } = {}): string {
    return this.server.addView({ kind: 'file', name, path, readOnly: opts.readOnly === true });
  }

  /** Exposes the production volume `volumeId` (read-write) as view `name`. */
  exposeLive(name: string, volumeId: string, port: LiveVolumePort): string {
    const lock = this.lockOf(volumeId);
    const bs = port.blockSize;
    const span = (offset: number, length: number): [number, number] => [
      Math.floor(offset / bs),
      Math.floor((offset + Math.max(1, length) - 1) / bs),
    ];
    return this.server.addView({
      kind: 'live',
      name,
      path: port.clonePath,
      sizeBytes: port.sizeBytes,
      blockSizeBytes: bs,
      fastPath: () => port.fastPath(),
      handler: {
        read: (offset, into) => lock.with(...span(offset, into.length), 'shared', () => port.read(offset, into)),
        write: (offset, src) => lock.with(...span(offset, src.length), 'exclusive', () => port.write(offset, src)),
        discard: (offset, length) =>
          lock.with(...span(offset, length), 'exclusive', () => port.discard(offset, length)),
        flush: () => port.flush(),
      },
    });
  }

  /** Exposes a read-only snapshot view (writes get EROFS). */
  exposeSnapshot(name: string, volumeId: string, port: SnapshotViewPort): string {
    const lock = this.lockOf(volumeId);
    const bs = port.blockSize;
    return this.server.addView({
      kind: 'remote',
      name,
      sizeBytes: port.sizeBytes,
      blockSizeBytes: bs,
      readOnly: true,
      handler: {
        read: async (offset, dst) => {
          await lock.with(Math.floor(offset / bs), Math.floor((offset + dst.length - 1) / bs), 'shared', () =>
            port.read(offset, dst),
          );
          return dst.length;
        },
        write: () => Promise.reject(new MountError('DP_ERR_READ_ONLY', `view ${name} is read-only`)),
        discard: () => Promise.reject(new MountError('DP_ERR_READ_ONLY', `view ${name} is read-only`)),
        flush: async () => undefined,
      },
    });
  }

  /** Exposes a read-write snapshot view. */
  exposeRw(name: string, volumeId: string, port: RwViewPort): string {
    const lock = this.lockOf(volumeId);
    const bs = port.blockSize;
    const first = (offset: number): number => Math.floor(offset / bs);
    const last = (offset: number, length: number): number => Math.floor((offset + Math.max(1, length) - 1) / bs);
    return this.server.addView({
      kind: 'remote',
      name,
      sizeBytes: port.sizeBytes,
      blockSizeBytes: bs,
      readOnly: false,
      handler: {
        read: async (offset, dst) => {
          await lock.with(first(offset), last(offset, dst.length), 'shared', () => port.read(offset, dst));
          return dst.length;
        },
        write: (offset, src) =>
          lock.with(first(offset), last(offset, src.length), 'shared', () => port.write(offset, src)),
        discard: (offset, length) =>
          lock.with(first(offset), last(offset, length), 'shared', () => port.discard(offset, length)),
        flush: () => port.flush(),
      },
    });
  }

  /** Stops exposing a view; refuses while a loop device holds it unless `force`. Unknown names are fine. */
  async unexpose(name: string, opts: { force?: boolean } = {}): Promise<void> {
    await this.server.removeView(name, opts);
  }

  /** Attaches a loop device to view `name` (idempotent: returns the existing one). */
  async attach(name: string, opts: { readOnly?: boolean } = {}): Promise<LoopDevice> {
    const path = this.server.pathOf(name);
    if (!this.server.viewNames().includes(name)) {
      throw new MountError('DP_ERR_VIEW_NOT_FOUND', `view ${name} is not exposed`);
    }
    const existing = await loopForFile(path, this.mountDevice);
    if (existing) return existing;
    const loop = await attachLoop({ file: path, readOnly: opts.readOnly === true, directIo: true });
    if (!loop.directIo) this.log.warn({ device: loop.device, view: name }, 'Attached loop device without direct I/O');
    this.log.info({ device: loop.device, view: name, discard: loop.discard }, 'Attached loop device');
    return loop;
  }

  /** Detaches the loop device of view `name`, or the given device. Not attached is not an error. */
  async detach(nameOrDevice: string): Promise<void> {
    const devices = nameOrDevice.startsWith('/dev/')
      ? [nameOrDevice]
      : (await loopsForFile(this.server.pathOf(nameOrDevice), this.mountDevice)).map((l) => l.device);
    if (devices.length === 0) return;
    for (const d of devices) await detachLoop(d);
    // The kernel releases the view file asynchronously after LOOP_CLR_FD (a workqueue, and later still while
    // another opener holds the loop device): wait for the RELEASE, long enough for a loaded machine.
    const name = nameOrDevice.startsWith('/dev/') ? undefined : nameOrDevice;
    if (name === undefined) return;
    const start = Date.now();
    let warned = false;
    while (this.server.openCount(name) > 0 && Date.now() - start < DETACH_RELEASE_TIMEOUT_MS) {
      if (!warned && Date.now() - start > 2000) {
        warned = true;
        this.log.warn(
          { view: name, devices },
          'The kernel has not released the view 2 s after the loop detach; waiting',
        );
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /**
   * Online growth of view `name` to `sizeBytes`, after the engine behind it grew: the workers serve the new
   * size, the kernel's inode of the view file reports it (attribute cache dropped, then a GETATTR through the
   * mount), and every loop device on the view gets it as its capacity (LOOP_SET_CAPACITY). I/O keeps flowing
   * throughout: the old range stays valid, the new range becomes addressable last. Idempotent.
   */
  async grow(name: string, sizeBytes: number): Promise<{ devices: { device: string; sizeBytes: number }[] }> {
    const path = this.server.pathOf(name);
    const nodeId = this.server.growView(name, sizeBytes);
    let seen = (await stat(path)).size;
    for (let i = 1; seen !== sizeBytes && i < GROW_ATTR_ATTEMPTS; i++) {
      this.server.invalidateAttributes(nodeId);
      seen = (await stat(path)).size;
    }
    if (seen !== sizeBytes) {
      throw new Error(`the kernel reports ${seen} bytes for ${path} after growing it to ${sizeBytes} bytes`);
    }
    const devices: { device: string; sizeBytes: number }[] = [];
    for (const loop of await loopsForFile(path, this.mountDevice)) {
      await run('losetup', ['--set-capacity', loop.device]);
      const bytes = await blockDeviceBytes(loop.device);
      if (bytes !== sizeBytes) {
        throw new Error(`loop device ${loop.device} has ${bytes} bytes after LOOP_SET_CAPACITY, not ${sizeBytes}`);
      }
      devices.push({ device: loop.device, sizeBytes: bytes });
    }
    this.log.info({ view: name, sizeBytes, devices: devices.map((d) => d.device) }, 'Grew view and its loop devices');
    return { devices };
  }

  /**
   * A consistent cut: with `mountpoint` (a file system on a view of this volume is mounted there) it is
   * frozen around `fn` and always thawed. `fn` creates the snapshot in the engine, which closes the fast
   * path's gate and drains direct writes itself.
   */
  async cut<T>(fn: () => Promise<T>, opts: { mountpoint?: string } = {}): Promise<T> {
    if (opts.mountpoint) return withFrozenFs(opts.mountpoint, fn, { log: this.log });
    return fn();
  }

  /** True while handed-off requests (foreground I/O through the engine) wait for an answer. */
  foregroundBusy(): boolean {
    return this.server.handoffsInFlight() > 0;
  }

  /** Unmounts FUSE and stops the workers; refuses while views are open unless `force`. */
  async stop(opts: { force?: boolean } = {}): Promise<void> {
    await this.server.stop(opts);
    this.locks.clear();
  }

  /** The underlying server (tests, benchmarks). */
  get fuse(): FuseServer {
    return this.server;
  }
}

/** Size of a block device from sysfs (/sys/class/block/<name>/size counts 512-byte sectors). */
const NOTHING_CLEANED: CleanupReport = { loopsDetached: [], mountsRemoved: [], fuseUnmounted: false, errors: [] };

export async function blockDeviceBytes(device: string): Promise<number> {
  const sectors = (await readFile(`/sys/class/block/${basename(device)}/size`, 'utf8')).trim();
  return Number(sectors) * 512;
}
