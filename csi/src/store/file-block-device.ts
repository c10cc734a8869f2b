// SPDX-License-Identifier: Apache-2.0
// BlockDevice over a sparse file: block b at byte b * blockSize, positional I/O, fdatasync for flush.
// Blocks never written are holes and read as zeros. discard punches a hole (fallocate(2) through koffi,
// punch-hole.ts) so that the space of free save-pool slots goes back to the file system; where that is not
// possible it does nothing (a hint: the engine never relies on it) and space comes back when the save pool
// is trimmed with truncate.

import type { BlockDevice } from '../engine/block-device.js';
import { engineError } from '../engine/errors.js';
import type { RandomAccessFile } from './file-io.js';

export class FileBlockDevice implements BlockDevice {
  constructor(
    private readonly file: RandomAccessFile,
    readonly blockSize: number,
  ) {}

  blockCount(): number {
    return Math.ceil(this.io('stat', () => this.file.size()) / this.blockSize);
  }

  async read(block: number, into: Uint8Array): Promise<void> {
    this.whole(into.length);
    const n = this.io('read', () => this.file.read(block * this.blockSize, into));
    if (n < into.length) into.fill(0, n);
  }

  async write(block: number, data: Uint8Array): Promise<void> {
    this.whole(data.length);
    this.io('write', () => this.file.write(block * this.blockSize, data));
  }

  async writePartial(block: number, offset: number, data: Uint8Array): Promise<void> {
    if (offset < 0 || offset + data.length > this.blockSize) {
      throw engineError('ENGINE_BAD_ARGUMENT', 'partial write crosses a block boundary', { block, offset });
    }
    this.io('write', () => this.file.write(block * this.blockSize + offset, data));
  }

  async flush(): Promise<void> {
    try {
      await this.file.sync();
    } catch (err) {
      throw mapError('fsync', this.file.path, err);
    }
  }

  async discard(block: number, count: number): Promise<void> {
    this.file.punchHole?.(block * this.blockSize, count * this.blockSize);
  }

  async resize(blockCount: number): Promise<void> {
    this.io('truncate', () => this.file.truncate(blockCount * this.blockSize));
    await this.flush();
  }

  async close(): Promise<void> {
    this.io('close', () => this.file.close());
  }

  private whole(length: number): void {
    if (length % this.blockSize !== 0) {
      throw engineError('ENGINE_BAD_ARGUMENT', `buffer of ${length} bytes is not a whole number of blocks`);
    }
  }

  private io<T>(op: string, fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      throw mapError(op, this.file.path, err);
    }
  }
}

/** Maps a Node system error to ENGINE_DEVICE_NO_SPACE or ENGINE_DEVICE_IO (the cause is kept). */
export function mapError(op: string, path: string, err: unknown) {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return engineError('ENGINE_DEVICE_NO_SPACE', `${op} ${path}: no space left`, { path, op }, err);
  }
  return engineError(
    'ENGINE_DEVICE_IO',
    `${op} ${path} failed: ${code ?? String(err)}`,
    { path, op, errno: code },
    err,
  );
}
