// SPDX-License-Identifier: Apache-2.0
// fio jobs for data-path benchmarks (the job shapes of shared/design/datapath.md, Appendix A), run as child
// processes (asynchronously: the FUSE server may live in this process).
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export interface FioPattern {
  readonly name: 'randread' | 'randwrite' | 'seqread' | 'seqwrite';
  readonly rw: 'randread' | 'randwrite' | 'read' | 'write';
  readonly bs: string;
}

export const FIO_PATTERNS: readonly FioPattern[] = [
  { name: 'randread', rw: 'randread', bs: '4k' },
  { name: 'randwrite', rw: 'randwrite', bs: '4k' },
  { name: 'seqread', rw: 'read', bs: '1M' },
  { name: 'seqwrite', rw: 'write', bs: '1M' },
];

export interface FioResult {
  readonly iops: number;
  readonly bwBytesPerSec: number;
  readonly clatMeanUs: number;
}

/** Installs fio from Debian when missing (root only). */
export async function ensureFio(log: (line: string) => void): Promise<string> {
  try {
    return (await execFileP('fio', ['--version'])).stdout.trim();
  } catch {
    log('fio missing: installing it with apt-get');
    await execFileP('apt-get', ['install', '-y', '-qq', '--no-install-recommends', 'fio'], {
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    });
    return (await execFileP('fio', ['--version'])).stdout.trim();
  }
}

/** `sync; echo 3 > drop_caches` as in datapath.md's method, so every job starts cold. */
export async function dropCaches(): Promise<void> {
  await execFileP('sync', []);
  await writeFile('/proc/sys/vm/drop_caches', '3').catch(() => undefined);
}

/** One time-based fio job with libaio, O_DIRECT, QD `iodepth` against `filename`. */
export async function runFio(opts: {
  readonly filename: string;
  readonly pattern: FioPattern;
  readonly runtimeSec: number;
  readonly iodepth?: number;
  readonly sizeBytes?: number;
}): Promise<FioResult> {
  const args = [
    `--name=${opts.pattern.name}`,
    `--filename=${opts.filename}`,
    `--rw=${opts.pattern.rw}`,
    `--bs=${opts.pattern.bs}`,
    '--ioengine=libaio',
    `--iodepth=${opts.iodepth ?? 16}`,
    '--direct=1',
    `--runtime=${opts.runtimeSec}`,
    '--time_based',
    '--group_reporting',
    '--output-format=json',
    ...(opts.sizeBytes ? [`--size=${opts.sizeBytes}`] : []),
  ];
  const { stdout } = await execFileP('fio', args, { maxBuffer: 16 << 20 });
  const json = JSON.parse(stdout.slice(stdout.indexOf('{'))) as {
    jobs: Array<Record<'read' | 'write', { iops: number; bw_bytes: number; clat_ns: { mean: number } }>>;
  };
  const job = json.jobs[0];
  if (!job) throw new Error(`fio printed no job for ${opts.pattern.name}`);
  const d = opts.pattern.rw.includes('read') ? job.read : job.write;
  return { iops: d.iops, bwBytesPerSec: d.bw_bytes, clatMeanUs: d.clat_ns.mean / 1000 };
}

/** Fills `filename` (a file or device) with random data, sequentially, 1 MiB at a time. */
export async function fillWithFio(filename: string, sizeBytes: number): Promise<void> {
  await execFileP(
    'fio',
    [
      '--name=fill',
      `--filename=${filename}`,
      '--rw=write',
      '--bs=1M',
      '--ioengine=libaio',
      '--iodepth=16',
      '--direct=1',
      `--size=${sizeBytes}`,
      '--output-format=json',
    ],
    { maxBuffer: 16 << 20 },
  );
}
