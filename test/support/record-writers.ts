// SPDX-License-Identifier: Apache-2.0
// Record writers (record-writer.mjs) as child processes: start one on a file or block device, follow its
// acknowledged records, stop it, verify every slot against the acknowledged log, and measure the longest
// gap between acknowledgements (the I/O pause a restart caused).
import { type ChildProcess, spawn } from 'node:child_process';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { REPO_ROOT } from './paths.js';

export const RECORD_BYTES = 4096;
export const RECORD_WRITER = join(REPO_ROOT, 'test', 'support', 'record-writer.mjs');

export interface Ack {
  readonly seq: number;
  readonly slot: number;
  readonly ms: number;
}

export class RecordWriter {
  readonly acks: Ack[] = [];
  error: string | undefined;
  private readonly exit: Promise<number | null>;
  private waiters: Array<{ n: number; resolve: () => void; reject: (e: Error) => void }> = [];

  private constructor(
    readonly target: string,
    readonly slots: number,
    private readonly child: ChildProcess,
  ) {
    let buf = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line.startsWith('error ')) this.error = line;
        else {
          const [seq, slot, , ms] = line.split(' ');
          this.acks.push({ seq: Number(seq), slot: Number(slot), ms: Number(ms) });
        }
      }
      this.wake();
    });
    this.exit = new Promise((resolve) =>
      child.once('exit', (code) => {
        this.wake();
        resolve(code);
      }),
    );
  }

  /** Starts a writer over `slots` records of `target` (`createBytes`: make it a file of that size first). */
  static start(target: string, slots: number, createBytes = 0): RecordWriter {
    const args = [RECORD_WRITER, target, String(slots), ...(createBytes > 0 ? ['--create', String(createBytes)] : [])];
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    return new RecordWriter(target, slots, child);
  }

  get acknowledged(): number {
    return this.acks.length;
  }

  /** Resolves once `n` more records than now were acknowledged; rejects when the writer fails first. */
  more(n: number): Promise<void> {
    const target = this.acks.length + n;
    return new Promise((resolve, reject) => {
      this.waiters.push({ n: target, resolve, reject });
      this.wake();
    });
  }

  /** SIGTERM after the record in flight; resolves with the exit code (0 unless a write failed). */
  async stop(): Promise<number | null> {
    this.child.kill('SIGTERM');
    return this.exit;
  }

  /** Kills a writer left running by a failed test. */
  kill(): void {
    if (this.child.exitCode === null) this.child.kill('SIGKILL');
  }

  /** Longest time between two consecutive acknowledgements, ms (after `fromMs`, default the start). */
  longestGapMs(fromMs = 0): number {
    let gap = 0;
    for (let i = 1; i < this.acks.length; i++) {
      if (this.acks[i]!.ms < fromMs) continue;
      gap = Math.max(gap, this.acks[i]!.ms - this.acks[i - 1]!.ms);
    }
    return gap;
  }

  /**
   * Reads every slot back and checks it holds the newest acknowledged record of that slot (or a newer one
   * the writer had in flight). Returns the problems found (empty when every acknowledged write is intact).
   */
  async verify(): Promise<string[]> {
    const newest = new Map<number, number>();
    for (const a of this.acks) newest.set(a.slot, Math.max(a.seq, newest.get(a.slot) ?? -1));
    const problems: string[] = [];
    const fh = await open(this.target, 'r');
    try {
      const buf = Buffer.alloc(RECORD_BYTES);
      for (const [slot, seq] of newest) {
        await fh.read(buf, 0, RECORD_BYTES, slot * RECORD_BYTES);
        const onDisk = buf.subarray(0, 6).toString('latin1') === 'LSREC1' ? Number(buf.readBigUInt64LE(8)) : -1;
        if (onDisk < seq) {
          problems.push(`slot ${slot}: acknowledged record ${seq}, found ${onDisk}`);
          continue;
        }
        if (!buf.equals(recordBytes(onDisk, slot))) problems.push(`slot ${slot}: record ${onDisk} is corrupt`);
      }
    } finally {
      await fh.close();
    }
    return problems;
  }

  private wake(): void {
    const exited = this.child.exitCode !== null || this.child.signalCode !== null;
    this.waiters = this.waiters.filter((w) => {
      if (this.acks.length >= w.n) w.resolve();
      else if (this.error !== undefined || exited) w.reject(new Error(this.error ?? `writer on ${this.target} exited`));
      else return true;
      return false;
    });
  }
}

/** The bytes record-writer.mjs writes for record `seq` in `slot` (keep in step with it). */
export function recordBytes(seq: number, slot: number): Buffer {
  const b = Buffer.alloc(RECORD_BYTES);
  b.write('LSREC1', 0, 'latin1');
  b.writeBigUInt64LE(BigInt(seq), 8);
  b.writeBigUInt64LE(BigInt(slot), 16);
  let x = (seq * 2654435761) >>> 0;
  for (let i = 24; i < RECORD_BYTES; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}
