// SPDX-License-Identifier: Apache-2.0
// The engine's storage ports: BlockDevice (clone volume, save pool) and MetaStore (journal + checkpoints),
// with in-memory adapters for tests. File adapters live in csi/src/store/.

import { engineError } from './errors.js';

/**
 * Block-granular storage. Positions and lengths are in blocks of `blockSize` bytes except for
 * `writePartial`. Durability: a write is durable only once a later `flush()` has resolved; a crash may
 * keep any subset of unflushed writes, and may tear the last one.
 */
export interface BlockDevice {
  readonly blockSize: number;
  /** Current size in blocks (rounded up). */
  blockCount(): number;
  /** Fills `into` (a whole number of blocks) from `block` on; blocks never written, or past the end, read as zeros. */
  read(block: number, into: Uint8Array): Promise<void>;
  /** Writes `data` (a whole number of blocks) at `block`; writing past the end grows the device. */
  write(block: number, data: Uint8Array): Promise<void>;
  /** Writes `data` at byte `offset` inside `block` (offset + length <= blockSize). */
  writePartial(block: number, offset: number, data: Uint8Array): Promise<void>;
  /** Makes every completed write durable. */
  flush(): Promise<void>;
  /** Hint that blocks [block, block + count) hold no data; their content becomes unspecified. */
  discard(block: number, count: number): Promise<void>;
  /** Sets the size in blocks (growing adds zero blocks, shrinking drops the tail); durable on resolve. */
  resize(blockCount: number): Promise<void>;
  close(): Promise<void>;
}

/**
 * Metadata persistence. The engine encodes and validates every byte (layout.ts); the store only
 * places them. `appendJournal` writes at the journal's logical end and is durable on resolve.
 * `writeCheckpoint` atomically replaces the older of two checkpoint slots (slot = gen % 2), is durable on
 * resolve, and then sets the journal's logical end to 0 (old frames may stay in the file: replay rejects
 * them by generation). After `load`, the engine sets the logical end to the valid prefix it decoded.
 */
export interface MetaStore {
  load(): Promise<{ checkpoints: Uint8Array[]; journal: Uint8Array }>;
  appendJournal(frame: Uint8Array): Promise<void>;
  writeCheckpoint(bytes: Uint8Array, gen: number): Promise<void>;
  /** Bytes of valid frames in the journal (its logical end). */
  journalBytes(): number;
  /** Sets the logical end (appends continue there). */
  setJournalEnd(bytes: number): void;
  close(): Promise<void>;
}

/** Sparse in-memory block device (tests, benchmarks of pure logic). Survives close(): reopen it. */
export class MemBlockDevice implements BlockDevice {
  private blocks = new Map<number, Uint8Array>();
  private count: number;
  readonly blockSize: number;

  constructor(blockSize: number, blockCount = 0) {
    this.blockSize = blockSize;
    this.count = blockCount;
  }

  blockCount(): number {
    return this.count;
  }

  async read(block: number, into: Uint8Array): Promise<void> {
    const bs = this.blockSize;
    const n = checkWhole(into.length, bs);
    for (let i = 0; i < n; i++) {
      const src = this.blocks.get(block + i);
      if (src === undefined) into.fill(0, i * bs, (i + 1) * bs);
      else into.set(src, i * bs);
    }
  }

  async write(block: number, data: Uint8Array): Promise<void> {
    const bs = this.blockSize;
    const n = checkWhole(data.length, bs);
    for (let i = 0; i < n; i++) this.blocks.set(block + i, data.slice(i * bs, (i + 1) * bs));
    this.count = Math.max(this.count, block + n);
  }

  async writePartial(block: number, offset: number, data: Uint8Array): Promise<void> {
    if (offset < 0 || offset + data.length > this.blockSize) {
      throw engineError('ENGINE_BAD_ARGUMENT', 'partial write crosses a block boundary', { block, offset });
    }
    let dst = this.blocks.get(block);
    if (dst === undefined) {
      dst = new Uint8Array(this.blockSize);
      this.blocks.set(block, dst);
    }
    dst.set(data, offset);
    this.count = Math.max(this.count, block + 1);
  }

  async flush(): Promise<void> {}

  async discard(block: number, count: number): Promise<void> {
    for (let i = 0; i < count; i++) this.blocks.delete(block + i);
  }

  async resize(blockCount: number): Promise<void> {
    if (blockCount < this.count) for (const b of [...this.blocks.keys()]) if (b >= blockCount) this.blocks.delete(b);
    this.count = blockCount;
  }

  async close(): Promise<void> {}

  /** Number of materialised blocks (tests check sparseness). */
  storedBlocks(): number {
    return this.blocks.size;
  }
}

/** In-memory MetaStore with the same slot and journal semantics as the file store. */
export class MemMetaStore implements MetaStore {
  private slots: (Uint8Array | undefined)[] = [undefined, undefined];
  private journal: Uint8Array[] = [];
  private journalLength = 0;

  async load(): Promise<{ checkpoints: Uint8Array[]; journal: Uint8Array }> {
    const journal = new Uint8Array(this.journalLength);
    let pos = 0;
    for (const frame of this.journal) {
      journal.set(frame, pos);
      pos += frame.length;
    }
    return { checkpoints: this.slots.filter((s): s is Uint8Array => s !== undefined), journal };
  }

  async appendJournal(frame: Uint8Array): Promise<void> {
    this.journal.push(frame.slice());
    this.journalLength += frame.length;
  }

  async writeCheckpoint(bytes: Uint8Array, gen: number): Promise<void> {
    this.slots[gen % 2] = bytes.slice();
    this.journal = [];
    this.journalLength = 0;
  }

  journalBytes(): number {
    return this.journalLength;
  }

  setJournalEnd(bytes: number): void {
    let pos = 0;
    const kept: Uint8Array[] = [];
    for (const f of this.journal) {
      if (pos + f.length > bytes) break;
      kept.push(f);
      pos += f.length;
    }
    this.journal = kept;
    this.journalLength = pos;
  }

  async close(): Promise<void> {}
}

function checkWhole(length: number, blockSize: number): number {
  if (length % blockSize !== 0) {
    throw engineError('ENGINE_BAD_ARGUMENT', `buffer of ${length} bytes is not a whole number of blocks`, {
      length,
      blockSize,
    });
  }
  return length / blockSize;
}
