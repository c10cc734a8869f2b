// SPDX-License-Identifier: Apache-2.0
// Controller metrics, registered on an injected prom-client Registry.
// `snapshot_controller_operation_total_seconds` keeps upstream snapshot-controller's name, labels and buckets
// so existing dashboards work; the rest follow our `loopsnap_` conventions (no object names in labels).
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

/** external-snapshotter's buckets (seconds). */
export const OPERATION_BUCKETS_SECONDS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60, 120, 300, 600];

export type OperationName = 'CreateSnapshot' | 'CreateSnapshotAndReady' | 'DeleteSnapshot';
export type OperationStatus = 'success' | 'cancel' | 'unknown';
export type SnapshotType = 'dynamic' | 'pre-provisioned';
export type ReconcileResultLabel = 'success' | 'error' | 'requeue_after' | 'terminal_error';

export class ControllerMetrics {
  /** Duration of snapshot operations, upstream semantics: CreateSnapshot ends when status.creationTime is set,
   * CreateSnapshotAndReady when readyToUse becomes true, DeleteSnapshot when the content's finalizer goes. */
  readonly operationSeconds: Histogram<'driver_name' | 'operation_name' | 'operation_status' | 'snapshot_type'>;
  /** Reconciles per controller and result. */
  readonly reconcileTotal: Counter<'controller' | 'result'>;
  /** Time spent in one reconcile, per controller. */
  readonly reconcileSeconds: Histogram<'controller'>;
  /** Keys waiting in each controller's work queue. */
  readonly workqueueDepth: Gauge<'controller'>;
  /** Node plugins whose registry Lease is current. */
  readonly nodesReady: Gauge;
  /** 1 while this replica holds the leader Lease. */
  readonly isLeader: Gauge;
  /** CSI calls to node plugins per method and gRPC code. */
  readonly csiCallsTotal: Counter<'method' | 'code'>;

  /** Finished in-place restores and refreshes, by kind (restore, refresh) and result (completed, failed). */
  readonly restoresTotal: Counter<'kind' | 'result'>;
  /** Time from the node starting an in-place restore or refresh to its end, by kind. */
  readonly restoreSeconds: Histogram<'kind'>;
  /** Restores and refreshes under way and their copy progress (blocks), summed by kind; read at scrape. */
  readonly restoreSources: Array<() => Array<{ kind: string; done: number; total: number }>> = [];

  private readonly started = new Map<string, { op: OperationName; type: SnapshotType; startMs: number }>();

  constructor(
    registry: Registry,
    private readonly driverName: string,
  ) {
    this.operationSeconds = new Histogram({
      name: 'snapshot_controller_operation_total_seconds',
      help: 'Total number of seconds spent by the controller on an operation',
      labelNames: ['driver_name', 'operation_name', 'operation_status', 'snapshot_type'],
      buckets: OPERATION_BUCKETS_SECONDS,
      registers: [registry],
    });
    this.reconcileTotal = new Counter({
      name: 'loopsnap_reconcile_total',
      help: 'Reconciles per controller and result (success, error, requeue_after, terminal_error)',
      labelNames: ['controller', 'result'],
      registers: [registry],
    });
    this.reconcileSeconds = new Histogram({
      name: 'loopsnap_reconcile_duration_seconds',
      help: 'Duration of one reconcile in seconds, per controller',
      labelNames: ['controller'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers: [registry],
    });
    this.workqueueDepth = new Gauge({
      name: 'loopsnap_workqueue_depth',
      help: 'Keys waiting in the work queue, per controller',
      labelNames: ['controller'],
      registers: [registry],
    });
    this.nodesReady = new Gauge({
      name: 'loopsnap_nodes_ready',
      help: 'Node plugins whose registry Lease is current',
      registers: [registry],
    });
    this.isLeader = new Gauge({
      name: 'loopsnap_controller_is_leader',
      help: '1 while this controller replica holds the leader election Lease',
      registers: [registry],
    });
    this.csiCallsTotal = new Counter({
      name: 'loopsnap_controller_csi_calls_total',
      help: 'CSI calls from the controller to node plugins, per method and gRPC status code',
      labelNames: ['method', 'code'],
      registers: [registry],
    });
    const r = this.registerRestoreMetrics(registry);
    this.restoresTotal = r.total;
    this.restoreSeconds = r.seconds;
  }

  private registerRestoreMetrics(registry: Registry): {
    total: Counter<'kind' | 'result'>;
    seconds: Histogram<'kind'>;
  } {
    const sum = (pick: (x: { done: number; total: number }) => number) =>
      function (this: Gauge<'kind'>): void {
        this.reset();
        const by = new Map<string, number>();
        for (const src of restoreSources) for (const x of src()) by.set(x.kind, (by.get(x.kind) ?? 0) + pick(x));
        for (const [kind, v] of by) this.set({ kind }, v);
      };
    const restoreSources = this.restoreSources;
    new Gauge({
      name: 'loopsnap_restores_in_progress',
      help: 'In-place restores and refreshes started and not finished, by kind',
      labelNames: ['kind'],
      registers: [registry],
      collect: sum(() => 1),
    });
    new Gauge({
      name: 'loopsnap_restore_blocks_done',
      help: 'Blocks copied so far by the in-place restores and refreshes under way, by kind',
      labelNames: ['kind'],
      registers: [registry],
      collect: sum((x) => x.done),
    });
    new Gauge({
      name: 'loopsnap_restore_blocks_total',
      help: 'Blocks to copy in all by the in-place restores and refreshes under way, by kind',
      labelNames: ['kind'],
      registers: [registry],
      collect: sum((x) => x.total),
    });
    return {
      total: new Counter({
        name: 'loopsnap_restores_total',
        help: 'Finished in-place restores and refreshes, by kind (restore, refresh) and result (completed, failed)',
        labelNames: ['kind', 'result'],
        registers: [registry],
      }),
      seconds: new Histogram({
        name: 'loopsnap_restore_duration_seconds',
        help: 'Duration of in-place restores and refreshes on the node, from start to completion, by kind',
        labelNames: ['kind'],
        buckets: [0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200],
        registers: [registry],
      }),
    };
  }

  /** Starts timing an operation of one object (idempotent: the first start wins). */
  startOperation(objectKey: string, op: OperationName, type: SnapshotType, nowMs = Date.now()): void {
    const key = `${op}/${objectKey}`;
    if (!this.started.has(key)) this.started.set(key, { op, type, startMs: nowMs });
  }

  /** Ends an operation started earlier; a no-op when none was started by this replica. */
  endOperation(objectKey: string, op: OperationName, status: OperationStatus, nowMs = Date.now()): void {
    const key = `${op}/${objectKey}`;
    const s = this.started.get(key);
    if (!s) return;
    this.started.delete(key);
    this.operationSeconds.observe(
      { driver_name: this.driverName, operation_name: s.op, operation_status: status, snapshot_type: s.type },
      (nowMs - s.startMs) / 1000,
    );
  }

  /** Drops every pending operation of an object (it went away); reports them as `cancel`. */
  cancelOperations(objectKey: string): void {
    for (const op of ['CreateSnapshot', 'CreateSnapshotAndReady'] as const) this.endOperation(objectKey, op, 'cancel');
  }
}
