// SPDX-License-Identifier: Apache-2.0
// Asserts every applicable invariant of spec §5 for a SnapshotVolume against a VolumeModel.

import type { SnapshotVolume } from '../volume.js';
import { extentBlocks, type ModelSnapshot, type VolumeModel } from './model.js';

export interface CheckOptions {
  /** Also compare every differential pair (INV-9/INV-10) and allocated extents (OP-18). Default true. */
  differentials?: boolean;
  /** Check INV-10 (needs exact per-period write sets). Default true. */
  tight?: boolean;
}

export async function checkVolume(vol: SnapshotVolume, model: VolumeModel, options: CheckOptions = {}): Promise<void> {
  vol.verifyInvariants();
  const bs = model.blockSize;
  if (vol.sizeBytes !== model.blockCount * bs) throw new Error(`size ${vol.sizeBytes} != ${model.blockCount * bs}`);
  // INV-2: production read-your-writes.
  assertSame('production', await vol.read(0, vol.sizeBytes), model.contentOf('live'), bs);
  // INV-8: the queue equals the model's, oldest first; adopt EC-5 invalidations reported by the engine.
  const infos = vol.listSnapshots();
  const ids = infos.map((s) => s.id).join(',');
  const expected = model.snapshots.map((s) => s.id).join(',');
  if (ids !== expected) throw new Error(`INV-8 queue ${ids} != model ${expected}`);
  // A sacrificed snapshot gave its saves to the next older one (space-policy.ts), as a delete would; an
  // invalid tail may still receive saves afterwards, so its own periods stay counted too (an upper bound).
  for (const info of [...infos].reverse()) {
    if (info.state !== 'invalid') continue;
    const s = model.find(info.id);
    const older = model.snapshots[model.snapshots.indexOf(s) - 1];
    if (older !== undefined) for (const b of s.periodWrites) older.periodWrites.add(b);
  }
  let savedTotal = 0;
  for (const info of infos) {
    const s = model.find(info.id);
    if (info.state === 'invalid') s.invalid = true;
    savedTotal += info.savedBlocks;
    // EC-8 flags as the model predicts them (deferred deletion, restore point).
    if (info.autoDelete !== (s.autoDelete === true) || info.restoring !== (s.restoring === true)) {
      throw new Error(`snapshot ${info.id} flags autoDelete=${info.autoDelete} restoring=${info.restoring} differ`);
    }
    if (info.hidden !== (s.hidden === true) && !(info.hidden && s.autoDelete === true)) {
      throw new Error(`snapshot ${info.id} hidden=${info.hidden} differs from the model`);
    }
    // INV-5: at most one save per block per tail period (merged periods included).
    if (info.savedBlocks > s.periodWrites.size) {
      throw new Error(`INV-5 snapshot ${info.id} holds ${info.savedBlocks} saves for ${s.periodWrites.size} writes`);
    }
    if (s.invalid || s.restoring === true) continue;
    // INV-1: snapshot immutability.
    assertSame(`snapshot ${info.id}`, await vol.readSnapshot(info.id, 0, info.sizeBytes), model.contentOf(s), bs);
  }
  // INV-3: every RW snapshot reads its own writes over its base, unaffected by every other view.
  const rws = vol.listRws();
  const rwIds = rws.map((r) => r.id).join(',');
  const wantRw = [...model.rws.keys()].sort((a, b) => a - b).join(',');
  if (rwIds !== wantRw) throw new Error(`RW snapshots ${rwIds} != model ${wantRw}`);
  for (const info of rws) {
    const m = model.rw(info.id);
    savedTotal += info.savedBlocks;
    if (info.baseId !== m.base || info.sizeBytes !== m.blockCount * bs || info.tag !== m.tag) {
      throw new Error(`RW snapshot ${info.id} is ${JSON.stringify(info)}, model base ${m.base} size ${m.blockCount}`);
    }
    if (!info.valid) continue;
    assertSame(`RW snapshot ${info.id}`, await vol.readRw(info.id, 0, info.sizeBytes), model.rwContent(info.id), bs);
  }
  if ((vol.restoreStatus() !== null) !== (model.restore !== null)) {
    throw new Error(`restore running: engine ${vol.restoreStatus() !== null}, model ${model.restore !== null}`);
  }
  // INV-7: save accounting.
  const stats = vol.stats();
  if (stats.savePoolUsedBytes !== savedTotal * bs) {
    throw new Error(`INV-7 pool uses ${stats.savePoolUsedBytes} bytes for ${savedTotal} saved blocks`);
  }
  if (infos.length === 0 && rws.length === 0 && stats.savePoolUsedBytes !== 0) {
    throw new Error('INV-7 pool not empty without snapshots');
  }
  if (options.differentials === false) return;
  const live = model.snapshots.filter((s) => !s.invalid && s.restoring !== true);
  for (let i = 0; i < live.length; i++) {
    const l = live[i]!;
    checkAllocated(vol, model, l);
    for (let j = i + 1; j < live.length; j++) checkDelta(vol, model, l, live[j]!, options.tight !== false);
    checkDelta(vol, model, l, 'live', options.tight !== false);
  }
  checkAllocated(vol, model, 'live');
}

function assertSame(what: string, got: Uint8Array, want: Uint8Array, bs: number): void {
  if (got.length !== want.length) throw new Error(`${what}: ${got.length} bytes, expected ${want.length}`);
  for (let i = 0; i < got.length; i++) {
    if (got[i] !== want[i]) {
      throw new Error(`${what}: byte ${i} (block ${Math.floor(i / bs)}) is ${got[i]}, expected ${want[i]}`);
    }
  }
}

/** INV-9 (and INV-10 where it applies) for the pair (l, m). */
function checkDelta(
  vol: SnapshotVolume,
  model: VolumeModel,
  l: ModelSnapshot,
  m: ModelSnapshot | 'live',
  tightCheck: boolean,
): void {
  const bs = model.blockSize;
  const blocks = extentBlocks(vol.changedExtents(l.id, m === 'live' ? 'live' : m.id), bs);
  const set = new Set(blocks);
  const mView = m === 'live' ? 'live' : m;
  const mBlocks = m === 'live' ? model.blockCount : m.blockCount;
  const mContent = m === 'live' ? model.blocks : m.content;
  const name = `delta(${l.id}, ${m === 'live' ? 'live' : m.id})`;
  for (const b of blocks) {
    if (b >= mBlocks) throw new Error(`${name} reports block ${b} past the end`);
    if (!model.validIn(mView, b)) throw new Error(`INV-9 ${name} reports block ${b}, unused in the target`);
  }
  for (let b = 0; b < mBlocks; b++) {
    if (!model.validIn(mView, b)) continue;
    const differs = b >= l.blockCount || !equalBytes(l.content[b]!, mContent[b]!);
    if (differs && !set.has(b)) throw new Error(`INV-9 ${name} misses changed block ${b}`);
  }
  // INV-10: with only save-volume entries in [l, m) and no discard in between, exactly the written blocks
  // (plus, per EC-7, blocks past l's size that are valid in m).
  const tEnd = m === 'live' ? Number.POSITIVE_INFINITY : m.cutAt;
  const between = model.snapshots.filter((s) => s.cutAt >= l.cutAt && s.cutAt < tEnd);
  const tight =
    between.every((s) => s.method === 'save-volume' && !s.invalid) &&
    !model.discards.some((t) => t > l.cutAt && t < tEnd);
  if (!tight || !tightCheck) return;
  const written = new Set<number>();
  for (const s of between) for (const b of s.periodWrites) written.add(b);
  for (let b = 0; b < mBlocks; b++) {
    const wantIn = (written.has(b) || b >= l.blockCount) && model.validIn(mView, b);
    if (wantIn !== set.has(b)) {
      throw new Error(`INV-10 ${name}: block ${b} reported=${set.has(b)} written=${written.has(b)}`);
    }
  }
}

/** OP-18: allocated extents are exactly the blocks valid in the view. */
function checkAllocated(vol: SnapshotVolume, model: VolumeModel, v: ModelSnapshot | 'live'): void {
  const blocks = extentBlocks(vol.allocatedExtents(v === 'live' ? 'live' : v.id), model.blockSize);
  const n = v === 'live' ? model.blockCount : v.blockCount;
  const want: number[] = [];
  for (let b = 0; b < n; b++) if (model.validIn(v, b)) want.push(b);
  if (blocks.join(',') !== want.join(',')) {
    throw new Error(`OP-18 allocated(${v === 'live' ? 'live' : v.id}) = ${blocks.join(',')} != ${want.join(',')}`);
  }
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
