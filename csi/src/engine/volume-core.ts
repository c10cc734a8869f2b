// SPDX-License-Identifier: Apache-2.0
// In-memory state of one open volume, shared by the read path, the write path, recovery and the facade
// (volume.ts). Nothing here takes the gate; callers do.

import type { BlockDevice, MetaStore } from './block-device.js';
import { type WordAllocator } from './bits.js';
import { Committer } from './committer.js';
import { MetaFreezer, ProductionMeta } from './meta-bitmap.js';
import { ReadEpochs } from './read-epochs.js';
import type { RestoreState } from './restore-state.js';
import type { RwEntry } from './rw-snapshot.js';
import { SavePool } from './save-pool.js';
import { CONTROL_WORDS, CTL_FLAGS, CTL_GENERATION, FLAG_READS_VIA_ENGINE } from './shared-state.js';
import { SnapshotQueue } from './snapshot-queue.js';

export interface VolumeGeometry {
  blockSize: number;
  blockCount: number;
  granuleShift: number;
  createdAt: number;
}

export interface VolumeCounters {
  /** Before-images copied into the save pool (OP-2/OP-3 saves). */
  cowCopies: number;
  /** Snapshots invalidated by save-pool exhaustion (EC-5). */
  invalidations: number;
  /** Unpinned snapshots sacrificed to make room (space-policy.ts). */
  sacrificed: number;
  /** Production writes refused with ENOSPC because only pinned snapshots needed the space. */
  writesRefused: number;
  /** The last before-image found no space (a write was refused); cleared by the next save that succeeds. */
  outOfSpace: boolean;
  checkpoints: number;
  /** Blocks placed by the in-place restore (background copier and restore-before-write). */
  restoredBlocks: number;
}

export class VolumeCore {
  blockCount: number;
  readonly blockSize: number;
  readonly granuleShift: number;
  readonly createdAt: number;
  readonly queue = new SnapshotQueue();
  readonly freezer: MetaFreezer;
  readonly busy = new Map<number, Promise<void>>();
  readonly control: Int32Array;
  readonly counters: VolumeCounters = {
    cowCopies: 0,
    invalidations: 0,
    sacrificed: 0,
    writesRefused: 0,
    outOfSpace: false,
    checkpoints: 0,
    restoredBlocks: 0,
  };
  /** RW snapshots by id (spec §3.11). */
  readonly rws = new Map<number, RwEntry>();
  /** Small persisted key/value pairs (e.g. the cursor of a copy job filling this volume). */
  readonly attributes = new Map<string, string>();
  /** Snapshot and RW reads (and production reads during a restore) in flight; see read-epochs.ts. */
  readonly epochs = new ReadEpochs();
  meta: ProductionMeta;
  settled: Uint32Array;
  pool: SavePool;
  nextSnapId = 1;
  nextRwId = 1;
  /** The restore record (spec §3.12) while an in-place restore runs. */
  restore: RestoreState | null = null;
  committer!: Committer;
  failure: unknown = null;

  constructor(
    geometry: VolumeGeometry,
    readonly clone: BlockDevice,
    readonly save: BlockDevice,
    readonly metaStore: MetaStore,
    readonly alloc: WordAllocator,
    quotaSlots: number | null,
  ) {
    this.blockSize = geometry.blockSize;
    this.blockCount = geometry.blockCount;
    this.granuleShift = geometry.granuleShift;
    this.createdAt = geometry.createdAt;
    this.freezer = new MetaFreezer(alloc);
    this.meta = ProductionMeta.create(geometry.granuleShift, this.granulesFor(geometry.blockCount), alloc);
    this.settled = alloc.words(Math.ceil(geometry.blockCount / 32) + 1);
    this.pool = new SavePool(quotaSlots);
    this.control = alloc.shared
      ? new Int32Array(new SharedArrayBuffer(CONTROL_WORDS * 4))
      : new Int32Array(CONTROL_WORDS);
  }

  get granuleBlocks(): number {
    return 2 ** this.granuleShift;
  }

  granulesFor(blocks: number): number {
    return Math.ceil(blocks / 2 ** this.granuleShift);
  }

  granuleOf(b: number): number {
    return Math.floor(b / 2 ** this.granuleShift);
  }

  isSettled(b: number): boolean {
    return ((this.settled[b >>> 5]! >>> (b & 31)) & 1) === 1;
  }

  allSettled(b0: number, b1: number): boolean {
    for (let b = b0; b < b1; b++) if (!this.isSettled(b)) return false;
    return true;
  }

  settle(b: number): void {
    Atomics.or(this.settled, b >>> 5, 1 << (b & 31));
  }

  unsettleRange(b0: number, b1: number): void {
    for (let b = b0; b < b1; b++) {
      if ((b & 31) === 0 && b + 32 <= b1) {
        Atomics.store(this.settled, b >>> 5, 0);
        b += 31;
      } else {
        Atomics.and(this.settled, b >>> 5, ~(1 << (b & 31)));
      }
    }
  }

  /** OP-1: a new tail means every block must be checked again. Runs with the gate closed. */
  resetSettled(): void {
    this.settled.fill(0);
  }

  /** Sets or clears the restore record; while set, data-path workers send production reads to the engine. */
  setRestore(rs: RestoreState | null): void {
    this.restore = rs;
    if (rs === null) Atomics.and(this.control, CTL_FLAGS, ~FLAG_READS_VIA_ENGINE);
    else Atomics.or(this.control, CTL_FLAGS, FLAG_READS_VIA_ENGINE);
  }

  /** RW snapshots based on snapshot `id`. */
  rwChildren(id: number): RwEntry[] {
    const out: RwEntry[] = [];
    for (const rw of this.rws.values()) if (rw.base === id) out.push(rw);
    return out;
  }

  /** EC-7: grows the production meta bit map and the settled map; bumps the shared generation. */
  grow(blockCount: number): void {
    this.meta.grow(this.granulesFor(blockCount), this.alloc);
    const words = Math.ceil(blockCount / 32) + 1;
    if (words > this.settled.length) {
      const settled = this.alloc.words(words);
      settled.set(this.settled);
      this.settled = settled;
    }
    this.blockCount = blockCount;
    Atomics.add(this.control, CTL_GENERATION, 1);
  }
}
