// SPDX-License-Identifier: Apache-2.0
// The PVC controller: provisions PVs for PVCs of our StorageClasses (empty, restore from a VolumeSnapshot,
// clone of a PVC) following provision-logic.ts, and expands bound volumes (resizer.ts: ControllerExpandVolume
// and the PVC status a 1.33 kubelet reads before its NodeExpandVolume).
import * as grpc from '@grpc/grpc-js';
import { isAlreadyExists, isConflict } from '../../common/src/kube-rest.js';
import { ControllerLoop, gated, type ReconcileContext, type ReconcileResult } from './controller-base.js';
import type { Deps } from './deps.js';
import {
  ControllerError,
  CsiCallError,
  ErrorCode,
  errorMessage,
  isAbortedCall,
  NodeUnavailableError,
} from './errors.js';
import { keyOf, Resources, splitKey } from './kube/resources.js';
import type { PersistentVolume, PersistentVolumeClaim, VolumeSnapshotContent } from './kube/types.js';
import { ANN_PROVISIONING_NODE, FIN_PVC_PROVISIONING, LABEL_MANAGED_BY, pvNameFor, Reason } from './names.js';
import {
  buildPv,
  classifySource,
  type DataSource,
  decideProvisionAction,
  type ProvisionAction,
  type ProvisionWorld,
} from './provision-logic.js';
import { restoreSourceOf } from './snapshot-controller.js';
import { Resizer } from './resizer.js';
import { RetryGate } from './workqueue.js';

const MAX_STEPS = 8;

export class Provisioner {
  readonly loop: ControllerLoop;
  /** Backoff of calls to node plugins, per PVC (see RetryGate). */
  readonly gate: RetryGate;
  private readonly resizer: Resizer;

  constructor(private readonly d: Deps) {
    const s = d.settings;
    this.gate = new RetryGate(s.retryIntervalStartMs, s.retryIntervalMaxMs);
    this.resizer = new Resizer(d);
    this.loop = new ControllerLoop({
      name: 'persistentvolumeclaim',
      kind: 'PersistentVolumeClaim',
      workers: s.workers,
      retryIntervalStartMs: s.retryIntervalStartMs,
      retryIntervalMaxMs: s.retryIntervalMaxMs,
      log: d.log,
      metrics: d.metrics,
      reconcile: (key, ctx) => this.reconcile(key, ctx),
    });
    const c = d.caches;
    c.pvcs.onChange((pvc, type) => {
      if (type === 'delete') this.gate.succeeded(keyOf(pvc.metadata));
      else this.loop.enqueue(keyOf(pvc.metadata));
      // Clones wait for their source PVC to be bound.
      for (const other of c.pvcs.list(pvc.metadata.namespace)) {
        const ref = other.spec.dataSourceRef ?? other.spec.dataSource;
        if (!other.spec.volumeName && ref?.kind === 'PersistentVolumeClaim' && ref.name === pvc.metadata.name) {
          this.loop.enqueue(keyOf(other.metadata));
        }
      }
    });
    c.pvs.onChange((pv) => {
      const ref = pv.spec.claimRef;
      if (ref?.name && ref.namespace) this.loop.enqueue(`${ref.namespace}/${ref.name}`);
    });
    c.snapshots.onChange((vs) => {
      for (const pvc of c.pvcs.list(vs.metadata.namespace)) {
        if (!pvc.spec.volumeName && restoreSourceOf(pvc) === vs.metadata.name) this.loop.enqueue(keyOf(pvc.metadata));
      }
    });
    c.storageClasses.onChange(() => this.enqueuePending());
  }

  enqueueAll(): void {
    for (const pvc of this.d.caches.pvcs.list()) this.loop.enqueue(keyOf(pvc.metadata));
  }

  enqueuePending(): void {
    for (const pvc of this.d.caches.pvcs.list()) if (!pvc.spec.volumeName) this.loop.enqueue(keyOf(pvc.metadata));
  }

  private resolveSource(pvc: PersistentVolumeClaim): DataSource {
    const c = this.d.caches;
    const ns = pvc.metadata.namespace as string;
    const src = classifySource(pvc);
    if (src.kind === 'none' || src.kind === 'unsupported') return src;
    if (src.kind === 'snapshot') {
      const snapshot = c.snapshots.get(src.name, ns);
      const bound = snapshot?.status?.boundVolumeSnapshotContentName;
      const content = bound ? c.contents.get(bound) : undefined;
      const label = content?.metadata.labels?.[LABEL_MANAGED_BY];
      return { kind: 'snapshot', name: src.name, snapshot, content, nodes: label ? [label] : [] };
    }
    const spvc = c.pvcs.get(src.name, ns);
    const pv = spvc?.spec.volumeName ? c.pvs.get(spvc.spec.volumeName) : undefined;
    return { kind: 'pvc', name: src.name, pvc: spvc, pv };
  }

  /** Ready nodes other than the managed-by node that also list a `clone`-method snapshot image. */
  private async cloneImageNodes(content: VolumeSnapshotContent, known: readonly string[]): Promise<string[]> {
    const cls = content.spec.volumeSnapshotClassName
      ? this.d.caches.snapshotClasses.get(content.spec.volumeSnapshotClassName)
      : undefined;
    const handle = content.status?.snapshotHandle;
    if (cls?.parameters?.method !== 'clone' || !handle) return [];
    const out: string[] = [];
    for (const n of this.d.nodes.readyNodes()) {
      if (known.includes(n.nodeId) || !n.endpoint) continue;
      const found = await this.d.csi
        .get(n.nodeId, n.endpoint)
        .listSnapshots({ snapshotId: handle })
        .catch(() => []);
      if (found.some((s) => s.snapshotId === handle)) out.push(n.nodeId);
    }
    return out;
  }

  async world(pvc: PersistentVolumeClaim, withCloneNodes: boolean): Promise<ProvisionWorld> {
    const c = this.d.caches;
    const storageClass = pvc.spec.storageClassName ? c.storageClasses.get(pvc.spec.storageClassName) : undefined;
    let source = this.resolveSource(pvc);
    if (withCloneNodes && source.kind === 'snapshot' && source.content) {
      const extra = await this.cloneImageNodes(source.content, source.nodes);
      if (extra.length > 0) source = { ...source, nodes: [...source.nodes, ...extra] };
    }
    return {
      driver: this.d.settings.driverName,
      defaultFsType: this.d.settings.defaultFsType,
      pvc,
      storageClass,
      pv: pvc.metadata.uid ? c.pvs.get(pvNameFor(pvc.metadata.uid)) : undefined,
      source,
      nodes: this.d.nodes.all(),
    };
  }

  async reconcile(key: string, ctx: ReconcileContext): Promise<ReconcileResult> {
    const { namespace, name } = splitKey(key);
    const log = ctx.log.child({ PVC: { name, namespace } });
    for (let step = 0; step < MAX_STEPS; step++) {
      const pvc = this.d.caches.pvcs.get(name, namespace);
      if (!pvc) return {};
      const needCloneNodes = !pvc.spec.volumeName && !pvc.metadata.annotations?.[ANN_PROVISIONING_NODE];
      const w = await this.world(pvc, needCloneNodes);
      const action = decideProvisionAction(w);
      if (action.type === 'done' && pvc.spec.volumeName) {
        const wait = this.gate.waitMs(key);
        if (wait > 0) return { requeueAfterMs: wait };
        return gated(this.gate, key, () => this.resizer.reconcile(pvc, log));
      }
      if (action.type === 'provision' || action.type === 'cleanupAbandoned') {
        const wait = this.gate.waitMs(key);
        if (wait > 0) return { requeueAfterMs: wait };
        const res = await gated(this.gate, key, () => this.apply(w, action, log));
        if (res !== 'continue') return res;
        continue;
      }
      const res = await this.apply(w, action, log);
      if (res !== 'continue') return res;
    }
    return { requeueAfterMs: 0 };
  }

  private client(nodeId: string) {
    const info = this.d.nodes.requireReady(nodeId);
    return this.d.csi.get(nodeId, info.endpoint);
  }

  private async apply(
    w: ProvisionWorld,
    action: ProvisionAction,
    log: ReconcileContext['log'],
  ): Promise<ReconcileResult | 'continue'> {
    const { kube, events } = this.d;
    const pvc = w.pvc;
    const R = Resources;
    switch (action.type) {
      case 'ignore':
      case 'done':
        return {};
      case 'fail':
        events.record(R.PersistentVolumeClaim, pvc, 'Warning', Reason.ProvisioningFailed, action.message);
        throw new ControllerError(action.code, action.message, { reason: Reason.ProvisioningFailed });
      case 'chooseNode': {
        const finalizers = [...(pvc.metadata.finalizers ?? []), FIN_PVC_PROVISIONING];
        await kube.patch(
          R.PersistentVolumeClaim,
          pvc.metadata,
          { metadata: { annotations: { [ANN_PROVISIONING_NODE]: action.node }, finalizers } },
          { precondition: true },
        );
        events.record(
          R.PersistentVolumeClaim,
          pvc,
          'Normal',
          Reason.Provisioning,
          `External provisioner is provisioning volume for claim "${pvc.metadata.namespace}/${pvc.metadata.name}" on node "${action.node}"`,
        );
        log.info({ node: action.node }, 'Chose node for PVC');
        return 'continue';
      }
      case 'provision':
        return this.provision(w, action, log);
      case 'releaseFinalizer':
        await kube.setFinalizers(R.PersistentVolumeClaim, pvc, [], [FIN_PVC_PROVISIONING]);
        return 'continue';
      case 'cleanupAbandoned': {
        try {
          const client = this.client(action.node);
          const vol = await client.createVolume(action.request);
          await client.deleteVolume(vol.volumeId);
          log.info(
            { volumeHandle: vol.volumeId, node: action.node },
            'Deleted volume of a PVC deleted during provisioning',
          );
        } catch (err) {
          if (isConflict(err)) throw err;
          if (!(err instanceof CsiCallError && err.grpcCode === grpc.status.NOT_FOUND)) {
            events.record(
              R.PersistentVolumeClaim,
              pvc,
              'Warning',
              Reason.ProvisioningFailed,
              `Failed to clean up: ${errorMessage(err)}`,
            );
            throw err;
          }
        }
        await kube.setFinalizers(R.PersistentVolumeClaim, pvc, [], [FIN_PVC_PROVISIONING]);
        return {};
      }
    }
  }

  private async provision(
    w: ProvisionWorld,
    action: Extract<ProvisionAction, { type: 'provision' }>,
    log: ReconcileContext['log'],
  ): Promise<ReconcileResult | 'continue'> {
    const { kube, events } = this.d;
    const pvc = w.pvc;
    try {
      const vol = await this.client(action.node).createVolume(action.request);
      const pv = buildPv(w, action.node, vol, action.fsType);
      try {
        await kube.create(Resources.PersistentVolume, pv);
      } catch (err) {
        if (!isAlreadyExists(err)) throw err;
        const live = await kube.get<PersistentVolume>(Resources.PersistentVolume, pv.metadata.name);
        if (live && live.spec.claimRef?.uid !== pvc.metadata.uid) {
          throw new ControllerError(
            ErrorCode.InvalidSpec,
            `PersistentVolume "${pv.metadata.name}" exists and belongs to another claim`,
          );
        }
        if (live) this.d.caches.pvs.remember(live);
      }
      events.record(
        Resources.PersistentVolumeClaim,
        pvc,
        'Normal',
        Reason.ProvisioningSucceeded,
        `Successfully provisioned volume ${pv.metadata.name} on node "${action.node}"`,
      );
      log.info(
        { volumeName: pv.metadata.name, volumeHandle: vol.volumeId, node: action.node },
        'Provisioned PersistentVolume',
      );
      return 'continue';
    } catch (err) {
      // A conflict is retried by the work queue with fresh objects: nothing failed that the user should read.
      if (isAbortedCall(err) || isConflict(err)) throw err;
      const message = `failed to provision volume with StorageClass "${pvc.spec.storageClassName ?? ''}": ${errorMessage(err)}`;
      events.record(Resources.PersistentVolumeClaim, pvc, 'Warning', Reason.ProvisioningFailed, message);
      // Out of space on that node: nothing was created there, so the next attempt may pick another node
      // (unless the scheduler or the data source fixed the node).
      if (
        err instanceof CsiCallError &&
        err.grpcCode === grpc.status.RESOURCE_EXHAUSTED &&
        w.source.kind === 'none' &&
        !pvc.metadata.annotations?.['volume.kubernetes.io/selected-node']
      ) {
        await kube.patch(Resources.PersistentVolumeClaim, pvc.metadata, {
          metadata: {
            annotations: { [ANN_PROVISIONING_NODE]: null },
            finalizers: (pvc.metadata.finalizers ?? []).filter((f) => f !== FIN_PVC_PROVISIONING),
          },
        });
      }
      if (err instanceof NodeUnavailableError)
        log.info({ node: action.node }, 'Waiting for node plugin to provision PVC');
      throw err;
    }
  }
}
