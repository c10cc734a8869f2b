// SPDX-License-Identifier: Apache-2.0
// A small scheduler for the node's background work: in-place restores, clone-method image copies,
// hydration of RW clones, deferred merges. Pure TypeScript over the BackgroundJob interface; each job keeps
// its own durable progress (the restore record in the volume's journal, a copy cursor in the target volume),
// so after a restart its owner resubmits it and it resumes.
//
// Fairness and priority: one loop runs the jobs round-robin, one step (about `stepBytes`) at a time. A token
// bucket holds the total copy rate at `rateBytesPerSecond`; while `foregroundBusy()` reports foreground I/O
// in flight the loop waits `busyDelayMs` before a step (up to `maxBusyWaits` times in a row, so a constantly
// busy volume still makes progress). Between steps the loop yields to the event loop, so foreground requests
// handled on the same thread interleave.

export interface JobProgress {
  readonly doneBytes: number;
  readonly totalBytes: number;
}

export interface BackgroundJob {
  /** restore | clone | hydrate | merge (the `kind` label of loopsnap_background_job_progress_ratio). */
  readonly kind: string;
  readonly id: string;
  progress(): JobProgress;
  /** Does about `budgetBytes` of work; resolves true once the job is complete (and its result durable). */
  step(budgetBytes: number): Promise<boolean>;
}

export interface JobState extends JobProgress {
  readonly kind: string;
  readonly id: string;
  readonly state: 'queued' | 'running';
}

export interface SchedulerOptions {
  /** Total copy rate of all jobs; 0 or Infinity = unlimited. Default 256 MiB/s. */
  readonly rateBytesPerSecond?: number;
  /** Work per step. Default 4 MiB. */
  readonly stepBytes?: number;
  /** True while foreground I/O is in flight (background steps wait). */
  readonly foregroundBusy?: () => boolean;
  readonly busyDelayMs?: number;
  readonly maxBusyWaits?: number;
  readonly now?: () => number;
  readonly sleep?: (ms: number) => Promise<void>;
  /** Called when a job fails (it is removed; its owner decides whether to resubmit). */
  readonly onError?: (job: BackgroundJob, err: unknown) => void;
}

interface Entry {
  readonly job: BackgroundJob;
  readonly done: Promise<void>;
  readonly resolve: () => void;
  readonly reject: (err: unknown) => void;
  cancelled: boolean;
  started: boolean;
}

export const DEFAULT_RATE_BYTES_PER_SECOND = 256 * 1024 * 1024;
export const DEFAULT_STEP_BYTES = 4 * 1024 * 1024;

export class JobScheduler {
  private readonly entries: Entry[] = [];
  private readonly rate: number;
  private readonly stepBytes: number;
  private readonly now: () => number;
  private readonly sleep: (ms: number) => Promise<void>;
  private tokens: number;
  private last: number;
  private next = 0;
  private loop: Promise<void> | null = null;
  private closed = false;

  constructor(private readonly o: SchedulerOptions = {}) {
    const rate = o.rateBytesPerSecond ?? DEFAULT_RATE_BYTES_PER_SECOND;
    this.rate = rate > 0 ? rate : Number.POSITIVE_INFINITY;
    this.stepBytes = o.stepBytes ?? DEFAULT_STEP_BYTES;
    this.now = o.now ?? (() => performance.now());
    this.sleep = o.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
    this.tokens = this.stepBytes;
    this.last = this.now();
  }

  /** Runs `job` until it completes; a job with the same kind and id already scheduled is not added twice. */
  submit(job: BackgroundJob): Promise<void> {
    if (this.closed) return Promise.reject(new Error('the job scheduler is closed'));
    const existing = this.entries.find((e) => e.job.kind === job.kind && e.job.id === job.id);
    if (existing !== undefined) return existing.done;
    let resolve!: () => void;
    let reject!: (err: unknown) => void;
    const done = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    done.catch(() => undefined);
    this.entries.push({ job, done, resolve, reject, cancelled: false, started: false });
    this.loop ??= this.run().finally(() => {
      this.loop = null;
      if (this.entries.length > 0 && !this.closed) this.loop = this.run();
    });
    return done;
  }

  /** Stops scheduling a job after its current step; resolves once it is out of the loop. */
  async cancel(kind: string, id: string): Promise<void> {
    const e = this.entries.find((x) => x.job.kind === kind && x.job.id === id);
    if (e === undefined) return;
    e.cancelled = true;
    await e.done.catch(() => undefined);
  }

  has(kind: string, id: string): boolean {
    return this.entries.some((e) => e.job.kind === kind && e.job.id === id);
  }

  jobs(): JobState[] {
    return this.entries.map((e) => ({
      kind: e.job.kind,
      id: e.job.id,
      state: e.started ? 'running' : 'queued',
      ...e.job.progress(),
    }));
  }

  /** Stops after the current step; unfinished jobs stay unfinished (their owners resume them later). */
  async close(): Promise<void> {
    this.closed = true;
    for (const e of this.entries) e.cancelled = true;
    await this.loop;
  }

  private async run(): Promise<void> {
    while (this.entries.length > 0) {
      const i = this.next % this.entries.length;
      const e = this.entries[i]!;
      if (e.cancelled) {
        this.entries.splice(i, 1);
        e.reject(new Error(`${e.job.kind} job ${e.job.id} was cancelled`));
        continue;
      }
      await this.pace();
      if (e.cancelled) continue;
      e.started = true;
      const before = e.job.progress().doneBytes;
      let finished: boolean;
      try {
        finished = await e.job.step(this.stepBytes);
      } catch (err) {
        this.entries.splice(this.entries.indexOf(e), 1);
        this.o.onError?.(e.job, err);
        e.reject(err);
        continue;
      }
      this.tokens -= Math.max(0, e.job.progress().doneBytes - before);
      if (finished) {
        this.entries.splice(this.entries.indexOf(e), 1);
        e.resolve();
      } else this.next = this.entries.indexOf(e) + 1;
      await new Promise((r) => setImmediate(r));
    }
  }

  /** Waits for rate tokens and for a pause in foreground I/O. */
  private async pace(): Promise<void> {
    const busy = this.o.foregroundBusy;
    if (busy !== undefined) {
      const max = this.o.maxBusyWaits ?? 50;
      for (let i = 0; i < max && busy(); i++) await this.sleep(this.o.busyDelayMs ?? 2);
    }
    if (this.rate === Number.POSITIVE_INFINITY) return;
    const t = this.now();
    this.tokens = Math.min(this.stepBytes * 2, this.tokens + ((t - this.last) / 1000) * this.rate);
    this.last = t;
    if (this.tokens < this.stepBytes) {
      const waitMs = ((this.stepBytes - this.tokens) / this.rate) * 1000;
      await this.sleep(waitMs);
      const t2 = this.now();
      this.tokens = Math.min(this.stepBytes * 2, this.tokens + ((t2 - this.last) / 1000) * this.rate);
      this.last = t2;
    }
  }
}
