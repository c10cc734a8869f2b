// SPDX-License-Identifier: Apache-2.0
// The reconcile loop shared by every controller: informer handlers only enqueue keys; `workers` workers
// take keys from a de-duplicating, rate-limited queue and call the controller's reconcile(key). The
// contract (controller-runtime's) is level-based:
// - return `{}`: done until the object changes again (or the periodic resync);
// - return `{ requeueAfterMs }`: look again after that delay (polling a background operation);
// - throw: retried with exponential backoff (`retryIntervalStart` doubling up to `retryIntervalMax`);
// - throw TerminalError: logged and counted, not retried;
// - a 409 Conflict (someone wrote the object since our read) or a 404 (it was deleted meanwhile) is retried
//   after a short delay without counting as a failure: the informer will have the newer state by then.
import { randomUUID } from 'node:crypto';
import { isConflict, isNotFound } from '../../common/src/kube-rest.js';
import type { Logger } from '../../common/src/log.js';
import { TerminalError } from './errors.js';
import type { ControllerMetrics } from './metrics.js';
import { type RetryGate, WorkQueue } from './workqueue.js';

export interface ReconcileResult {
  readonly requeueAfterMs?: number;
}

export interface ReconcileContext {
  readonly log: Logger;
  readonly reconcileId: string;
  /** Failures of this key so far (0 on a first attempt). */
  readonly attempt: number;
}

export interface ControllerSpec {
  /** Lower-case controller name, the `controller` label of our metrics. */
  readonly name: string;
  readonly kind: string;
  readonly workers: number;
  readonly retryIntervalStartMs: number;
  readonly retryIntervalMaxMs: number;
  readonly conflictRetryMs?: number;
  readonly log: Logger;
  readonly metrics: ControllerMetrics;
  reconcile(key: string, ctx: ReconcileContext): Promise<ReconcileResult>;
}

export class ControllerLoop {
  readonly queue: WorkQueue;
  private workers: Promise<void>[] = [];
  private readonly log: Logger;
  private idleWaiters: Array<() => void> = [];
  private active = 0;

  constructor(private readonly spec: ControllerSpec) {
    this.log = spec.log.child({ controller: spec.name, controllerKind: spec.kind });
    this.queue = new WorkQueue({
      retryIntervalStartMs: spec.retryIntervalStartMs,
      retryIntervalMaxMs: spec.retryIntervalMaxMs,
      onDepth: (d) => spec.metrics.workqueueDepth.set({ controller: spec.name }, d),
    });
    spec.metrics.workqueueDepth.set({ controller: spec.name }, 0);
  }

  get name(): string {
    return this.spec.name;
  }

  enqueue(key: string): void {
    this.queue.add(key);
  }

  enqueueAfter(key: string, ms: number): void {
    this.queue.addAfter(key, ms);
  }

  start(): void {
    for (let i = 0; i < this.spec.workers; i++) this.workers.push(this.worker());
  }

  async stop(): Promise<void> {
    this.queue.shutDown();
    await Promise.all(this.workers);
    this.workers = [];
  }

  /** True when nothing is queued or being processed (delayed retries do not count). */
  get idle(): boolean {
    return this.queue.depth === 0 && this.active === 0;
  }

  private async worker(): Promise<void> {
    for (;;) {
      const key = await this.queue.get();
      if (key === undefined) return;
      this.active++;
      try {
        await this.processOne(key);
      } finally {
        this.active--;
        this.queue.done(key);
        if (this.idle) for (const w of this.idleWaiters.splice(0)) w();
      }
    }
  }

  private async processOne(key: string): Promise<void> {
    const { name, metrics } = this.spec;
    const reconcileId = randomUUID();
    const log = this.log.child({ key, reconcileID: reconcileId });
    const end = metrics.reconcileSeconds.startTimer({ controller: name });
    try {
      const res = await this.spec.reconcile(key, { log, reconcileId, attempt: this.queue.numRequeues(key) });
      this.queue.forget(key);
      if (res.requeueAfterMs !== undefined) {
        this.queue.addAfter(key, res.requeueAfterMs);
        metrics.reconcileTotal.inc({ controller: name, result: 'requeue_after' });
      } else {
        metrics.reconcileTotal.inc({ controller: name, result: 'success' });
      }
    } catch (err) {
      if (err instanceof TerminalError) {
        this.queue.forget(key);
        metrics.reconcileTotal.inc({ controller: name, result: 'terminal_error' });
        log.error({ err }, 'Reconcile failed permanently');
      } else if (isConflict(err) || isNotFound(err)) {
        // The object changed or went away since the cache showed it: look again at the newer state.
        metrics.reconcileTotal.inc({ controller: name, result: 'error' });
        log.debug({ err: (err as Error).message }, 'Object changed under us; retrying with the newer version');
        this.queue.addAfter(key, this.spec.conflictRetryMs ?? 50);
      } else {
        metrics.reconcileTotal.inc({ controller: name, result: 'error' });
        const delay = this.queue.addRateLimited(key);
        log.warn({ err, retryInMs: delay }, 'Reconcile failed; will retry');
      }
    } finally {
      end();
    }
  }
}

/**
 * Runs a side effect on a node plugin under `gate`: success resets the key's backoff, a failure extends it.
 * Conflicts and not-found answers of the API server are races with other writers, not failures of the call.
 */
export async function gated<T>(gate: RetryGate, key: string, fn: () => Promise<T>): Promise<T> {
  try {
    const r = await fn();
    gate.succeeded(key);
    return r;
  } catch (err) {
    if (!isConflict(err) && !isNotFound(err)) gate.failed(key);
    throw err;
  }
}
