// SPDX-License-Identifier: Apache-2.0
// `npm run bench -- datapath [--json] [--quick] [--runtime=S] [--size-mib=N]`
//
// fio (Debian), libaio, O_DIRECT, QD16: 4 KiB random read/write and 1 MiB sequential read/write, `runtime`
// seconds each (default 15, as in shared/design/datapath.md), page cache dropped before every job. Three
// targets, measured pattern by pattern in the same run so that disk noise hits them alike:
//   raw   loop device (dio) on a plain file                                  (the physical limit)
//   pass  loop (dio) on our FUSE server, pass-through view of a plain file   (engine bypassed)
//   ours  loop (dio) on our FUSE server, live view of an engine volume holding one snapshot
// `ours` is measured in steady state: every block was written once after the cut, so writes need no copy.
// Then a second snapshot is cut and the random-write job runs again: `cow_burst_vs_steady` is that burst
// over steady state (every first write after a cut copies a before-image and pays a durability barrier).
// The FUSE server reads and writes its backing files buffered (the default, ADR 0003); `--direct-backing`
// makes it use O_DIRECT where requests are aligned, as loop's own --direct-io does on `raw`.
// `--workers=N` sets the number of data-path worker threads.
// Needs root (loop devices, FUSE).
import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { createLogger } from '../common/src/log.js';
import { Datapath } from '../csi/src/frontend/datapath.js';
import { attachLoop, detachLoop } from '../csi/src/mount/loop-device.js';
import { createBenchVolume } from './datapath-volume.js';
import { dropCaches, ensureFio, FIO_PATTERNS, type FioPattern, type FioResult, fillWithFio, runFio } from './fio.js';
import type { BenchContext, BenchSuite } from './suite.js';

interface Options {
  readonly runtimeSec: number;
  readonly sizeBytes: number;
  /** `--direct-backing`: the FUSE server uses O_DIRECT on its files where aligned (comparison runs). */
  readonly directBacking: boolean;
  /** `--workers=N`: data-path worker threads (default: the Datapath default). */
  readonly workers: number | undefined;
}

function parseOptions(args: readonly string[]): Options {
  const quick = args.includes('--quick');
  const num = (name: string, dflt: number): number => {
    const a = args.find((x) => x.startsWith(`--${name}=`));
    const v = a ? Number(a.slice(name.length + 3)) : dflt;
    if (!Number.isFinite(v) || v <= 0) throw new Error(`--${name} must be a positive number`);
    return v;
  };
  return {
    runtimeSec: num('runtime', quick ? 5 : 15),
    sizeBytes: num('size-mib', quick ? 512 : 2048) * 1024 * 1024,
    directBacking: args.includes('--direct-backing'),
    workers: args.some((a) => a.startsWith('--workers=')) ? num('workers', 4) : undefined,
  };
}

const round = (x: number, digits = 3): number => Math.round(x * 10 ** digits) / 10 ** digits;

function metric(p: FioPattern, r: FioResult): number {
  return p.name.startsWith('rand') ? r.iops : r.bwBytesPerSec;
}

export const datapathSuite: BenchSuite = {
  description: 'loop-on-FUSE data path (engine live view with one snapshot) against a plain loop device, fio',
  async run(ctx: BenchContext) {
    if (process.getuid?.() !== 0) throw new Error('the datapath benchmark needs root (loop devices, FUSE)');
    const opts = parseOptions(ctx.args);
    const loadStart = loadavg()[0] ?? 0;
    const fioVersion = await ensureFio(ctx.log);
    const dir = await mkdtemp('/var/tmp/loopsnap-bench-dp-');
    const log = createLogger({ component: 'bench-datapath', level: 'warn' });
    const loops: string[] = [];
    let datapath: Datapath | undefined;
    let closeVolume: (() => Promise<void>) | undefined;
    try {
      const rawImg = join(dir, 'raw.img');
      const passImg = join(dir, 'pass.img');
      for (const f of [rawImg, passImg]) {
        await writeFile(f, '');
        await truncate(f, opts.sizeBytes);
        await fillWithFio(f, opts.sizeBytes);
      }
      datapath = await Datapath.start({
        stateDir: join(dir, 'state'),
        log,
        directIo: opts.directBacking,
        ...(opts.workers === undefined ? {} : { workers: opts.workers }),
      });
      const raw = await attachLoop({ file: rawImg });
      loops.push(raw.device);
      datapath.exposeFile('pass', passImg);
      const pass = await datapath.attach('pass');
      loops.push(pass.device);

      const vol = await createBenchVolume(datapath, join(dir, 'state'), 'bench-vol', opts.sizeBytes);
      closeVolume = vol.close;
      const ours = await datapath.attach('bench-vol');
      loops.push(ours.device);
      ctx.log(
        `filling ${opts.sizeBytes / 1024 / 1024} MiB through the engine, cutting a snapshot, rewriting (steady state)`,
      );
      await fillWithFio(ours.device, opts.sizeBytes);
      await vol.snapshot();
      await fillWithFio(ours.device, opts.sizeBytes);

      const targets = { raw: raw.device, pass: pass.device, ours: ours.device } as const;
      const results: Record<string, Record<string, FioResult>> = { raw: {}, pass: {}, ours: {} };
      for (const p of FIO_PATTERNS) {
        for (const [name, dev] of Object.entries(targets)) {
          await dropCaches();
          const r = await runFio({ filename: dev, pattern: p, runtimeSec: opts.runtimeSec });
          (results[name] as Record<string, FioResult>)[p.name] = r;
          ctx.log(
            `${name.padEnd(4)} ${p.name.padEnd(9)} ${Math.round(r.iops)} IOPS ${(r.bwBytesPerSec / 1e6).toFixed(0)} MB/s`,
          );
        }
      }
      ctx.log('cutting a second snapshot; random writes right after the cut (copy-on-write burst)');
      await vol.snapshot();
      await dropCaches();
      const burst = await runFio({
        filename: ours.device,
        pattern: FIO_PATTERNS[1] as FioPattern,
        runtimeSec: opts.runtimeSec,
      });
      ctx.log(`ours burst     ${Math.round(burst.iops)} IOPS`);

      const ratio = (a: string, b: string, p: FioPattern): number =>
        metric(p, results[a]?.[p.name] as FioResult) / metric(p, results[b]?.[p.name] as FioResult);
      const [rr, rw, sr, sw] = FIO_PATTERNS as [FioPattern, FioPattern, FioPattern, FioPattern];
      const overheads = FIO_PATTERNS.map((p) => ratio('ours', 'pass', p));
      const out: Record<string, number | string | boolean | null> = {
        rand_read_vs_raw: round(ratio('ours', 'raw', rr)),
        rand_write_vs_raw: round(ratio('ours', 'raw', rw)),
        seq_read_vs_raw: round(ratio('ours', 'raw', sr)),
        seq_write_vs_raw: round(ratio('ours', 'raw', sw)),
        engine_overhead: round(Math.min(...overheads)),
        engine_overhead_geomean: round(Math.exp(overheads.reduce((a, x) => a + Math.log(x), 0) / overheads.length)),
        cow_burst_vs_steady: round(burst.iops / (results.ours?.randwrite as FioResult).iops),
        pass_rand_read_vs_raw: round(ratio('pass', 'raw', rr)),
        pass_rand_write_vs_raw: round(ratio('pass', 'raw', rw)),
        pass_seq_read_vs_raw: round(ratio('pass', 'raw', sr)),
        pass_seq_write_vs_raw: round(ratio('pass', 'raw', sw)),
        runtime_sec: opts.runtimeSec,
        size_mib: opts.sizeBytes / 1024 / 1024,
        fio_version: fioVersion,
        backing_io: opts.directBacking ? 'direct' : 'buffered',
        workers: opts.workers ?? 'default',
        // The machine is shared: CPU-bound paths (FUSE) suffer more from other load than the raw loop device.
        loadavg_1m_start: round(loadStart, 2),
        loadavg_1m_end: round(loadavg()[0] ?? 0, 2),
      };
      for (const [name, per] of Object.entries(results)) {
        for (const p of FIO_PATTERNS) {
          const r = per[p.name] as FioResult;
          out[`${name}_${p.name}_${p.name.startsWith('rand') ? 'iops' : 'mb_s'}`] = round(
            p.name.startsWith('rand') ? r.iops : r.bwBytesPerSec / 1e6,
            0,
          );
        }
      }
      out.ours_burst_randwrite_iops = round(burst.iops, 0);
      out.engine_overhead_per_pattern = overheads.map((x) => round(x)).join(',');
      return out;
    } finally {
      for (const l of loops.reverse()) await detachLoop(l).catch(() => undefined);
      await closeVolume?.().catch(() => undefined);
      await datapath?.stop({ force: true }).catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    }
  },
};
