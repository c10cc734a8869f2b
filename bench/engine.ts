// SPDX-License-Identifier: Apache-2.0
// `npm run bench -- engine [--json] [--quick] [--dir=PATH]`
//
// The snapshot engine on file-backed volumes (real files, real fdatasync) in one run, each figure measured
// side by side with its baseline, rounds interleaved so that disk noise hits both alike:
//   cut_ms_p99_1g / _64g     snapshot creation (OP-1) on a fully written 1 GiB volume and on a sparse
//                            64 GiB volume with 1 GiB written; 256 random 4 KiB writes + flush between cuts.
//   cow_write_ratio          bursts of 64 concurrent random 4 KiB writes + flush: first writes after a cut
//                            (every one copies a before-image behind the EC-1 barrier) / the same on a
//                            volume without snapshots.
//   steady_write_ratio_10_snaps  the same bursts overwriting blocks already saved, with 10 snapshots /
//                            without snapshots.
//   delta_speedup_1pct       4 GiB volume, 1% of blocks rewritten between two snapshots: byte compare of
//                            both snapshots / differential (changedExtents: the extents GetMetadataDelta
//                            streams); delta_with_data_speedup_1pct also reads the changed blocks.
//   meta_bytes_per_gib_per_snapshot  resident snapshot metadata of that 4 GiB volume with 8 snapshots,
//                            1% random blocks rewritten before each, per GiB and per snapshot.
//   restore_*, clone_copy_*, rw_*  RW snapshots, in-place restore and clone-method images: engine-rw.ts.
// `--only=rw` runs just the engine-rw part.
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { SnapshotVolume } from '../csi/src/engine/volume.js';
import { NodeFileIo } from '../csi/src/store/file-io.js';
import { VolumeStore } from '../csi/src/store/volume-store.js';
import { rwRestoreBench, RW_TARGETS } from './engine-rw.js';
import type { BenchContext, BenchSuite } from './suite.js';

const BS = 4096;
const MIB = 1024 * 1024;
const GIB = 1024 * MIB;
const TARGETS = {
  cut_ms_p99: 20,
  cow_write_ratio: 2.0,
  steady_write_ratio_10_snaps: 1.1,
  delta_speedup_1pct: 100,
  meta_bytes_per_gib_per_snapshot: 64 * 1024,
};

interface Options {
  quick: boolean;
  dir: string;
}

function parse(args: readonly string[]): Options {
  const dirArg = args.find((a) => a.startsWith('--dir='));
  return { quick: args.includes('--quick'), dir: dirArg ? dirArg.slice(6) : '/var/tmp' };
}

/** xorshift32 for reproducible block choices. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
}

const now = () => performance.now();
const round = (x: number, d = 3) => Math.round(x * 10 ** d) / 10 ** d;

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)]!;
}

function median(xs: number[]): number {
  return quantile(xs, 0.5);
}

async function fill(vol: SnapshotVolume, from: number, bytes: number): Promise<void> {
  const chunk = new Uint8Array(MIB);
  for (let off = 0; off < bytes; off += MIB) {
    chunk.fill((off / MIB) & 0xff);
    new DataView(chunk.buffer).setFloat64(0, from + off);
    await vol.write(from + off, chunk.subarray(0, Math.min(MIB, bytes - off)));
  }
  await vol.flush();
}

/** `bursts` bursts of `depth` concurrent 4 KiB writes at the given blocks, each burst followed by flush. */
async function writeBursts(vol: SnapshotVolume, blocks: number[], depth: number): Promise<number> {
  const data = new Uint8Array(BS).fill(0x5a);
  const t0 = now();
  for (let i = 0; i < blocks.length; i += depth) {
    await Promise.all(blocks.slice(i, i + depth).map((b) => vol.write(b * BS, data)));
    await vol.flush();
  }
  return now() - t0;
}

function distinctBlocks(r: () => number, count: number, limit: number): number[] {
  const set = new Set<number>();
  while (set.size < count) set.add(Math.floor(r() * limit));
  return [...set];
}

async function cutLatencies(vol: SnapshotVolume, r: () => number, cuts: number): Promise<number[]> {
  const out: number[] = [];
  const blocks = vol.blockCount;
  const written = vol.allocatedExtents('live');
  for (let i = 0; i < cuts; i++) {
    // 256 random writes inside the written area, then a flush (a file system's freeze would do the same).
    const targets: number[] = [];
    for (let k = 0; k < 256; k++) {
      const e = written[Math.floor(r() * written.length)]!;
      targets.push(Math.min(blocks - 1, e.offset / BS + Math.floor(r() * (e.length / BS))));
    }
    await writeBursts(vol, targets, 64);
    const t0 = now();
    await vol.createSnapshot({ method: i % 2 === 0 ? 'save-volume' : 'meta-bitmap' });
    out.push(now() - t0);
    const snaps = vol.listSnapshots();
    if (snaps.length > 16) await vol.deleteSnapshot(snaps[0]!.id);
  }
  for (const s of vol.listSnapshots()) await vol.deleteSnapshot(s.id);
  return out;
}

function rwTargetsMet(rw: Record<string, number>): boolean {
  return (
    rw.restore_first_read_ms! <= RW_TARGETS.restore_first_read_ms &&
    rw.restore_copy_vs_cp! >= RW_TARGETS.copy_vs_cp &&
    rw.clone_copy_vs_cp! >= RW_TARGETS.copy_vs_cp
  );
}

export const engineSuite: BenchSuite = {
  description: 'snapshot engine on file-backed volumes: cut latency, COW and steady write cost, differential, metadata',
  async run(ctx: BenchContext) {
    const opts = parse(ctx.args);
    const q = opts.quick;
    const root = await mkdtemp(join(opts.dir, 'loopsnap-bench-engine-'));
    const store = new VolumeStore(root);
    const r = rng(20261122);
    const open: SnapshotVolume[] = [];
    if (ctx.args.includes('--only=rw')) {
      try {
        const rw = await rwRestoreBench(ctx, store, root, q, open);
        return { ...rw, targets_met: rwTargetsMet(rw), quick: q };
      } finally {
        for (const v of open) if (!v.isClosed) await v.close().catch(() => {});
        await rm(root, { recursive: true, force: true });
      }
    }
    const make = async (id: string, size: number) => {
      const v = await store.create(id, { sizeBytes: size });
      open.push(v);
      return v;
    };
    try {
      // ---- cut latency -----------------------------------------------------------------------------
      const smallSize = q ? 256 * MIB : GIB;
      ctx.log(`engine: filling ${smallSize / MIB} MiB volume`);
      const v1 = await make('cut-1g', smallSize);
      await fill(v1, 0, smallSize);
      const cuts = q ? 20 : 60;
      const cut1 = await cutLatencies(v1, r, cuts);
      ctx.log(`engine: cut 1g p50 ${median(cut1).toFixed(2)} ms p99 ${quantile(cut1, 0.99).toFixed(2)} ms`);
      const bigSize = q ? 8 * GIB : 64 * GIB;
      const v64 = await make('cut-64g', bigSize);
      const writtenBig = q ? 128 * MIB : GIB;
      ctx.log(`engine: writing ${writtenBig / MIB} MiB across a sparse ${bigSize / GIB} GiB volume`);
      for (let i = 0; i < writtenBig / (16 * MIB); i++) {
        const at = Math.floor(r() * (bigSize / (16 * MIB))) * 16 * MIB;
        await fill(v64, at, 16 * MIB);
      }
      const cut64 = await cutLatencies(v64, r, cuts);
      ctx.log(`engine: cut 64g p50 ${median(cut64).toFixed(2)} ms p99 ${quantile(cut64, 0.99).toFixed(2)} ms`);
      await v64.close();
      // The same cuts with fsync turned off: the engine's own share of a cut (O(1) in the volume size).
      const nosync = new VolumeStore(join(root, 'nosync'), new NodeFileIo({ durable: false }));
      const vn = await nosync.create('cut-64g', { sizeBytes: bigSize });
      open.push(vn);
      for (let i = 0; i < writtenBig / (16 * MIB); i++) {
        await fill(vn, Math.floor(r() * (bigSize / (16 * MIB))) * 16 * MIB, 16 * MIB);
      }
      const cutNoSync = await cutLatencies(vn, r, cuts);
      ctx.log(
        `engine: cut 64g without fsync p50 ${median(cutNoSync).toFixed(2)} ms p99 ${quantile(cutNoSync, 0.99).toFixed(2)} ms`,
      );
      await vn.close();

      // ---- COW and steady-state write cost ---------------------------------------------------------
      ctx.log('engine: filling the baseline volume');
      const v0 = await make('plain', smallSize);
      await fill(v0, 0, smallSize);
      const perRound = 512;
      const rounds = q ? 6 : 20;
      const cow: number[] = [];
      const plainCow: number[] = [];
      const cowRatios: number[] = [];
      for (let i = 0; i < rounds; i++) {
        const blocks = distinctBlocks(r, perRound, smallSize / BS);
        const snap = await v1.createSnapshot();
        // Alternate which volume goes first so that writeback of the other one's data hits both alike.
        const [c, p] =
          i % 2 === 0
            ? [await writeBursts(v1, blocks, 64), await writeBursts(v0, blocks, 64)]
            : [await writeBursts(v0, blocks, 64), await writeBursts(v1, blocks, 64)].reverse();
        cow.push(c!);
        plainCow.push(p!);
        cowRatios.push(c! / p!);
        await v1.deleteSnapshot(snap.id);
      }
      const cowRatio = median(cowRatios);
      ctx.log(`engine: cow ${median(cow).toFixed(1)} ms vs plain ${median(plainCow).toFixed(1)} ms per round`);
      for (let i = 0; i < 10; i++) await v1.createSnapshot({ method: i % 2 === 0 ? 'save-volume' : 'meta-bitmap' });
      const steadyBlocks = distinctBlocks(r, perRound, smallSize / BS);
      await writeBursts(v1, steadyBlocks, 64); // saves them into the tail
      const copiesBefore = v1.stats().cowCopiesTotal;
      const steady: number[] = [];
      const plainSteady: number[] = [];
      const steadyRatios: number[] = [];
      for (let i = 0; i < rounds; i++) {
        const [s, p] =
          i % 2 === 0
            ? [await writeBursts(v1, steadyBlocks, 64), await writeBursts(v0, steadyBlocks, 64)]
            : [await writeBursts(v0, steadyBlocks, 64), await writeBursts(v1, steadyBlocks, 64)].reverse();
        steady.push(s!);
        plainSteady.push(p!);
        steadyRatios.push(s! / p!);
      }
      const steadyRatio = median(steadyRatios);
      ctx.log(
        `engine: steady ${median(steady).toFixed(1)} ms vs plain ${median(plainSteady).toFixed(1)} ms (ratios ${steadyRatios.map((x) => x.toFixed(2)).join(' ')}; ${v1.stats().cowCopiesTotal - copiesBefore} copies)`,
      );
      await v0.close();
      await v1.close();

      // ---- differential and metadata ---------------------------------------------------------------
      const deltaSize = q ? GIB : 4 * GIB;
      ctx.log(`engine: filling ${deltaSize / GIB} GiB volume for the differential`);
      const v4 = await make('delta', deltaSize);
      await fill(v4, 0, deltaSize);
      const nBlocks = deltaSize / BS;
      const onePct = Math.round(nBlocks / 100);
      const a = await v4.createSnapshot();
      await writeBursts(v4, distinctBlocks(r, onePct, nBlocks), 256);
      const b = await v4.createSnapshot();
      const bufA = new Uint8Array(MIB);
      const bufB = new Uint8Array(MIB);
      let t0 = now();
      let differing = 0;
      for (let off = 0; off < deltaSize; off += MIB) {
        await v4.readSnapshotInto(a.id, off, bufA);
        await v4.readSnapshotInto(b.id, off, bufB);
        for (let k = 0; k < MIB; k += BS) {
          if (Buffer.compare(bufA.subarray(k, k + BS), bufB.subarray(k, k + BS)) !== 0) differing++;
        }
      }
      const fullMs = now() - t0;
      // The differential proper (what GetMetadataDelta streams): the changed extents, best of 5.
      let deltaMs = Number.POSITIVE_INFINITY;
      let extents = v4.changedExtents(a.id, b.id);
      for (let i = 0; i < 5; i++) {
        t0 = now();
        extents = v4.changedExtents(a.id, b.id);
        deltaMs = Math.min(deltaMs, now() - t0);
      }
      // A backup reading the changed data too.
      t0 = now();
      let reported = 0;
      for (const e of extents) {
        const data = new Uint8Array(e.length);
        await v4.readSnapshotInto(b.id, e.offset, data);
        reported += e.length / BS;
      }
      const deltaDataMs = now() - t0 + deltaMs;
      ctx.log(
        `engine: full compare ${fullMs.toFixed(0)} ms (${differing} blocks differ); differential ${deltaMs.toFixed(2)} ms, with data ${deltaDataMs.toFixed(1)} ms (${reported} blocks)`,
      );
      if (reported < differing) throw new Error(`differential reported ${reported} blocks, ${differing} differ`);

      const before = v4.stats().snapshotMetadataBytes;
      const snapsBefore = v4.stats().snapshotCount;
      for (let i = 0; i < 6; i++) {
        await writeBursts(v4, distinctBlocks(r, onePct, nBlocks), 256);
        await v4.createSnapshot({ method: i % 2 === 0 ? 'meta-bitmap' : 'save-volume' });
      }
      await writeBursts(v4, distinctBlocks(r, onePct, nBlocks), 256);
      const st = v4.stats();
      const metaPerGibPerSnap = st.snapshotMetadataBytes / (deltaSize / GIB) / st.snapshotCount;
      ctx.log(
        `engine: ${st.snapshotCount} snapshots hold ${st.snapshotMetadataBytes} metadata bytes (${before} with ${snapsBefore}); volume ${st.volumeMetadataBytes}`,
      );
      await v4.close();

      const rw = await rwRestoreBench(ctx, store, root, q, open);
      const result = {
        cut_ms_p99_1g: round(quantile(cut1, 0.99)),
        cut_ms_p99_64g: round(quantile(cut64, 0.99)),
        cut_ms_p50_1g: round(median(cut1)),
        cut_ms_p50_64g: round(median(cut64)),
        cow_write_ratio: round(cowRatio),
        steady_write_ratio_10_snaps: round(steadyRatio),
        delta_speedup_1pct: round(fullMs / deltaMs, 1),
        delta_with_data_speedup_1pct: round(fullMs / deltaDataMs, 1),
        meta_bytes_per_gib_per_snapshot: Math.round(metaPerGibPerSnap),
        volume_meta_bytes_per_gib: Math.round(st.volumeMetadataBytes / (deltaSize / GIB)),
        cow_burst_ms: round(median(cow)),
        plain_burst_ms: round(median(plainCow)),
        delta_full_compare_ms: round(fullMs, 1),
        delta_ms: round(deltaMs, 3),
        delta_with_data_ms: round(deltaDataMs, 1),
        steady_burst_ms: round(median(steady)),
        plain_steady_burst_ms: round(median(plainSteady)),
        cut_engine_ms_p99_64g: round(quantile(cutNoSync, 0.99)),
        quick: q,
      };
      const met =
        result.cut_ms_p99_1g <= TARGETS.cut_ms_p99 &&
        result.cut_ms_p99_64g <= TARGETS.cut_ms_p99 &&
        result.cow_write_ratio <= TARGETS.cow_write_ratio &&
        result.steady_write_ratio_10_snaps <= TARGETS.steady_write_ratio_10_snaps &&
        result.delta_speedup_1pct >= TARGETS.delta_speedup_1pct &&
        result.meta_bytes_per_gib_per_snapshot <= TARGETS.meta_bytes_per_gib_per_snapshot;
      return { ...result, ...rw, targets_met: met && rwTargetsMet(rw) };
    } finally {
      for (const v of open) if (!v.isClosed) await v.close().catch(() => {});
      await rm(root, { recursive: true, force: true });
    }
  },
};
