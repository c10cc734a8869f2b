// SPDX-License-Identifier: Apache-2.0
// Writers that keep a volume busy while a test changes it under them (online expansion), and remember what
// they wrote so that the test can verify every byte afterwards. Every write is O_DSYNC: it has gone through
// loop, FUSE and the engine before the next one starts, so writes really are in flight during the change.
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { constants } from 'node:fs';
import { open } from 'node:fs/promises';

export const CHUNK_BYTES = 64 * 1024;

export interface Writer {
  /** Writes completed so far. */
  readonly writes: number;
  /** Resolves once at least `n` writes completed (rejects when the writer failed first). */
  reached(n: number): Promise<void>;
  /** Stops after the write in flight; rejects with the writer's first error. */
  stop(): Promise<void>;
}

class Loop implements Writer {
  writes = 0;
  private stopping = false;
  private failure: unknown;
  private waiters: { n: number; resolve: () => void; reject: (e: unknown) => void }[] = [];
  private readonly done: Promise<void>;

  constructor(step: () => Promise<void>, close: () => Promise<void>) {
    this.done = (async () => {
      try {
        while (!this.stopping) {
          await step();
          this.writes++;
          this.wake();
        }
      } catch (err) {
        this.failure = err;
        this.wake();
      } finally {
        await close();
      }
    })();
  }

  private wake(): void {
    this.waiters = this.waiters.filter((w) => {
      if (this.failure !== undefined) w.reject(this.failure);
      else if (this.writes >= w.n) w.resolve();
      else return true;
      return false;
    });
  }

  reached(n: number): Promise<void> {
    if (this.failure !== undefined) return Promise.reject(this.failure as Error);
    if (this.writes >= n) return Promise.resolve();
    return new Promise((resolve, reject) => this.waiters.push({ n, resolve, reject }));
  }

  async stop(): Promise<void> {
    this.stopping = true;
    await this.done;
    if (this.failure !== undefined) throw this.failure;
  }
}

/**
 * Overwrites random CHUNK_BYTES-aligned chunks of [0, model.length) of a raw device, keeping `model` equal to
 * what the device must hold there.
 */
export async function startBlockWriter(device: string, model: Buffer): Promise<Writer> {
  const fh = await open(device, constants.O_WRONLY | constants.O_DSYNC);
  const chunks = Math.floor(model.length / CHUNK_BYTES);
  return new Loop(
    async () => {
      const offset = randomInt(chunks) * CHUNK_BYTES;
      const data = randomBytes(CHUNK_BYTES);
      await fh.write(data, 0, CHUNK_BYTES, offset);
      data.copy(model, offset);
    },
    () => fh.close(),
  );
}

/** Appends random chunks to a file; `sum()` is the sha256 and length of everything appended. */
export async function startFileWriter(path: string): Promise<Writer & { sum(): { sha256: string; bytes: number } }> {
  const fh = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_APPEND | constants.O_DSYNC);
  const hash = createHash('sha256');
  let bytes = 0;
  const loop = new Loop(
    async () => {
      const data = randomBytes(CHUNK_BYTES);
      await fh.write(data, 0, CHUNK_BYTES);
      hash.update(data);
      bytes += CHUNK_BYTES;
    },
    () => fh.close(),
  );
  return Object.assign(loop, { sum: () => ({ sha256: hash.copy().digest('hex'), bytes }) });
}
