// SPDX-License-Identifier: Apache-2.0
// A narrow file-system port for the file stores, so tests can inject crashes between a write and its sync
// (crash-file-io.testing.ts). Positional reads and writes are synchronous (pread/pwrite on the calling thread: the
// fastest path in Node and what the data-path workers do too); only sync() goes to the libuv pool.

import * as fs from 'node:fs';
import { promisify } from 'node:util';
import { punchHole } from './punch-hole.js';

const fdatasync = promisify(fs.fdatasync);
const fsyncAsync = promisify(fs.fsync);

export interface RandomAccessFile {
  readonly path: string;
  size(): number;
  /** Reads up to into.length bytes at `position`; returns the count (short at end of file). */
  read(position: number, into: Uint8Array): number;
  write(position: number, data: Uint8Array): void;
  truncate(size: number): void;
  /** Gives [position, position + length) back to the file system (reads as zeros); false when it cannot. */
  punchHole?(position: number, length: number): boolean;
  /** Makes the file's data and size durable. */
  sync(): Promise<void>;
  close(): void;
}

export interface FileIo {
  /** Opens a file read-write; `create` makes it when missing. */
  open(path: string, create: boolean): RandomAccessFile;
  exists(path: string): boolean;
  mkdir(path: string): void;
  rename(from: string, to: string): void;
  /** Removes a file or a directory tree; no error when missing. */
  remove(path: string): void;
  readdir(path: string): string[];
  /** Makes the directory's entries (creates, renames, removes) durable. */
  syncDir(path: string): Promise<void>;
}

export interface NodeFileIoOptions {
  /** When false, sync() and syncDir() return without calling fsync (tests whose durability is simulated). */
  durable?: boolean;
}

class NodeFile implements RandomAccessFile {
  constructor(
    readonly path: string,
    private readonly fd: number,
    private readonly durable: boolean,
  ) {}

  size(): number {
    return fs.fstatSync(this.fd).size;
  }

  read(position: number, into: Uint8Array): number {
    let done = 0;
    while (done < into.length) {
      const n = fs.readSync(this.fd, into, done, into.length - done, position + done);
      if (n === 0) break;
      done += n;
    }
    return done;
  }

  write(position: number, data: Uint8Array): void {
    let done = 0;
    while (done < data.length) done += fs.writeSync(this.fd, data, done, data.length - done, position + done);
  }

  punchHole(position: number, length: number): boolean {
    return punchHole(this.fd, position, length);
  }

  truncate(size: number): void {
    fs.ftruncateSync(this.fd, size);
  }

  async sync(): Promise<void> {
    if (this.durable) await fdatasync(this.fd);
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}

export class NodeFileIo implements FileIo {
  private readonly durable: boolean;

  constructor(options: NodeFileIoOptions = {}) {
    this.durable = options.durable ?? true;
  }

  open(path: string, create: boolean): RandomAccessFile {
    const flags = fs.constants.O_RDWR | (create ? fs.constants.O_CREAT : 0);
    return new NodeFile(path, fs.openSync(path, flags, 0o600), this.durable);
  }

  exists(path: string): boolean {
    return fs.existsSync(path);
  }

  mkdir(path: string): void {
    fs.mkdirSync(path, { recursive: true, mode: 0o700 });
  }

  rename(from: string, to: string): void {
    fs.renameSync(from, to);
  }

  remove(path: string): void {
    fs.rmSync(path, { recursive: true, force: true });
  }

  readdir(path: string): string[] {
    return fs.readdirSync(path);
  }

  async syncDir(path: string): Promise<void> {
    if (!this.durable) return;
    const fd = fs.openSync(path, 'r');
    try {
      await fsyncAsync(fd);
    } finally {
      fs.closeSync(fd);
    }
  }
}
