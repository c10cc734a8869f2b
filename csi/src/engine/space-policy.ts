// SPDX-License-Identifier: Apache-2.0
// What the engine does when a save slot cannot be had (EC-5 as refined by issue 15; ADR 0012).
//
// A snapshot something depends on (snapshot-gc.ts: an RW snapshot based on it, i.e. a thin clone or a
// restore to a new PVC, also while it is hydrated; the running in-place restore; an in-memory pin: a
// clone-method image copy or a reader) is PINNED and is never invalidated to make room: invalidating it
// would turn another PVC's reads and writes into EIO. When a before-image or an RW snapshot's new data
// finds no slot (the quota for before-images, ENOSPC of the disk for both):
//   1. unpinned snapshots are sacrificed, oldest first: each becomes invalid (a `snap-invalid` record) and
//      gives up its save slots (a `snap-release` record; SnapshotQueue.release: merged into the next older
//      entry, or freed at the head); the frame is made durable and in-flight reads drained before a freed slot is reused (INV-7,
//      EC-2); the allocation is retried after each one;
//   2. when no unpinned snapshot is left and a pinned one still needs the before-image, the production
//      write fails with ENGINE_SAVE_POOL_FULL (errno ENOSPC to the data path): the volume behaves like a
//      thin-provisioned device that ran out of space, and nobody else loses data.
// Only snapshots whose release gives slots back are sacrificed, or, when no pinned snapshot needs the
// block, the unpinned ones that need it (then no save is needed at all); a snapshot that would give nothing
// back while a pinned one still needs the slot is kept. While an in-place restore runs nothing is sacrificed (its T0 and restore
// point are positional); unpinned snapshots that need the block are invalidated as before.
// Replay applies both records (recovery.ts), so the maps after a crash are those the live volume had.

import { engineError, type EngineError } from './errors.js';
import { dependantsOf, isPinned } from './snapshot-gc.js';
import type { SnapshotEntry } from './snapshot-queue.js';
import type { VolumeCore } from './volume-core.js';

export function pinned(core: VolumeCore, e: SnapshotEntry): boolean {
  return isPinned(dependantsOf(core, e));
}

/**
 * The oldest snapshot that may be sacrificed for a save that `needy` (valid entries, youngest first) wants:
 * one that gives slots back, or, when no pinned snapshot needs the save, one of `needy` (once none of them
 * is left the save is not needed). `needy` empty: any snapshot that gives slots back (RW data).
 */
export function nextVictim(core: VolumeCore, needy: readonly SnapshotEntry[] = []): SnapshotEntry | undefined {
  if (core.restore !== null) return undefined;
  const mustAllocate = needy.length === 0 || needy.some((e) => pinned(core, e));
  const entries = core.queue.entries;
  for (let pos = 0; pos < entries.length; pos++) {
    const e = entries[pos]!;
    if (e.map.size === 0 && (mustAllocate || !needy.includes(e))) continue;
    if (pinned(core, e)) continue;
    if (!mustAllocate && needy.includes(e)) return e;
    if (freeable(core, pos) > 0) return e;
  }
  return undefined;
}

/** Slots SnapshotQueue.release would free for the entry at `pos` (the rest moves to the older entry). */
function freeable(core: VolumeCore, pos: number): number {
  const e = core.queue.entries[pos]!;
  const older = pos > 0 ? core.queue.entries[pos - 1] : undefined;
  if (older === undefined) return e.map.size;
  let n = 0;
  e.map.forEach((b) => {
    if (b >= older.blockCount || older.map.has(b)) n++;
  });
  return n;
}

/** Invalidates `e` (if still valid) and releases its slots into quarantine; the caller commits. */
export function sacrifice(core: VolumeCore, e: SnapshotEntry): number {
  if (e.state === 'valid') {
    e.state = 'invalid';
    core.committer.append({ type: 'snap-invalid', snapId: e.id });
    core.counters.invalidations++;
  }
  core.committer.append({ type: 'snap-release', snapId: e.id });
  core.counters.sacrificed++;
  return core.queue.release(e.id, (slot) => core.pool.freeLater(slot));
}

/**
 * Sacrifices the oldest snapshot that may go (see nextVictim), makes the frame durable, waits for reads that
 * may have resolved its slots, and makes the slots reusable. False when nothing may be sacrificed.
 */
export async function makeRoom(core: VolumeCore, needy: readonly SnapshotEntry[] = []): Promise<boolean> {
  const victim = nextVictim(core, needy);
  if (victim === undefined) return false;
  sacrifice(core, victim);
  await core.committer.barrier();
  await core.epochs.quiesce();
  core.pool.commitFrees();
  return true;
}

/**
 * Gives the space of every free save slot back to the file system (BlockDevice.discard: a punched hole), so
 * that a deleted snapshot's or RW snapshot's space comes back although the slots stay in the pool. Called
 * with the gate held exclusively after commitFrees(): no allocation runs meanwhile. A hint: failures of the
 * device to punch are ignored by the device.
 */
export async function giveBackFreeSlots(core: VolumeCore): Promise<void> {
  const end = core.save.blockCount();
  for (const [start, count] of core.pool.freeRuns()) {
    if (start >= end) break;
    await core.save.discard(start, Math.min(count, end - start));
  }
}

/** The error of a production write refused because only pinned snapshots need the space (counted). */
export function pinnedFull(core: VolumeCore, b: number, needy: readonly SnapshotEntry[]): EngineError {
  core.counters.writesRefused++;
  core.counters.outOfSpace = true;
  const ids = needy.map((e) => e.id);
  return engineError(
    'ENGINE_SAVE_POOL_FULL',
    `no save-pool space for the before-image of block ${b}: snapshot(s) ${ids.join(', ')} have dependants and are never invalidated; free space by deleting snapshots or dependants, or raise the quota`,
    { block: b, snapshots: ids },
  );
}
