// SPDX-License-Identifier: Apache-2.0
// A de-duplicating, rate-limited work queue with client-go's semantics:
// - a key is in the queue at most once; adding a queued key is a no-op;
// - a key is processed by at most one worker at a time: a key added while it is processed is queued again
//   when the worker calls done();
// - addRateLimited() delays by `start * 2^failures`, capped at `max`; forget() resets the failure count;
// - addAfter() schedules an add; of several pending delays for one key the earliest wins.

export interface WorkQueueOptions {
  readonly retryIntervalStartMs: number;
  readonly retryIntervalMaxMs: number;
  /** Called whenever the depth (queued keys, not counting delayed or in-process ones) changes. */
  readonly onDepth?: (depth: number) => void;
}

export class WorkQueue {
  private readonly queue: string[] = [];
  private head = 0;
  private readonly dirty = new Set<string>();
  private readonly processing = new Set<string>();
  private readonly failures = new Map<string, number>();
  private readonly delayed = new Map<string, { at: number; timer: NodeJS.Timeout }>();
  private readonly waiters: Array<(key: string | undefined) => void> = [];
  private shuttingDown = false;

  constructor(private readonly opts: WorkQueueOptions) {}

  get depth(): number {
    return this.queue.length - this.head;
  }

  get isShuttingDown(): boolean {
    return this.shuttingDown;
  }

  add(key: string): void {
    if (this.shuttingDown || this.dirty.has(key)) return;
    this.dirty.add(key);
    if (this.processing.has(key)) return;
    const waiter = this.waiters.shift();
    if (waiter) {
      this.dirty.delete(key);
      this.processing.add(key);
      waiter(key);
      return;
    }
    this.queue.push(key);
    this.opts.onDepth?.(this.depth);
  }

  addAfter(key: string, delayMs: number): void {
    if (this.shuttingDown) return;
    if (delayMs <= 0) {
      this.add(key);
      return;
    }
    const at = Date.now() + delayMs;
    const pending = this.delayed.get(key);
    if (pending && pending.at <= at) return;
    if (pending) clearTimeout(pending.timer);
    const timer = setTimeout(() => {
      this.delayed.delete(key);
      this.add(key);
    }, delayMs);
    timer.unref();
    this.delayed.set(key, { at, timer });
  }

  /** Delay before the next retry of `key`, counting this failure. */
  addRateLimited(key: string): number {
    const n = this.failures.get(key) ?? 0;
    this.failures.set(key, n + 1);
    const delay = Math.min(this.opts.retryIntervalMaxMs, this.opts.retryIntervalStartMs * 2 ** Math.min(n, 40));
    this.addAfter(key, delay);
    return delay;
  }

  numRequeues(key: string): number {
    return this.failures.get(key) ?? 0;
  }

  forget(key: string): void {
    this.failures.delete(key);
  }

  /** Next key to process; undefined once the queue shuts down. */
  get(): Promise<string | undefined> {
    if (this.depth > 0) {
      const key = this.queue[this.head] as string;
      this.head++;
      if (this.head > 1024 && this.head * 2 > this.queue.length) {
        this.queue.splice(0, this.head);
        this.head = 0;
      }
      this.dirty.delete(key);
      this.processing.add(key);
      this.opts.onDepth?.(this.depth);
      return Promise.resolve(key);
    }
    if (this.shuttingDown) return Promise.resolve(undefined);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  done(key: string): void {
    this.processing.delete(key);
    if (this.dirty.has(key)) {
      this.dirty.delete(key);
      this.add(key);
    }
  }

  shutDown(): void {
    this.shuttingDown = true;
    for (const { timer } of this.delayed.values()) clearTimeout(timer);
    this.delayed.clear();
    for (const w of this.waiters.splice(0)) w(undefined);
  }
}

/**
 * Per-key exponential backoff for side effects on node plugins. The work queue's backoff only delays the
 * retry it schedules; a watch event (often caused by our own status write about the failure) re-queues the
 * key at once. A reconcile consults this gate before calling a plugin again, so a failing CSI call is retried
 * at `start * 2^n` (capped) whatever else wakes the key up, while Kubernetes-side changes still apply at once.
 */
export class RetryGate {
  private readonly state = new Map<string, { n: number; untilMs: number }>();

  constructor(
    private readonly startMs: number,
    private readonly maxMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** Milliseconds to wait before the next attempt for `key` (0: go ahead). */
  waitMs(key: string): number {
    const s = this.state.get(key);
    return s ? Math.max(0, s.untilMs - this.now()) : 0;
  }

  /** Records a failed attempt; returns the delay before the next one. */
  failed(key: string): number {
    const n = this.state.get(key)?.n ?? 0;
    const delay = Math.min(this.maxMs, this.startMs * 2 ** Math.min(n, 40));
    this.state.set(key, { n: n + 1, untilMs: this.now() + delay });
    return delay;
  }

  succeeded(key: string): void {
    this.state.delete(key);
  }

  /** Lets the next attempt go at once (a node came back), keeping the failure count. */
  release(key?: string): void {
    for (const [k, s] of this.state) if (key === undefined || k === key) s.untilMs = 0;
  }
}
