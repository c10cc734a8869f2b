// SPDX-License-Identifier: Apache-2.0
// The VolumeSnapshot controller: executes the steps decided by snapshot-logic.ts, one at a time, re-reading
// the cache (with our own writes in it) between steps, until the snapshot needs nothing more.
//
// Design: see snapshot-logic.ts (binding) and content-logic.ts (crash safety). This controller writes the
// VolumeSnapshot, its source PVC's finalizer and creates/deletes contents; it never calls a node plugin.
import { isAlreadyExists } from '../../common/src/kube-rest.js';
import { ControllerLoop, type ReconcileContext, type ReconcileResult } from './controller-base.js';
import type { Deps } from './deps.js';
import { ControllerError } from './errors.js';
import { keyOf, Resources, splitKey } from './kube/resources.js';
import type { PersistentVolumeClaim, VolumeSnapshot, VolumeSnapshotContent } from './kube/types.js';
import { ANN_BEING_DELETED, FIN_PVC_AS_SOURCE, FIN_PVC_PROVISIONING, Reason, SNAPSHOT_GROUP } from './names.js';
import { nowTime } from './quantity.js';
import {
  decideSnapshotAction,
  expectedContentName,
  isDynamic,
  isInProgress,
  nodeOfPv,
  type SnapshotAction,
  type SnapshotWorld,
} from './snapshot-logic.js';

const MAX_STEPS = 16;

/** The VolumeSnapshot a PVC is restored from, when it names one. */
export function restoreSourceOf(pvc: PersistentVolumeClaim): string | undefined {
  const ref = pvc.spec.dataSourceRef ?? pvc.spec.dataSource;
  if (!ref || ref.kind !== 'VolumeSnapshot' || ref.apiGroup !== SNAPSHOT_GROUP) return undefined;
  if (ref.namespace && ref.namespace !== pvc.metadata.namespace) return undefined;
  return ref.name;
}

export class SnapshotController {
  readonly loop: ControllerLoop;

  constructor(private readonly d: Deps) {
    const s = d.settings;
    this.loop = new ControllerLoop({
      name: 'volumesnapshot',
      kind: 'VolumeSnapshot',
      workers: s.workers,
      retryIntervalStartMs: s.retryIntervalStartMs,
      retryIntervalMaxMs: s.retryIntervalMaxMs,
      log: d.log,
      metrics: d.metrics,
      reconcile: (key, ctx) => this.reconcile(key, ctx),
    });
    const c = d.caches;
    c.snapshots.onChange((vs) => this.loop.enqueue(keyOf(vs.metadata)));
    c.contents.onChange((content) => {
      const ref = content.spec.volumeSnapshotRef;
      if (ref?.name && ref.namespace) this.loop.enqueue(`${ref.namespace}/${ref.name}`);
    });
    c.pvcs.onChange((pvc) => {
      const ns = pvc.metadata.namespace as string;
      const restoreFrom = restoreSourceOf(pvc);
      if (restoreFrom) this.loop.enqueue(`${ns}/${restoreFrom}`);
      for (const vs of c.snapshots.list(ns)) {
        if (vs.spec.source.persistentVolumeClaimName === pvc.metadata.name) this.loop.enqueue(keyOf(vs.metadata));
      }
    });
    c.snapshotClasses.onChange(() => {
      for (const vs of c.snapshots.list())
        if (!vs.status?.boundVolumeSnapshotContentName) this.loop.enqueue(keyOf(vs.metadata));
    });
  }

  enqueueAll(): void {
    for (const vs of this.d.caches.snapshots.list()) this.loop.enqueue(keyOf(vs.metadata));
  }

  world(vs: VolumeSnapshot): SnapshotWorld {
    const c = this.d.caches;
    const ns = vs.metadata.namespace as string;
    const pvcName = vs.spec.source.persistentVolumeClaimName;
    const pvc = pvcName ? c.pvcs.get(pvcName, ns) : undefined;
    const pv = pvc?.spec.volumeName ? c.pvs.get(pvc.spec.volumeName) : undefined;
    const storageClass = pvc?.spec.storageClassName ? c.storageClasses.get(pvc.spec.storageClassName) : undefined;
    const contentName = expectedContentName(vs);
    const content = contentName ? c.contents.get(contentName) : undefined;
    const restoringPvcs = c.pvcs
      .list(ns)
      .filter(
        (p) =>
          restoreSourceOf(p) === vs.metadata.name &&
          !p.spec.volumeName &&
          (!p.metadata.deletionTimestamp || (p.metadata.finalizers?.includes(FIN_PVC_PROVISIONING) ?? false)),
      )
      .map((p) => p.metadata.name);
    const pvcSnapshotsInProgress = pvcName
      ? c.snapshots.list(ns).filter((s) => s.spec.source.persistentVolumeClaimName === pvcName && isInProgress(s))
          .length
      : 0;
    const node = nodeOfPv(pv);
    return {
      driver: this.d.settings.driverName,
      vs,
      classes: c.snapshotClasses.list(),
      pvc,
      pv,
      storageClass,
      content,
      restoringPvcs,
      pvcSnapshotsInProgress,
      sourceNodeReady: node ? this.d.nodes.get(node).ready : false,
    };
  }

  async reconcile(key: string, ctx: ReconcileContext): Promise<ReconcileResult> {
    const { namespace, name } = splitKey(key);
    const log = ctx.log.child({ volumeSnapshot: { name, namespace } });
    for (let step = 0; step < MAX_STEPS; step++) {
      const vs = this.d.caches.snapshots.get(name, namespace);
      if (!vs) return {};
      const w = this.world(vs);
      const action = decideSnapshotAction(w);
      if (step === 0 && action.type !== 'ignore') this.startMetrics(vs);
      const res = await this.apply(vs, action, log);
      if (res !== 'continue') return res;
    }
    return { requeueAfterMs: 0 };
  }

  private startMetrics(vs: VolumeSnapshot): void {
    const uid = vs.metadata.uid as string;
    if (vs.metadata.deletionTimestamp) return;
    const type = isDynamic(vs) ? 'dynamic' : 'pre-provisioned';
    if (!vs.status?.creationTime) this.d.metrics.startOperation(uid, 'CreateSnapshot', type);
    if (vs.status?.readyToUse !== true) this.d.metrics.startOperation(uid, 'CreateSnapshotAndReady', type);
  }

  private async apply(
    vs: VolumeSnapshot,
    action: SnapshotAction,
    log: ReconcileContext['log'],
  ): Promise<ReconcileResult | 'continue'> {
    const { kube, events, metrics } = this.d;
    const R = Resources;
    switch (action.type) {
      case 'ignore':
      case 'done':
        return {};
      case 'fail': {
        await this.setError(vs, action.message);
        events.record(R.VolumeSnapshot, vs, 'Warning', action.reason, action.message);
        throw new ControllerError(action.code, action.message, { reason: action.reason });
      }
      case 'waitForRestores': {
        const msg = `Snapshot is being used to restore PersistentVolumeClaim(s) ${action.pvcs.join(', ')}; deletion waits until they are provisioned`;
        events.record(R.VolumeSnapshot, vs, 'Normal', Reason.SnapshotDeletePending, msg);
        log.info({ pvcs: action.pvcs }, 'Delayed deleting VolumeSnapshot: restore in progress');
        return { requeueAfterMs: 5_000 };
      }
      case 'deleteContent': {
        const c = action.content;
        if (c.metadata.annotations?.[ANN_BEING_DELETED] !== 'yes') {
          await kube.patch<VolumeSnapshotContent>(R.VolumeSnapshotContent, c.metadata, {
            metadata: { annotations: { [ANN_BEING_DELETED]: 'yes' } },
          });
        }
        const deleted = await kube.delete(R.VolumeSnapshotContent, c.metadata, c.metadata.uid);
        metrics.startOperation(
          vs.metadata.uid as string,
          'DeleteSnapshot',
          isDynamic(vs) ? 'dynamic' : 'pre-provisioned',
        );
        log.info({ volumeSnapshotContent: c.metadata.name, deleted }, 'Deleted VolumeSnapshotContent');
        // The informer will show the deletionTimestamp; until then, look again shortly.
        return { requeueAfterMs: 200 };
      }
      case 'removeFinalizers': {
        await kube.setFinalizers(R.VolumeSnapshot, vs, [], action.finalizers);
        metrics.cancelOperations(vs.metadata.uid as string);
        log.info({}, 'Removed VolumeSnapshot finalizers');
        return {};
      }
      case 'addFinalizers': {
        const next = [...(vs.metadata.finalizers ?? []), ...action.finalizers];
        const body: Record<string, unknown> = { metadata: { finalizers: next } };
        if (action.className) body.spec = { volumeSnapshotClassName: action.className };
        await kube.patch<VolumeSnapshot>(R.VolumeSnapshot, vs.metadata, body, { precondition: true });
        if (action.className) log.info({ volumeSnapshotClass: action.className }, 'Set default VolumeSnapshotClass');
        return 'continue';
      }
      case 'addPvcFinalizer':
        await kube.setFinalizers(R.PersistentVolumeClaim, action.pvc, [FIN_PVC_AS_SOURCE]);
        return 'continue';
      case 'removePvcFinalizer': {
        await kube.setFinalizers(R.PersistentVolumeClaim, action.pvc, [], [FIN_PVC_AS_SOURCE]);
        log.info({ PVC: action.pvc.metadata.name }, 'Removed source PVC finalizer');
        return 'continue';
      }
      case 'createContent': {
        try {
          await kube.create(R.VolumeSnapshotContent, action.content);
          log.info({ volumeSnapshotContent: action.content.metadata.name }, 'Created VolumeSnapshotContent');
        } catch (err) {
          if (!isAlreadyExists(err)) {
            const msg = `failed to create VolumeSnapshotContent: ${(err as Error).message}`;
            events.record(R.VolumeSnapshot, vs, 'Warning', Reason.CreateSnapshotContentFailed, msg);
            throw err;
          }
          const live = await kube.get<VolumeSnapshotContent>(R.VolumeSnapshotContent, action.content.metadata.name);
          if (live) this.d.caches.contents.remember(live);
        }
        return 'continue';
      }
      case 'bindContent': {
        const c = action.content;
        await kube.patch<VolumeSnapshotContent>(
          R.VolumeSnapshotContent,
          c.metadata,
          { spec: { volumeSnapshotRef: { uid: vs.metadata.uid, resourceVersion: vs.metadata.resourceVersion } } },
          { precondition: true },
        );
        log.info({ volumeSnapshotContent: c.metadata.name }, 'Bound pre-provisioned VolumeSnapshotContent');
        return 'continue';
      }
      case 'updateStatus': {
        const st = action.status;
        await kube.patch<VolumeSnapshot>(
          R.VolumeSnapshot,
          vs.metadata,
          {
            status: {
              ...st,
              error: st.error ?? null,
              creationTime: st.creationTime ?? null,
              restoreSize: st.restoreSize ?? null,
            },
          },
          { subresource: 'status' },
        );
        const uid = vs.metadata.uid as string;
        if (st.creationTime) metrics.endOperation(uid, 'CreateSnapshot', 'success');
        if (st.readyToUse) metrics.endOperation(uid, 'CreateSnapshotAndReady', 'success');
        for (const e of action.events) events.record(R.VolumeSnapshot, vs, e.type, e.reason, e.message);
        if (st.readyToUse && !vs.status?.readyToUse) {
          log.info(
            { volumeSnapshotContent: st.boundVolumeSnapshotContentName, restoreSize: st.restoreSize },
            'VolumeSnapshot is ready',
          );
        }
        return 'continue';
      }
    }
  }

  /** Records a controller-side error in status.error (only when the message changed). */
  private async setError(vs: VolumeSnapshot, message: string): Promise<void> {
    if (vs.status?.error?.message === message) return;
    const status: Record<string, unknown> = { error: { message, time: nowTime() } };
    if (vs.status?.readyToUse === undefined) status.readyToUse = false;
    await this.d.kube.patch<VolumeSnapshot>(
      Resources.VolumeSnapshot,
      vs.metadata,
      { status },
      { subresource: 'status' },
    );
  }
}
