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
