// SPDX-License-Identifier: Apache-2.0
// MetaStore over the files of meta/ (format in engine/layout.ts):
//   checkpoint-0, checkpoint-1  generation g goes to checkpoint-(g % 2): pwrite, truncate, fdatasync. A torn
//                               write fails its CRC and the other slot (one generation older) wins, whose
//                               journal frames are still in place because the journal is emptied only
//                               after the new checkpoint is durable.
//   journal                     frames written at the logical end, each fdatasync'ed before append resolves.
//                               The file is preallocated with zeros at creation and reused after every
//                               checkpoint (no truncate), so a sync flushes data without a size change;
//                               stale frames past the logical end carry an older generation.
// All three files exist from volume creation on, so no directory entry changes while a volume is in use.

import type { MetaStore } from '../engine/block-device.js';
import { mapError } from './file-block-device.js';
import type { FileIo, RandomAccessFile } from './file-io.js';

export const META_FILES = ['checkpoint-0', 'checkpoint-1', 'journal'] as const;

export class FileMetaStore implements MetaStore {
  private journalEnd = 0;

  private constructor(
    private readonly slots: [RandomAccessFile, RandomAccessFile],
    private readonly journal: RandomAccessFile,
  ) {}

  /** Opens (creating when `create`) the metadata files in `dir`. */
  static open(io: FileIo, dir: string, create: boolean): FileMetaStore {
    const opened: RandomAccessFile[] = [];
    try {
      for (const name of META_FILES) opened.push(io.open(`${dir}/${name}`, create));
    } catch (err) {
      for (const f of opened) f.close();
      throw mapError('open', dir, err);
    }
    return new FileMetaStore([opened[0]!, opened[1]!], opened[2]!);
  }

  /** Writes `bytes` of zeros into a new journal file so that later syncs need no size change. */
  async preallocateJournal(bytes: number): Promise<void> {
    const zeros = new Uint8Array(Math.min(bytes, 1 << 20));
    try {
      for (let pos = 0; pos < bytes; pos += zeros.length) {
        this.journal.write(pos, zeros.subarray(0, Math.min(zeros.length, bytes - pos)));
      }
      await this.journal.sync();
    } catch (err) {
      throw mapError('preallocate', this.journal.path, err);
    }
  }

  async load(): Promise<{ checkpoints: Uint8Array[]; journal: Uint8Array }> {
    const checkpoints = this.slots.map((f) => readAll(f)).filter((b) => b.length > 0);
    const journal = readAll(this.journal);
    return { checkpoints, journal };
  }

  setJournalEnd(bytes: number): void {
    this.journalEnd = bytes;
  }

  async appendJournal(frame: Uint8Array): Promise<void> {
    try {
      this.journal.write(this.journalEnd, frame);
      await this.journal.sync();
    } catch (err) {
      throw mapError('append', this.journal.path, err);
    }
    this.journalEnd += frame.length;
  }

  async writeCheckpoint(bytes: Uint8Array, gen: number): Promise<void> {
    const slot = this.slots[gen % 2]!;
    try {
      slot.write(0, bytes);
      slot.truncate(bytes.length);
      await slot.sync();
    } catch (err) {
      throw mapError('checkpoint', slot.path, err);
    }
    this.journalEnd = 0;
  }

  journalBytes(): number {
    return this.journalEnd;
  }

  async close(): Promise<void> {
    for (const f of [...this.slots, this.journal]) f.close();
  }
}

function readAll(f: RandomAccessFile): Uint8Array {
  const buf = new Uint8Array(f.size());
  const n = f.read(0, buf);
  return n === buf.length ? buf : buf.subarray(0, n);
}
