// SPDX-License-Identifier: Apache-2.0
// The data-path worker threads of one FUSE server: start (each with its control port, counters and the
// current views), restart after an unexpected exit, broadcast view changes, wait for INIT and for exit.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MessageChannel, type MessagePort, Worker } from 'node:worker_threads';
import type { Logger } from '../../../common/src/log.js';
import { MountError } from '../mount/errors.js';
import { FUSE_MAX_IO_BYTES } from './fuse-abi.js';
import {
  COUNTER_SLOTS,
  type ViewDescriptor,
  type WorkerControl,
  type WorkerInit,
  type WorkerMessage,
  type WorkerRequest,
} from './view-protocol.js';

export function workerScriptPath(): string {
  const here = fileURLToPath(import.meta.url);
  // Under vitest this module runs from TypeScript source; workers always load the compiled JS.
  const dir = here.endsWith('.ts') ? join(dirname(here), '../../../dist/csi/src/frontend') : dirname(here);
  return join(dir, 'fuse-worker.js');
}

export interface WorkerPoolOptions {
  readonly fuseFd: number;
  readonly log: Logger;
  readonly entryValidSec: number;
  readonly attrValidSec: number;
  readonly parallelDirectWrites: boolean;
  readonly dioProbePath: string | null;
  /** The views a (re)started worker begins with. */
  views(): ViewDescriptor[];
  /** A request handed off by a worker. */
  onRequest(m: WorkerRequest): void;
}

interface Slot {
  worker: Worker;
  port: MessagePort;
  exited: boolean;
}

export class WorkerPool {
  private readonly slots: Slot[] = [];
  /** Per worker slot, kept across worker restarts so counters stay monotonic. */
  readonly counters: Float64Array[] = [];
  private readonly exitWaiters: Array<() => void> = [];
  private initWaiter: (() => void) | undefined;
  private initialized = false;
  private stopping = false;
  private readonly script: string;

  constructor(private readonly opts: WorkerPoolOptions) {
    this.script = workerScriptPath();
    if (!existsSync(this.script)) {
      throw new MountError('DP_ERR_WORKER', `worker script ${this.script} is missing; run npm run build`);
    }
  }

  get size(): number {
    return this.slots.length;
  }

  start(count: number): void {
    for (let i = 0; i < count; i++) this.spawn(i);
  }

  /** Sends a control message to every worker (drained when the worker next needs its view table). */
  broadcast(m: WorkerControl): void {
    for (const s of this.slots) s.port.postMessage(m);
  }

  /** Resolves once some worker answered the kernel's INIT. */
  waitInit(timeoutMs: number): Promise<void> {
    if (this.initialized) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.initWaiter = undefined;
        reject(new MountError('DP_ERR_FUSE_INIT', `no FUSE INIT within ${timeoutMs} ms`));
      }, timeoutMs);
      this.initWaiter = () => {
        clearTimeout(timer);
        this.initWaiter = undefined;
        resolve();
      };
    });
  }

  /** No more restarts from here on. */
  stopRestarting(): void {
    this.stopping = true;
  }

  /** Waits until every worker has exited (they do once the connection is gone); false on timeout. */
  async waitExit(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (this.slots.some((s) => !s.exited)) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.exitWaiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return true;
  }

  async terminate(): Promise<void> {
    for (const s of this.slots) if (!s.exited) await s.worker.terminate();
  }

  private spawn(index: number): void {
    const channel = new MessageChannel();
    this.counters[index] ??= new Float64Array(new SharedArrayBuffer(COUNTER_SLOTS * 8));
    const init: WorkerInit = {
      index,
      fuseFd: this.opts.fuseFd,
      counters: (this.counters[index] as Float64Array).buffer as SharedArrayBuffer,
      maxWrite: FUSE_MAX_IO_BYTES,
      views: this.opts.views(),
      entryValidSec: this.opts.entryValidSec,
      attrValidSec: this.opts.attrValidSec,
      parallelDirectWrites: this.opts.parallelDirectWrites,
      dioProbePath: this.opts.dioProbePath,
    };
    const worker = new Worker(this.script, {
      workerData: { ...init, port: channel.port2 },
      transferList: [channel.port2],
      name: `fuse-worker-${index}`,
    });
    const slot: Slot = { worker, port: channel.port1, exited: false };
    this.slots[index] = slot;
    const log = this.opts.log;
    worker.on('message', (m: WorkerMessage) => this.onMessage(m));
    worker.on('error', (err) => log.error({ err, worker: index }, 'Data-path worker failed'));
    worker.on('exit', (code) => {
      slot.exited = true;
      channel.port1.close();
      for (const w of this.exitWaiters.splice(0)) w();
      if (!this.stopping) {
        log.error({ worker: index, code }, 'Data-path worker exited unexpectedly; restarting it');
        this.spawn(index);
      }
    });
  }

  private onMessage(m: WorkerMessage): void {
    const log = this.opts.log;
    switch (m.t) {
      case 'ready':
        return;
      case 'init':
        if (!this.initialized) {
          this.initialized = true;
          log.info({ minor: m.minor, flags: m.flags, maxWrite: m.maxWrite }, 'Completed FUSE handshake');
          this.initWaiter?.();
        }
        return;
      case 'exit':
        log.debug({ worker: m.worker, reason: m.reason }, 'Data-path worker stopped serving');
        return;
      case 'log':
        log[m.level]({ worker: m.worker, ...m.fields }, m.msg);
        return;
      default:
        this.opts.onRequest(m);
    }
  }
}
