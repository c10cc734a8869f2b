// SPDX-License-Identifier: Apache-2.0
// The PV controller: deletes the storage of PVs we provisioned according to their reclaim policy
// (external-provisioner's deletion half). A Released PV with policy Delete gets DeleteVolume on its node,
// then loses our finalizer and is deleted; a PV deleted by a user gets the same treatment for policy Delete
// and is simply released for Retain. A volume the plugin refuses to delete yet (FAILED_PRECONDITION: it
// still has snapshots or clones) keeps its PV, with an event, and is retried, also whenever a
// VolumeSnapshotContent of that volume goes away.
import { ControllerLoop, gated, type ReconcileContext, type ReconcileResult } from './controller-base.js';
import type { Deps } from './deps.js';
import { ControllerError, ErrorCode, errorMessage } from './errors.js';
import { Resources } from './kube/resources.js';
import type { PersistentVolume } from './kube/types.js';
import { ANN_PROVISIONED_BY, ANN_VOLUME_CONDITION, FIN_PV_PROVISIONER, Reason } from './names.js';
import { nodeOfPv } from './snapshot-logic.js';
import { decideVolumeHealth } from './volume-health-logic.js';
import { RetryGate } from './workqueue.js';

export type PvAction =
  | { readonly type: 'ignore' }
  | { readonly type: 'done' }
  | { readonly type: 'deleteVolume'; readonly thenDeleteObject: boolean }
  | { readonly type: 'removeFinalizer' };

/** Pure: what the PV needs. */
export function decidePvAction(pv: PersistentVolume, driver: string): PvAction {
  if (pv.spec.csi?.driver !== driver || pv.metadata.annotations?.[ANN_PROVISIONED_BY] !== driver)
    return { type: 'ignore' };
  const hasFin = pv.metadata.finalizers?.includes(FIN_PV_PROVISIONER) ?? false;
  const policy = pv.spec.persistentVolumeReclaimPolicy ?? 'Delete';
  const phase = pv.status?.phase;
  if (pv.metadata.deletionTimestamp) {
    if (!hasFin) return { type: 'done' };
    if (policy !== 'Delete') return { type: 'removeFinalizer' };
    if (phase === 'Bound') return { type: 'done' };
    return { type: 'deleteVolume', thenDeleteObject: false };
  }
  if (phase === 'Released' && policy === 'Delete') return { type: 'deleteVolume', thenDeleteObject: true };
  return { type: 'done' };
}

export class PvController {
  readonly loop: ControllerLoop;
  /** Backoff of DeleteVolume calls, per PV (see RetryGate). */
  readonly gate: RetryGate;
  /** Last health check per PV name (ms since epoch). */
  private readonly checked = new Map<string, number>();

  constructor(private readonly d: Deps) {
    const s = d.settings;
    this.gate = new RetryGate(s.retryIntervalStartMs, s.retryIntervalMaxMs);
    this.loop = new ControllerLoop({
      name: 'persistentvolume',
      kind: 'PersistentVolume',
      workers: Math.max(1, Math.ceil(s.workers / 2)),
      retryIntervalStartMs: s.retryIntervalStartMs,
      retryIntervalMaxMs: s.retryIntervalMaxMs,
      log: d.log,
      metrics: d.metrics,
      reconcile: (key, ctx) => this.reconcile(key, ctx),
    });
    d.caches.pvs.onChange((pv, type) => {
      if (type === 'delete') {
        this.gate.succeeded(pv.metadata.name);
        this.checked.delete(pv.metadata.name);
      } else this.loop.enqueue(pv.metadata.name);
    });
    d.caches.contents.onChange((content, type) => {
      const handle = content.spec.source.volumeHandle;
      if (type !== 'delete' || !handle) return;
      for (const pv of d.caches.pvs.list())
        if (pv.spec.csi?.volumeHandle === handle) this.loop.enqueue(pv.metadata.name);
    });
  }

  enqueueAll(): void {
    for (const pv of this.d.caches.pvs.list()) this.loop.enqueue(pv.metadata.name);
  }

  async reconcile(name: string, ctx: ReconcileContext): Promise<ReconcileResult> {
    const log = ctx.log.child({ volumeName: name });
    const pv = this.d.caches.pvs.get(name);
    if (!pv) return {};
    const action = decidePvAction(pv, this.d.settings.driverName);
    const { kube, events } = this.d;
    const R = Resources;
    switch (action.type) {
      case 'ignore':
        return {};
      case 'done':
        return pv.status?.phase === 'Bound' && !pv.metadata.deletionTimestamp ? this.checkHealth(pv, log) : {};
      case 'removeFinalizer':
        await kube.setFinalizers(R.PersistentVolume, pv, [], [FIN_PV_PROVISIONER]);
        return {};
      case 'deleteVolume': {
        const handle = pv.spec.csi?.volumeHandle as string;
        const wait = this.gate.waitMs(name);
        if (wait > 0) return { requeueAfterMs: wait };
        try {
          await gated(this.gate, name, async () => {
            const node = nodeOfPv(pv);
            if (!node) {
              throw new ControllerError(ErrorCode.InvalidSpec, `cannot tell which node holds volume "${handle}"`);
            }
            const info = this.d.nodes.requireReady(node);
            await this.d.csi.get(node, info.endpoint).deleteVolume(handle);
            log.info({ volumeHandle: handle, node }, 'Deleted volume');
          });
        } catch (err) {
          events.record(R.PersistentVolume, pv, 'Warning', Reason.VolumeFailedDelete, errorMessage(err));
          throw err;
        }
        const latest = this.d.caches.pvs.get(name) ?? pv;
        if (latest.metadata.finalizers?.includes(FIN_PV_PROVISIONER)) {
          await kube.setFinalizers(R.PersistentVolume, latest, [], [FIN_PV_PROVISIONER]);
        }
        if (action.thenDeleteObject) await kube.delete(R.PersistentVolume, pv.metadata, pv.metadata.uid);
        return {};
      }
    }
  }

  /**
   * Every volumeHealthIntervalMs, asks the volume's node for its VolumeCondition and tells the claim's users
   * when it turns abnormal (a Warning event on the PVC and the PV, the message kept on the PV) and when it is
   * healthy again (a Normal event). A node that is down or does not answer is asked again next interval.
   */
  private async checkHealth(pv: PersistentVolume, log: ReconcileContext['log']): Promise<ReconcileResult> {
    const interval = this.d.settings.volumeHealthIntervalMs;
    if (interval <= 0) return {};
    const now = Date.now();
    const last = this.checked.get(pv.metadata.name);
    if (last !== undefined && now - last < interval) return { requeueAfterMs: interval - (now - last) };
    this.checked.set(pv.metadata.name, now);
    const handle = pv.spec.csi?.volumeHandle;
    const node = nodeOfPv(pv);
    const info = node === undefined ? undefined : this.d.nodes.get(node);
    if (!handle || node === undefined || !info?.ready || !info.endpoint) return { requeueAfterMs: interval };
    let condition: { abnormal: boolean; message: string } | undefined;
    try {
      condition = await this.d.csi.get(node, info.endpoint).volumeCondition(handle);
    } catch (err) {
      log.debug({ err, volumeHandle: handle, node }, 'Volume health check failed; retried later');
      return { requeueAfterMs: interval };
    }
    const reported = pv.metadata.annotations?.[ANN_VOLUME_CONDITION];
    const action = decideVolumeHealth(reported, condition);
    if (action.type === 'none') return { requeueAfterMs: interval };
    const claim = pv.spec.claimRef;
    const claimObj =
      claim?.name && claim.namespace
        ? { metadata: { name: claim.name, namespace: claim.namespace, uid: claim.uid } }
        : undefined;
    const R = Resources;
    if (action.type === 'abnormal') {
      const message = `volume "${handle}" on node ${node} is abnormal: ${action.message}`;
      await this.d.kube.patch(R.PersistentVolume, pv.metadata, {
        metadata: { annotations: { [ANN_VOLUME_CONDITION]: action.message } },
      });
      if (claimObj)
        this.d.events.record(R.PersistentVolumeClaim, claimObj, 'Warning', Reason.VolumeConditionAbnormal, message);
      this.d.events.record(R.PersistentVolume, pv, 'Warning', Reason.VolumeConditionAbnormal, message);
      log.warn({ volumeHandle: handle, node, condition: action.message }, 'Volume condition abnormal');
    } else {
      const message = `volume "${handle}" on node ${node} is healthy again (was: ${action.previous})`;
      await this.d.kube.patch(R.PersistentVolume, pv.metadata, {
        metadata: { annotations: { [ANN_VOLUME_CONDITION]: null } },
      });
      if (claimObj)
        this.d.events.record(R.PersistentVolumeClaim, claimObj, 'Normal', Reason.VolumeConditionNormal, message);
      this.d.events.record(R.PersistentVolume, pv, 'Normal', Reason.VolumeConditionNormal, message);
      log.info({ volumeHandle: handle, node }, 'Volume condition normal again');
    }
    return { requeueAfterMs: interval };
  }
}
