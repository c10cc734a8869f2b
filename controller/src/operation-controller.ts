// SPDX-License-Identifier: Apache-2.0
// The VolumeRestore / VolumeRefresh controller (one instance per kind): executes operation-logic.ts decisions.
// It calls the node agent (loopsnap.v1.NodeAgent) of the node that holds the PVC's volume, mirrors the node
// operation into status, and for a restore with keepRestorePoint exposes the restore point the node cut as a
// pre-provisioned VolumeSnapshotContent + VolumeSnapshot (deletionPolicy Delete), which the snapshot
// controllers then bind and verify like any imported snapshot.
import type * as grpc from '@grpc/grpc-js';
import { isAlreadyExists } from '../../common/src/kube-rest.js';
import { ControllerLoop, gated, type ReconcileContext, type ReconcileResult } from './controller-base.js';
import type { AgentOperation, NodeAgentClient } from './csi-client/agent-client.js';
import type { Deps } from './deps.js';
import { CsiCallError, NodeUnavailableError } from './errors.js';
import type { Informer } from './kube/informer.js';
import { keyOf, Resources, splitKey } from './kube/resources.js';
import type { VolumeSnapshot, VolumeSnapshotContent } from './kube/types.js';
import { LABEL_MANAGED_BY, SNAPSHOT_API_VERSION } from './names.js';
import {
  decideOperationAction,
  FIN_OPERATION,
  isTerminal,
  kindName,
  type OperationAction,
  type OperationKind,
  type OperationStatus,
  type OperationWorld,
  restorePointContentName,
  restorePointName,
  statusFromOperation,
  type VolumeOperationObject,
  waitingStatus,
} from './operation-logic.js';
import { nowTime } from './quantity.js';
import { nodeOfPv } from './snapshot-logic.js';
import { RetryGate } from './workqueue.js';

const MAX_STEPS = 8;
const POLL_MS = 1_000;

/** Our stable error code of a failed node call (trailer `loopsnap-error-code`), if any. */
function errorCodeOf(err: CsiCallError): string {
  const md = (err.cause as grpc.ServiceError | undefined)?.metadata;
  const v = md?.get('loopsnap-error-code')[0];
  return typeof v === 'string' ? v : '';
}

export interface OperationInformers {
  readonly restores: Informer<VolumeOperationObject>;
  readonly refreshes: Informer<VolumeOperationObject>;
}

export class OperationController {
  readonly loop: ControllerLoop;
  readonly gate: RetryGate;
  private readonly resource;
  private readonly informer: Informer<VolumeOperationObject>;

  constructor(
    private readonly d: Deps,
    readonly kind: OperationKind,
    private readonly informers: OperationInformers,
  ) {
    const s = d.settings;
    this.resource = kind === 'restore' ? Resources.VolumeRestore : Resources.VolumeRefresh;
    this.informer = kind === 'restore' ? informers.restores : informers.refreshes;
    this.gate = new RetryGate(s.retryIntervalStartMs, s.retryIntervalMaxMs);
    this.loop = new ControllerLoop({
      name: kind === 'restore' ? 'volumerestore' : 'volumerefresh',
      kind: this.resource.kind,
      workers: s.workers,
      retryIntervalStartMs: s.retryIntervalStartMs,
      retryIntervalMaxMs: s.retryIntervalMaxMs,
      log: d.log,
      metrics: d.metrics,
      reconcile: (key, ctx) => this.reconcile(key, ctx),
    });
    this.informer.onChange((o, type) => {
      if (type === 'delete') this.gate.succeeded(keyOf(o.metadata));
      else this.loop.enqueue(keyOf(o.metadata));
      // A finished or deleted operation may unblock others of the same PVC.
      for (const other of this.informer.list(o.metadata.namespace)) {
        if (other.spec.pvcName === o.spec.pvcName && other.metadata.uid !== o.metadata.uid) {
          this.loop.enqueue(keyOf(other.metadata));
        }
      }
    });
    const byPvc = (ns: string | undefined, claim: string): void => {
      for (const o of this.informer.list(ns)) if (o.spec.pvcName === claim) this.loop.enqueue(keyOf(o.metadata));
    };
    d.caches.pvcs.onChange((pvc) => byPvc(pvc.metadata.namespace, pvc.metadata.name));
    d.caches.snapshots.onChange((vs) => {
      for (const o of this.informer.list(vs.metadata.namespace)) {
        if (o.spec.volumeSnapshotName === vs.metadata.name && !isTerminal(o)) this.loop.enqueue(keyOf(o.metadata));
      }
    });
    d.metrics.restoreSources.push(() =>
      this.informer
        .list()
        .filter((o) => o.status?.operationId && !isTerminal(o) && o.status.phase !== 'Pending')
        .map((o) => ({ kind, done: o.status?.blocksDone ?? 0, total: o.status?.blocksTotal ?? 0 })),
    );
  }

  enqueueAll(): void {
    for (const o of this.informer.list()) this.loop.enqueue(keyOf(o.metadata));
  }

  world(o: VolumeOperationObject): OperationWorld {
    const c = this.d.caches;
    const ns = o.metadata.namespace as string;
    const pvc = c.pvcs.get(o.spec.pvcName, ns);
    const pv = pvc?.spec.volumeName ? c.pvs.get(pvc.spec.volumeName) : undefined;
    const snapshot = o.spec.volumeSnapshotName ? c.snapshots.get(o.spec.volumeSnapshotName, ns) : undefined;
    const contentName = snapshot?.status?.boundVolumeSnapshotContentName;
    const content = contentName ? c.contents.get(contentName) : undefined;
    const node = o.status?.nodeName ?? nodeOfPv(pv);
    return {
      kind: this.kind,
      driver: this.d.settings.driverName,
      obj: o,
      pvc,
      pv,
      snapshot,
      content,
      nodeReady: node ? this.d.nodes.get(node).ready : false,
      siblings: [
        ...this.informers.restores.list(ns).map((x) => ({ kind: 'restore' as const, obj: x })),
        ...this.informers.refreshes.list(ns).map((x) => ({ kind: 'refresh' as const, obj: x })),
      ],
    };
  }

  async reconcile(key: string, ctx: ReconcileContext): Promise<ReconcileResult> {
    const { namespace, name } = splitKey(key);
    const log = ctx.log.child({ [this.resource.kind]: { name, namespace } });
    for (let step = 0; step < MAX_STEPS; step++) {
      const o = this.informer.get(name, namespace);
      if (!o) return {};
      const w = this.world(o);
      const res = await this.apply(w, decideOperationAction(w), log);
      if (res !== 'continue') return res;
    }
    return { requeueAfterMs: 0 };
  }

  private agent(nodeId: string): NodeAgentClient {
    const info = this.d.nodes.requireReady(nodeId);
    return this.d.csi.get(nodeId, info.endpoint).agent();
  }

  private async patchStatus(o: VolumeOperationObject, status: OperationStatus): Promise<VolumeOperationObject> {
    return this.d.kube.patch<VolumeOperationObject>(this.resource, o.metadata, { status }, { subresource: 'status' });
  }

  private async apply(
    w: OperationWorld,
    action: OperationAction,
    log: ReconcileContext['log'],
  ): Promise<ReconcileResult | 'continue'> {
    const { kube } = this.d;
    const o = w.obj;
    const key = keyOf(o.metadata);
    switch (action.type) {
      case 'done':
        return {};
      case 'addFinalizer':
        await kube.setFinalizers(this.resource, o, [FIN_OPERATION]);
        return 'continue';
      case 'removeFinalizer':
        await kube.setFinalizers(this.resource, o, [], [FIN_OPERATION]);
        log.info({}, `Removed ${this.resource.kind} finalizer`);
        return {};
      case 'setWaiting': {
        const status = waitingStatus(w, action, nowTime());
        if (o.status?.phase !== status.phase || o.status?.message !== status.message) {
          await this.patchStatus(o, status);
          this.d.events.record(this.resource, o, 'Warning', action.reason, action.message);
          log.info({ reason: action.reason, final: action.final }, action.message);
          if (action.final) this.d.metrics.restoresTotal.inc({ kind: this.kind, result: 'failed' });
        }
        return action.final ? {} : { requeueAfterMs: action.retryMs };
      }
      case 'start': {
        const wait = this.gate.waitMs(key);
        if (wait > 0) return { requeueAfterMs: wait };
        const a = action.args;
        let cur = o;
        if (!o.status?.operationId) {
          // Persisted before the call: a controller that crashes after it finds the same operation again.
          cur = await this.patchStatus(o, {
            ...o.status,
            phase: 'Pending',
            operationId: a.operationId,
            nodeName: a.nodeId,
            volumeHandle: a.volumeId,
            ...(o.spec.volumeSnapshotName ? { sourceSnapshot: o.spec.volumeSnapshotName } : {}),
          });
        }
        let op: AgentOperation;
        try {
          op = await gated(this.gate, key, () =>
            this.kind === 'restore'
              ? this.agent(a.nodeId).startRestore({
                  operationId: a.operationId,
                  volumeId: a.volumeId,
                  snapshotId: a.snapshotHandle ?? '',
                  keepRestorePoint: a.keepRestorePoint,
                  restorePointName: a.restorePointName,
                })
              : this.agent(a.nodeId).startRefresh({
                  operationId: a.operationId,
                  volumeId: a.volumeId,
                  ...(a.snapshotHandle ? { snapshotId: a.snapshotHandle } : {}),
                  fromSource: a.fromSource,
                }),
          );
        } catch (err) {
          const refusal = this.refusal(err);
          if (!refusal) throw err;
          if (!refusal.final) this.gate.succeeded(key);
          return this.apply({ ...w, obj: cur }, { type: 'setWaiting', retryMs: 5_000, ...refusal }, log);
        }
        log.info({ operationId: op.operationId, node: a.nodeId, state: op.state }, `Started ${this.kind} on the node`);
        return this.mirror({ ...w, obj: cur }, op, a.nodeId, log);
      }
      case 'poll':
      case 'finishBeforeDelete': {
        const nodeId = o.status?.nodeName ?? '';
        const opId = o.status?.operationId ?? '';
        if (!this.d.nodes.get(nodeId).ready) {
          if (action.type === 'finishBeforeDelete' && !this.d.nodes.all().some((n) => n.nodeId === nodeId)) {
            log.warn({ node: nodeId }, 'Node of a deleted operation is unknown; dropping the finalizer');
            return this.apply(w, { type: 'removeFinalizer' }, log);
          }
          throw new NodeUnavailableError(nodeId, 'its Lease is not current');
        }
        let op: AgentOperation;
        try {
          op = await this.agent(nodeId).getOperation(opId);
        } catch (err) {
          if (!(err instanceof CsiCallError) || err.codeName !== 'NOT_FOUND') throw err;
          if (action.type === 'finishBeforeDelete') return this.apply(w, { type: 'removeFinalizer' }, log);
          const message = `node ${nodeId} has no record of operation ${opId} (its state directory was lost?)`;
          return this.apply(w, { type: 'setWaiting', final: true, reason: 'OperationLost', message, retryMs: 0 }, log);
        }
        const res = await this.mirror(w, op, nodeId, log);
        if (action.type === 'finishBeforeDelete' && (op.state === 'COMPLETED' || op.state === 'FAILED')) {
          await this.agent(nodeId).deleteOperation(opId);
          return this.apply(w, { type: 'removeFinalizer' }, log);
        }
        return res;
      }
    }
  }

  /** A node refusal that belongs in status (final or a wait), or undefined for errors to retry with backoff. */
  private refusal(err: unknown): { final: boolean; reason: string; message: string } | undefined {
    if (!(err instanceof CsiCallError)) return undefined;
    const code = errorCodeOf(err);
    const message = err.message.replace(/^[A-Za-z]+ on node "[^"]*" failed: /, '');
    if (code === 'AGENT_ERR_IN_USE') {
      return { final: false, reason: 'VolumeInUse', message: `${message}; waiting` };
    }
    if (code === 'AGENT_ERR_NOT_READY') return { final: false, reason: 'SnapshotNotReady', message };
    if (err.codeName === 'ABORTED') return { final: false, reason: 'VolumeBusy', message: `${message}; retrying` };
    if (
      ['INVALID_ARGUMENT', 'NOT_FOUND', 'OUT_OF_RANGE', 'FAILED_PRECONDITION', 'ALREADY_EXISTS'].includes(err.codeName)
    ) {
      const reason = code
        ? code
            .replace(/^AGENT_ERR_/, '')
            .toLowerCase()
            .replace(/(^|_)([a-z])/g, (_m, _u, c: string) => c.toUpperCase())
        : 'Rejected';
      return { final: true, reason, message };
    }
    return undefined;
  }

  /** Mirrors the node operation into status (events and metrics on phase changes); polls while it runs. */
  private async mirror(
    w: OperationWorld,
    op: AgentOperation,
    nodeId: string,
    log: ReconcileContext['log'],
  ): Promise<ReconcileResult> {
    const o = w.obj;
    const extra: { restorePointSnapshot?: string; sourceSnapshot?: string } = {};
    if (this.kind === 'restore' && o.spec.keepRestorePoint && op.restorePointSnapshotId) {
      extra.restorePointSnapshot = await this.ensureRestorePoint(w, op, nodeId, log);
    }
    if (this.kind === 'refresh' && o.spec.fromSource && op.sourceSnapshotId) {
      extra.sourceSnapshot = `source:${op.sourceSnapshotId}`;
    }
    const status = statusFromOperation(w, op, nowTime(), extra);
    const prevPhase = o.status?.phase;
    const changed =
      prevPhase !== status.phase ||
      o.status?.progress !== status.progress ||
      o.status?.restorePointSnapshot !== status.restorePointSnapshot ||
      o.status?.sourceSnapshot !== status.sourceSnapshot ||
      (o.status?.conditions?.length ?? 0) !== (status.conditions?.length ?? 0);
    if (changed) await this.patchStatus(o, status);
    const R = this.resource;
    const what = kindName(this.kind);
    if (prevPhase !== status.phase) {
      if (status.phase === 'Restoring' || status.phase === 'Refreshing') {
        this.d.events.record(R, o, 'Normal', `${what}Started`, `copying ${op.blocksTotal} blocks on node ${nodeId}`);
      } else if (status.phase === 'Completed' || status.phase === 'Failed') {
        const result = status.phase === 'Completed' ? 'completed' : 'failed';
        this.d.metrics.restoresTotal.inc({ kind: this.kind, result });
        if (op.startTimeMs > 0 && op.completionTimeMs >= op.startTimeMs) {
          this.d.metrics.restoreSeconds.observe({ kind: this.kind }, (op.completionTimeMs - op.startTimeMs) / 1000);
        }
        this.d.events.record(
          R,
          o,
          result === 'completed' ? 'Normal' : 'Warning',
          result === 'completed' ? `${what}Completed` : `${what}Failed`,
          op.message,
        );
        log.info({ operationId: op.operationId, phase: status.phase, message: op.message }, `${what} finished`);
      }
    }
    return op.state === 'COMPLETED' || op.state === 'FAILED' ? {} : { requeueAfterMs: POLL_MS };
  }

  /** Creates the restore point's VolumeSnapshotContent and VolumeSnapshot (idempotent); returns the name. */
  private async ensureRestorePoint(
    w: OperationWorld,
    op: AgentOperation,
    nodeId: string,
    log: ReconcileContext['log'],
  ): Promise<string> {
    const o = w.obj;
    const ns = o.metadata.namespace as string;
    const name = restorePointName(o);
    const contentName = restorePointContentName(o.metadata.uid ?? '');
    const { kube, caches } = this.d;
    if (!caches.contents.get(contentName)) {
      const content: VolumeSnapshotContent = {
        apiVersion: SNAPSHOT_API_VERSION,
        kind: 'VolumeSnapshotContent',
        metadata: { name: contentName, labels: { [LABEL_MANAGED_BY]: nodeId } },
        spec: {
          deletionPolicy: 'Delete',
          driver: this.d.settings.driverName,
          source: { snapshotHandle: op.restorePointSnapshotId },
          ...(w.pv?.spec.volumeMode ? { sourceVolumeMode: w.pv.spec.volumeMode } : {}),
          volumeSnapshotRef: { name, namespace: ns },
        },
      };
      try {
        await kube.create(Resources.VolumeSnapshotContent, content);
        log.info({ volumeSnapshotContent: contentName }, 'Created the restore point VolumeSnapshotContent');
      } catch (err) {
        if (!isAlreadyExists(err)) throw err;
      }
    }
    if (!caches.snapshots.get(name, ns)) {
      const vs: VolumeSnapshot = {
        apiVersion: SNAPSHOT_API_VERSION,
        kind: 'VolumeSnapshot',
        metadata: {
          name,
          namespace: ns,
          labels: { 'loopsnap.dev/restore-point-of': o.metadata.name.slice(0, 63) },
        },
        spec: { source: { volumeSnapshotContentName: contentName } },
      };
      try {
        await kube.create(Resources.VolumeSnapshot, vs);
        log.info({ volumeSnapshot: name }, 'Created the restore point VolumeSnapshot');
      } catch (err) {
        if (!isAlreadyExists(err)) throw err;
      }
    }
    return name;
  }
}
