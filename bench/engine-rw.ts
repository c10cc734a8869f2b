// SPDX-License-Identifier: Apache-2.0
// The writable and restorative half of the engine suite (`npm run bench -- engine --json`), file-backed with
// real fdatasync, each figure beside its baseline in the same run:
//   restore_first_read_ms  a 4 GiB volume, fully written, 1 GiB of it rewritten after a snapshot: time from
//                          calling startRestore to the return of the first read of a restored block (the
//                          volume must not wait for the copy). Median of 3 restores.
//   restore_copy_mb_s      the background copy of that restore (RestoreJob under the scheduler, no rate limit,
//                          no foreground load): restored bytes / time until the restore completed.
//   clone_copy_mb_s        a clone-method image of a snapshot with 1 GiB allocated in a 4 GiB volume: copied
//                          bytes / time of the extent copier (ExtentCopyJob) until the image is complete.
//   copy_baseline_mb_s     `cp --sparse=always` of a 1 GiB file followed by `sync` of the copy, measured
//                          before and after the engine copies (mean); *_vs_cp are the ratios to it.
//   rw_write_ratio         bursts of 64 concurrent random 4 KiB writes + flush into an RW snapshot (first
//                          writes: a new slot each) / the same bursts on a volume without snapshots.
//   rw_overwrite_ratio     the same into blocks the RW snapshot already owns (in-place) / the same baseline.
import { execFile } from 'node:child_process';
import { open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { SnapshotVolume } from '../csi/src/engine/volume.js';
import { snapshotSource } from '../csi/src/jobs/copy-source.js';
import { ExtentCopyJob } from '../csi/src/jobs/extent-copy.js';
import { RestoreJob } from '../csi/src/jobs/restore-job.js';
import { JobScheduler } from '../csi/src/jobs/scheduler.js';
import type { VolumeStore } from '../csi/src/store/volume-store.js';
import type { BenchContext } from './suite.js';

const execFileP = promisify(execFile);
const BS = 4096;
const MIB = 1024 * 1024;
const GIB = 1024 * MIB;

export const RW_TARGETS = {
  restore_first_read_ms: 50,
  /** Fraction of the cp baseline. */
  copy_vs_cp: 0.5,
};

const now = () => performance.now();
const round = (x: number, d = 3) => Math.round(x * 10 ** d) / 10 ** d;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
}

async function fill(vol: SnapshotVolume, from: number, bytes: number, seed: number): Promise<void> {
  const chunk = new Uint8Array(MIB);
  for (let off = 0; off < bytes; off += MIB) {
    chunk.fill((seed + off / MIB) & 0xff);
    new DataView(chunk.buffer).setFloat64(0, from + off + seed);
    await vol.write(from + off, chunk.subarray(0, Math.min(MIB, bytes - off)));
  }
  await vol.flush();
}

/** Bursts of `depth` concurrent 4 KiB writes through `write`, a flush after each; total ms. */
async function bursts(
  write: (offset: number, data: Uint8Array) => Promise<void>,
  flush: () => Promise<void>,
  blocks: number[],
  depth = 64,
): Promise<number> {
  const data = new Uint8Array(BS).fill(0x5a);
  const t0 = now();
  for (let i = 0; i < blocks.length; i += depth) {
    await Promise.all(blocks.slice(i, i + depth).map((b) => write(b * BS, data)));
    await flush();
  }
  return now() - t0;
}

/** `cp --sparse=always` of a fully written file plus `sync` of the copy: MB/s. */
async function cpBaseline(dir: string, bytes: number): Promise<number> {
  const src = join(dir, 'cp-src');
  const dst = join(dir, 'cp-dst');
  await rm(dst, { force: true });
  const t0 = now();
  await execFileP('cp', ['--sparse=always', src, dst]);
  await execFileP('sync', [dst]);
  const ms = now() - t0;
  await rm(dst, { force: true });
  return bytes / MIB / (ms / 1000);
}

async function writeFile(path: string, bytes: number): Promise<void> {
  const fh = await open(path, 'w');
  try {
    const chunk = new Uint8Array(MIB);
    for (let off = 0; off < bytes; off += MIB) {
      chunk.fill((off / MIB) & 0xff);
      chunk[1] = 1;
      await fh.write(chunk, 0, MIB, off);
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export async function rwRestoreBench(
  ctx: BenchContext,
  store: VolumeStore,
  root: string,
  quick: boolean,
  open: SnapshotVolume[],
): Promise<Record<string, number>> {
  const volBytes = quick ? 512 * MIB : 4 * GIB;
  const setBytes = quick ? 128 * MIB : GIB;
  const r = rng(424242);
  await writeFile(join(root, 'cp-src'), setBytes);
  const cp: number[] = [await cpBaseline(root, setBytes)];
  ctx.log(`engine-rw: cp baseline ${cp[0]!.toFixed(0)} MB/s`);

  // ---- in-place restore --------------------------------------------------------------------------------
  ctx.log(`engine-rw: filling a ${volBytes / GIB} GiB volume for the restore`);
  const v = await store.create('restore', { sizeBytes: volBytes });
  open.push(v);
  await fill(v, 0, volBytes, 1);
  const firstReads: number[] = [];
  const copyRates: number[] = [];
  const rounds = quick ? 2 : 3;
  for (let i = 0; i < rounds; i++) {
    const snap = await v.createSnapshot();
    const at = Math.floor(r() * ((volBytes - setBytes) / MIB)) * MIB;
    await fill(v, at, setBytes, 10 + i); // 1 GiB rewritten: its before-images go to the snapshot
    const t0 = now();
    await v.startRestore({ source: { kind: 'snapshot', id: snap.id } });
    const block = new Uint8Array(BS);
    await v.readInto(at + Math.floor(r() * (setBytes / BS)) * BS, block);
    firstReads.push(now() - t0);
    const job = new RestoreJob(v, 'restore');
    const total = job.progress().totalBytes;
    const sched = new JobScheduler({ rateBytesPerSecond: 0 });
    const t1 = now();
    await sched.submit(job);
    const ms = now() - t1 + (t1 - t0);
    copyRates.push(total / MIB / (ms / 1000));
    ctx.log(
      `engine-rw: restore ${i}: first read after ${firstReads[i]!.toFixed(2)} ms, ${total / MIB} MiB restored at ${copyRates[i]!.toFixed(0)} MB/s`,
    );
    await v.deleteSnapshot(snap.id);
  }
  await v.close();
  await store.delete('restore');
  cp.push(await cpBaseline(root, setBytes));

  // ---- clone-method image --------------------------------------------------------------------------------
  ctx.log('engine-rw: clone-method image copy');
  const c = await store.create('clone-src', { sizeBytes: volBytes });
  open.push(c);
  for (let off = 0; off < setBytes; off += 16 * MIB) {
    await fill(c, Math.floor(r() * (volBytes / (16 * MIB))) * 16 * MIB, 16 * MIB, 50 + off / MIB);
  }
  const cut = await c.createSnapshot({ method: 'meta-bitmap' });
  const img = await store.create('clone-img', { sizeBytes: volBytes });
  open.push(img);
  const copy = ExtentCopyJob.open({ kind: 'clone', id: 'img', source: snapshotSource(c, cut.id), target: img });
  const copied = copy.progress().totalBytes;
  const t2 = now();
  await new JobScheduler({ rateBytesPerSecond: 0 }).submit(copy);
  const cloneRate = copied / MIB / ((now() - t2) / 1000);
  ctx.log(`engine-rw: image of ${copied / MIB} MiB copied at ${cloneRate.toFixed(0)} MB/s`);
  await img.close();
  await c.close();
  await store.delete('clone-img');
  await store.delete('clone-src');
  cp.push(await cpBaseline(root, setBytes));
  await rm(join(root, 'cp-src'), { force: true });
  const cpRate = cp.reduce((a, b) => a + b, 0) / cp.length;

  // ---- RW snapshot writes ------------------------------------------------------------------------------
  const rwBytes = quick ? 256 * MIB : GIB;
  ctx.log('engine-rw: RW snapshot writes');
  const base = await store.create('rw-base', { sizeBytes: rwBytes });
  const plain = await store.create('rw-plain', { sizeBytes: rwBytes });
  open.push(base, plain);
  await fill(base, 0, rwBytes, 3);
  await fill(plain, 0, rwBytes, 3);
  const s = await base.createSnapshot();
  const rw = await base.createRw(s.id);
  const perRound = 512;
  const ratios: number[] = [];
  const overRatios: number[] = [];
  for (let i = 0; i < (quick ? 4 : 10); i++) {
    const set = new Set<number>();
    while (set.size < perRound) set.add(Math.floor(r() * (rwBytes / BS)));
    const blocks = [...set];
    const rwWrite = (o: number, d: Uint8Array) => base.writeRw(rw.id, o, d);
    const flushBase = () => base.flush();
    const plainWrite = (o: number, d: Uint8Array) => plain.write(o, d);
    const flushPlain = () => plain.flush();
    const [a, p] =
      i % 2 === 0
        ? [await bursts(rwWrite, flushBase, blocks), await bursts(plainWrite, flushPlain, blocks)]
        : [await bursts(plainWrite, flushPlain, blocks), await bursts(rwWrite, flushBase, blocks)].reverse();
    ratios.push(a! / p!);
    const [o, p2] = [await bursts(rwWrite, flushBase, blocks), await bursts(plainWrite, flushPlain, blocks)];
    overRatios.push(o / p2);
  }
  ctx.log(
    `engine-rw: RW first writes / plain ${ratios.map((x) => x.toFixed(2)).join(' ')}; overwrites ${overRatios.map((x) => x.toFixed(2)).join(' ')}`,
  );
  await base.close();
  await plain.close();

  return {
    restore_first_read_ms: round(median(firstReads)),
    restore_copy_mb_s: round(median(copyRates), 1),
    clone_copy_mb_s: round(cloneRate, 1),
    copy_baseline_mb_s: round(cpRate, 1),
    restore_copy_vs_cp: round(median(copyRates) / cpRate),
    clone_copy_vs_cp: round(cloneRate / cpRate),
    rw_write_ratio: round(median(ratios)),
    rw_overwrite_ratio: round(median(overRatios)),
    restore_volume_bytes: volBytes,
    restore_set_bytes: setBytes,
  };
}
