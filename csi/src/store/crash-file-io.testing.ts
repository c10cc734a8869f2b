// SPDX-License-Identifier: Apache-2.0
// Fault-injecting FileIo for crash tests: a power cut simulated over real files.
//
// Every write and truncate stays in memory ("the page cache") until sync() of that file applies it to the
// real file ("the disk"), a few event-loop turns later; reads see the pending state. The controller counts write and sync calls; at the
// chosen one the crash fires: that call and every later one throw SimulatedCrash. `settle(mode)` then
// decides what reached the disk and leaves the real files in that state:
//   drop    nothing unsynced survives;
//   tear    nothing unsynced survives except the first half (cut at a 512-byte sector boundary of the
//           file) of the write the crash interrupted;
//   subset  every 512-byte sector independently reaches the disk in the state after some prefix of the
//           unsynced writes to it (the interrupted one included), as arbitrary page-cache writeback and
//           sector-atomic disks allow.
// The test then reopens the volume with the real NodeFileIo. Directory operations pass straight through:
// volumes are created and closed outside the crash window.

import { NodeFileIo, type FileIo, type RandomAccessFile } from './file-io.js';

export class SimulatedCrash extends Error {
  constructor() {
    super('simulated crash');
    this.name = 'SimulatedCrash';
  }
}

export type CrashMode = 'drop' | 'tear' | 'subset';

const SECTOR = 512;

type PendingOp = { kind: 'write'; position: number; data: Uint8Array } | { kind: 'truncate'; size: number };

class CrashFile implements RandomAccessFile {
  pending: PendingOp[] = [];
  private closed = false;

  constructor(
    private readonly real: RandomAccessFile,
    private readonly ctl: CrashController,
  ) {}

  get path(): string {
    return this.real.path;
  }

  size(): number {
    this.ctl.alive();
    let size = this.real.size();
    for (const op of this.pending)
      size = op.kind === 'truncate' ? op.size : Math.max(size, op.position + op.data.length);
    return size;
  }

  read(position: number, into: Uint8Array): number {
    this.ctl.alive();
    return this.peek(position, into);
  }

  /** Reads the page-cache view (disk overlaid with unsynced ops), also after the crash. */
  peek(position: number, into: Uint8Array): number {
    into.fill(0);
    const realSize = this.real.size();
    this.real.read(position, into);
    let size = realSize;
    for (const op of this.pending) {
      if (op.kind === 'truncate') {
        size = op.size;
        if (size < position + into.length) into.fill(0, Math.max(0, size - position));
        continue;
      }
      size = Math.max(size, op.position + op.data.length);
      const from = Math.max(position, op.position);
      const to = Math.min(position + into.length, op.position + op.data.length);
      if (to > from) into.set(op.data.subarray(from - op.position, to - op.position), from - position);
    }
    return Math.max(0, Math.min(into.length, size - position));
  }

  write(position: number, data: Uint8Array): void {
    this.ctl.tick({ file: this, position, data });
    this.pending.push({ kind: 'write', position, data: data.slice() });
  }

  truncate(size: number): void {
    this.ctl.tick(null);
    this.pending.push({ kind: 'truncate', size });
  }

  /**
   * Like fdatasync in the libuv pool: completes after a random number of event-loop turns, so syncs issued
   * in parallel finish in any order and a crash may land between them. Covers the ops issued before the call.
   */
  async sync(): Promise<void> {
    this.ctl.tick(null);
    const covered = this.pending.length;
    for (let i = this.ctl.syncDelay(); i > 0; i--) await new Promise((r) => setImmediate(r));
    this.ctl.alive();
    for (const op of this.pending.splice(0, covered)) this.apply(op);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.real.close();
  }

  /**
   * Page-cache writeback at a crash: each 512-byte sector independently reaches the disk in the state after
   * some prefix of the unsynced operations that touched it (possibly none, possibly all). A pending
   * truncate survives with probability 1/2.
   */
  writeBackSectors(ops: readonly PendingOp[], random: () => number): void {
    const sectors = new Map<number, PendingOp[]>();
    for (const op of ops) {
      if (op.kind !== 'write') continue;
      for (let sct = Math.floor(op.position / SECTOR); sct * SECTOR < op.position + op.data.length; sct++) {
        const list = sectors.get(sct) ?? [];
        list.push(op);
        sectors.set(sct, list);
      }
    }
    for (const [sct, list] of sectors) {
      const k = Math.floor(random() * (list.length + 1));
      if (k === 0) continue;
      const buf = new Uint8Array(SECTOR);
      const n = this.real.read(sct * SECTOR, buf);
      let len = n;
      for (const op of list.slice(0, k)) {
        if (op.kind !== 'write') continue;
        const from = Math.max(sct * SECTOR, op.position);
        const to = Math.min((sct + 1) * SECTOR, op.position + op.data.length);
        buf.set(op.data.subarray(from - op.position, to - op.position), from - sct * SECTOR);
        len = Math.max(len, to - sct * SECTOR);
      }
      this.real.write(sct * SECTOR, buf.subarray(0, len));
    }
    for (const op of ops) if (op.kind === 'truncate' && random() < 0.5) this.real.truncate(op.size);
  }

  writeRaw(position: number, data: Uint8Array): void {
    this.real.write(position, data);
  }

  apply(op: PendingOp, keepBytes?: number): void {
    if (op.kind === 'truncate') this.real.truncate(op.size);
    else this.real.write(op.position, keepBytes === undefined ? op.data : op.data.subarray(0, keepBytes));
  }
}

export class CrashController {
  private ops = 0;
  private crashed = false;
  private interrupted: { file: CrashFile; position: number; data: Uint8Array } | null = null;
  private readonly files: CrashFile[] = [];

  /**
   * @param crashAt the write/truncate/sync call (1-based) at which the crash fires; Infinity = never.
   * @param random  source of randomness for `subset` (a seeded generator in tests).
   */
  constructor(
    readonly crashAt: number,
    private readonly random: () => number,
  ) {}

  get hasCrashed(): boolean {
    return this.crashed;
  }

  get operations(): number {
    return this.ops;
  }

  alive(): void {
    if (this.crashed) throw new SimulatedCrash();
  }

  tick(write: { file: CrashFile; position: number; data: Uint8Array } | null): void {
    this.alive();
    if (++this.ops >= this.crashAt) {
      this.crashed = true;
      this.interrupted = write === null ? null : { ...write, data: write.data.slice() };
      throw new SimulatedCrash();
    }
  }

  /** Event-loop turns a sync takes (0-2). */
  syncDelay(): number {
    return Math.floor(this.random() * 3);
  }

  /** Cuts the power now (after the last completed call). */
  crashNow(): void {
    this.crashed = true;
    this.interrupted = null;
  }

  /** Closes the real files of the crashed run (after `settle`). */
  closeFiles(): void {
    for (const f of this.files) f.close();
  }

  register(file: CrashFile): void {
    this.files.push(file);
  }

  /** Decides what survived the crash and writes exactly that to the real files. */
  settle(mode: CrashMode): void {
    const cut = this.interrupted;
    // A torn write reaches the disk as whole sectors of the page cache: where it starts or ends inside a
    // sector, the rest of that sector holds the cached bytes (earlier unsynced writes included), not the
    // bytes on disk. Capture those sectors before the unsynced state is dropped.
    const torn = new Map<CrashFile, [number, Uint8Array][]>();
    if (cut !== null && mode === 'tear') {
      const keep = sectorSplit(cut.position, cut.data.length, 0.5);
      const first = Math.floor(cut.position / SECTOR);
      const last = Math.floor((cut.position + keep - 1) / SECTOR);
      const sectors: [number, Uint8Array][] = [];
      for (let sct = first; keep > 0 && sct <= last; sct++) {
        const buf = new Uint8Array(SECTOR);
        const n = cut.file.peek(sct * SECTOR, buf);
        const from = Math.max(sct * SECTOR, cut.position);
        const to = Math.min((sct + 1) * SECTOR, cut.position + keep);
        buf.set(cut.data.subarray(from - cut.position, to - cut.position), from - sct * SECTOR);
        sectors.push([sct * SECTOR, buf.subarray(0, Math.max(n, to - sct * SECTOR))]);
      }
      torn.set(cut.file, sectors);
    }
    for (const f of this.files) {
      if (mode === 'subset') {
        const ops = cut !== null && cut.file === f ? [...f.pending, { kind: 'write' as const, ...cut }] : f.pending;
        f.writeBackSectors(ops, this.random);
      }
      f.pending = [];
    }
    if (cut !== null && mode === 'tear') {
      const keep = sectorSplit(cut.position, cut.data.length, 0.5);
      cut.file.apply({ kind: 'write', position: cut.position, data: cut.data }, keep);
    }
    for (const [file, sectors] of torn) for (const [pos, bytes] of sectors) file.writeRaw(pos, bytes);
  }
}

/**
 * Bytes of a write of `length` at `position` that reach the disk when it tears at fraction `f`: disks write
 * 512-byte sectors atomically, so the cut falls on an absolute sector boundary.
 */
function sectorSplit(position: number, length: number, f: number): number {
  const split = Math.floor((position + length * f) / 512) * 512;
  return Math.min(length, Math.max(0, split - position));
}

/** FileIo whose files route writes through a CrashController. */
export class CrashFileIo implements FileIo {
  private readonly real: NodeFileIo;

  constructor(private readonly ctl: CrashController) {
    this.real = new NodeFileIo({ durable: false });
  }

  open(path: string, create: boolean): RandomAccessFile {
    this.ctl.alive();
    const f = new CrashFile(this.real.open(path, create), this.ctl);
    this.ctl.register(f);
    return f;
  }

  exists(path: string): boolean {
    return this.real.exists(path);
  }

  mkdir(path: string): void {
    this.real.mkdir(path);
  }

  rename(from: string, to: string): void {
    this.real.rename(from, to);
  }

  remove(path: string): void {
    this.real.remove(path);
  }

  readdir(path: string): string[] {
    return this.real.readdir(path);
  }

  async syncDir(_path: string): Promise<void> {
    this.ctl.alive();
  }
}
