// SPDX-License-Identifier: Apache-2.0
// The VolumeSnapshotContent controller: executes content-logic.ts decisions. It is the only part of the
// controller that calls CreateSnapshot / DeleteSnapshot / ListSnapshots, always on the node plugin that
// holds the snapshot: the content's `snapshot.storage.kubernetes.io/managed-by` node, else the node of the
// PV with the content's volume handle, else (pre-provisioned handles) whichever ready node lists it.
import { ControllerLoop, gated, type ReconcileContext, type ReconcileResult } from './controller-base.js';
import {
  boundSnapshotGone,
  type ContentAction,
  type ContentWorld,
  decideContentAction,
  isBeingCreated,
} from './content-logic.js';
import type { CsiNodeClient, CsiSnapshot } from './csi-client/node-client.js';
import type { Deps } from './deps.js';
import {
  ControllerError,
  CsiCallError,
  ErrorCode,
  errorMessage,
  isAbortedCall,
  isCsiFinalError,
  NodeUnavailableError,
} from './errors.js';
import { Resources } from './kube/resources.js';
import type { VolumeSnapshot, VolumeSnapshotContent } from './kube/types.js';
import {
  ANN_BEING_CREATED,
  ANN_SNAPSHOT_INVALID,
  csiSnapshotNameFor,
  FIN_CONTENT_BOUND,
  LABEL_MANAGED_BY,
  Reason,
  RESERVED_PARAMETER_PREFIX,
} from './names.js';
import { nowTime } from './quantity.js';
import { nodeOfPv } from './snapshot-logic.js';
import { RetryGate } from './workqueue.js';

const MAX_STEPS = 12;
const MAX_POLL_MS = 10_000;

export function driverParameters(params: Record<string, string> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(params ?? {})) if (!k.startsWith(RESERVED_PARAMETER_PREFIX)) out[k] = v;
  return out;
}

export class ContentController {
  readonly loop: ControllerLoop;
  /** Backoff of calls to node plugins, per content (see RetryGate). */
  readonly gate: RetryGate;
  private readonly polls = new Map<string, number>();
  /** Last health check of a ready content (ms since the epoch), by content name. */
  private readonly checked = new Map<string, number>();

  constructor(private readonly d: Deps) {
    const s = d.settings;
    this.gate = new RetryGate(s.retryIntervalStartMs, s.retryIntervalMaxMs);
    this.loop = new ControllerLoop({
      name: 'volumesnapshotcontent',
      kind: 'VolumeSnapshotContent',
      workers: s.workers,
      retryIntervalStartMs: s.retryIntervalStartMs,
      retryIntervalMaxMs: s.retryIntervalMaxMs,
      log: d.log,
      metrics: d.metrics,
      reconcile: (key, ctx) => this.reconcile(key, ctx),
    });
    d.caches.contents.onChange((c, type) => {
      if (type === 'delete') {
        this.polls.delete(c.metadata.name);
        this.checked.delete(c.metadata.name);
        this.gate.succeeded(c.metadata.name);
      } else this.loop.enqueue(c.metadata.name);
    });
    d.caches.snapshots.onChange((vs) => {
      const name = vs.status?.boundVolumeSnapshotContentName ?? vs.spec.source.volumeSnapshotContentName;
      if (name) this.loop.enqueue(name);
    });
    // A volume going away (a restored or cloned volume deleted) may unpin snapshots the plugin refused to
    // delete: retry deleting contents at once instead of waiting out their backoff.
    d.caches.pvs.onChange((_pv, type) => {
      if (type !== 'delete') return;
      for (const c of d.caches.contents.list()) {
        if (!c.metadata.deletionTimestamp) continue;
        this.gate.release(c.metadata.name);
        this.loop.enqueue(c.metadata.name);
      }
    });
  }

  enqueueAll(): void {
    for (const c of this.d.caches.contents.list()) this.loop.enqueue(c.metadata.name);
  }

  world(content: VolumeSnapshotContent): ContentWorld {
    const c = this.d.caches;
    const ref = content.spec.volumeSnapshotRef;
    const snapshot = ref?.name && ref.namespace ? c.snapshots.get(ref.name, ref.namespace) : undefined;
    const className = content.spec.volumeSnapshotClassName;
    const cls = className ? c.snapshotClasses.get(className) : undefined;
    return { driver: this.d.settings.driverName, content, snapshot, cls };
  }

  async reconcile(name: string, ctx: ReconcileContext): Promise<ReconcileResult> {
    const log = ctx.log.child({ volumeSnapshotContent: name });
    for (let step = 0; step < MAX_STEPS; step++) {
      const content = this.d.caches.contents.get(name);
      if (!content) return {};
      const w = this.world(content);
      const action = decideContentAction(w);
      const res = await this.apply(w, action, log);
      if (res !== 'continue') return res;
    }
    return { requeueAfterMs: 0 };
  }

  private async apply(
    w: ContentWorld,
    action: ContentAction,
    log: ReconcileContext['log'],
  ): Promise<ReconcileResult | 'continue'> {
    const { kube } = this.d;
    const c = w.content;
    const R = Resources;
    switch (action.type) {
      case 'ignore':
      case 'done':
      case 'waitForSnapshot':
        return {};
      case 'watchHealth':
        return this.watchHealth(w, action.snapshotHandle, log);
      case 'addFinalizer':
        await kube.setFinalizers(R.VolumeSnapshotContent, c, [FIN_CONTENT_BOUND]);
        return 'continue';
      case 'removeFinalizer':
        await kube.setFinalizers(R.VolumeSnapshotContent, c, [], [FIN_CONTENT_BOUND]);
        if (c.spec.volumeSnapshotRef.uid)
          this.d.metrics.endOperation(c.spec.volumeSnapshotRef.uid, 'DeleteSnapshot', 'success');
        log.info({}, 'Removed VolumeSnapshotContent finalizer');
        return {};
      case 'deleteObject': {
        // The cache may lag behind a just-created snapshot: confirm with the API server first.
        const ref = c.spec.volumeSnapshotRef;
        const live = await kube.get<VolumeSnapshot>(R.VolumeSnapshot, ref.name as string, ref.namespace);
        if (live) this.d.caches.snapshots.remember(live);
        if (!boundSnapshotGone({ ...w, snapshot: live })) return 'continue';
        await kube.delete(R.VolumeSnapshotContent, c.metadata, c.metadata.uid);
        log.info(
          { volumeSnapshot: { name: ref.name, namespace: ref.namespace } },
          'Deleted VolumeSnapshotContent of a deleted VolumeSnapshot',
        );
        return { requeueAfterMs: 200 };
      }
      case 'setBeingCreated': {
        const wait = this.gate.waitMs(c.metadata.name);
        if (wait > 0) return { requeueAfterMs: wait };
        await kube.patch(R.VolumeSnapshotContent, c.metadata, {
          metadata: { annotations: { [ANN_BEING_CREATED]: 'yes' } },
        });
        return 'continue';
      }
      case 'createSnapshot':
      case 'importSnapshot':
      case 'deleteSnapshot': {
        const wait = this.gate.waitMs(c.metadata.name);
        if (wait > 0) return { requeueAfterMs: wait };
        return gated(this.gate, c.metadata.name, () =>
          action.type === 'createSnapshot'
            ? this.createSnapshot(w, log)
            : action.type === 'importSnapshot'
              ? this.importSnapshot(w, log)
              : this.deleteSnapshot(w, action.snapshotHandle, log),
        );
      }
    }
  }

  /**
   * A ready snapshot stays ready unless the engine invalidates it (its save pool filled, EC-5): ask its node
   * every snapshotHealthIntervalMs; once the node reports it not ready, mark the content (annotation,
   * readyToUse false, status.error) and say so in events on the content and its VolumeSnapshot. The snapshot
   * controller carries readyToUse and the error to the VolumeSnapshot. Node trouble is reported elsewhere.
   */
  private async watchHealth(
    w: ContentWorld,
    handle: string,
    log: ReconcileContext['log'],
  ): Promise<ReconcileResult | 'continue'> {
    const c = w.content;
    const interval = this.d.settings.snapshotHealthIntervalMs;
    if (interval <= 0) return {};
    const now = Date.now();
    const last = this.checked.get(c.metadata.name);
    if (last === undefined) {
      // Just became ready (or the controller just started): the first check comes one interval later.
      this.checked.set(c.metadata.name, now);
      return { requeueAfterMs: interval };
    }
    if (now - last < interval) return { requeueAfterMs: interval - (now - last) };
    this.checked.set(c.metadata.name, now);
    const nodeId = c.metadata.labels?.[LABEL_MANAGED_BY];
    const info = nodeId === undefined ? undefined : this.d.nodes.get(nodeId);
    if (nodeId === undefined || !info?.ready || !info.endpoint) return { requeueAfterMs: interval };
    let found: CsiSnapshot | undefined;
    try {
      found = (await this.d.csi.get(nodeId, info.endpoint).listSnapshots({ snapshotId: handle })).find(
        (s) => s.snapshotId === handle,
      );
    } catch (err) {
      log.debug({ err, snapshotHandle: handle, node: nodeId }, 'Snapshot health check failed; retried later');
      return { requeueAfterMs: interval };
    }
    if (found?.readyToUse === true) return { requeueAfterMs: interval };
    const message = found
      ? `snapshot "${handle}" on node ${nodeId} is no longer usable: the engine invalidated it because the save pool of volume "${found.sourceVolumeId}" was full (its before-images could not be kept; the volume's own data is intact). Delete this snapshot, and give the node's save pools room (free space in its state dir, or a higher --save-quota-bytes)`
      : `snapshot "${handle}" no longer exists on node ${nodeId}; delete this snapshot`;
    const time = nowTime();
    await this.d.kube.patch(Resources.VolumeSnapshotContent, c.metadata, {
      metadata: { annotations: { [ANN_SNAPSHOT_INVALID]: time } },
    });
    await this.d.kube.patch(
      Resources.VolumeSnapshotContent,
      c.metadata,
      { status: { readyToUse: false, error: { message, time } } },
      { subresource: 'status' },
    );
    this.d.events.record(Resources.VolumeSnapshotContent, c, 'Warning', Reason.SnapshotInvalidated, message);
    if (w.snapshot)
      this.d.events.record(Resources.VolumeSnapshot, w.snapshot, 'Warning', Reason.SnapshotInvalidated, message);
    log.warn(
      { snapshotHandle: handle, node: nodeId, sourceVolumeId: found?.sourceVolumeId },
      'Snapshot invalidated on its node',
    );
    return {};
  }

  /** Node that holds the content's source volume (dynamic contents). */
  private sourceNode(c: VolumeSnapshotContent): string | undefined {
    const label = c.metadata.labels?.[LABEL_MANAGED_BY];
    if (label) return label;
    const handle = c.spec.source.volumeHandle;
    if (!handle) return undefined;
    const pv = this.d.caches.pvs
      .list()
      .find((p) => p.spec.csi?.driver === c.spec.driver && p.spec.csi.volumeHandle === handle);
    return nodeOfPv(pv);
  }

  private client(nodeId: string): CsiNodeClient {
    const info = this.d.nodes.requireReady(nodeId);
    return this.d.csi.get(nodeId, info.endpoint);
  }

  private async createSnapshot(w: ContentWorld, log: ReconcileContext['log']): Promise<ReconcileResult | 'continue'> {
    const c = w.content;
    const uid = c.spec.volumeSnapshotRef.uid;
    const deleting = !!c.metadata.deletionTimestamp;
    try {
      if (!uid) throw new ControllerError(ErrorCode.InvalidSpec, 'spec.volumeSnapshotRef.uid is not set');
      if (!w.cls && !deleting) {
        throw new ControllerError(
          ErrorCode.ClassNotFound,
          `VolumeSnapshotClass "${c.spec.volumeSnapshotClassName ?? ''}" not found; its parameters are needed to create the snapshot`,
        );
      }
      const nodeId = this.sourceNode(c);
      if (!nodeId) {
        throw new ControllerError(
          ErrorCode.InvalidSpec,
          `cannot tell which node holds volume "${c.spec.source.volumeHandle}" (no ${LABEL_MANAGED_BY} label and no PersistentVolume with that handle)`,
        );
      }
      const client = this.client(nodeId);
      const snap = await client.createSnapshot({
        sourceVolumeId: c.spec.source.volumeHandle as string,
        name: csiSnapshotNameFor(this.d.settings.snapshotNamePrefix, uid),
        parameters: driverParameters(w.cls?.parameters),
      });
      await this.writeStatus(c, snap, nodeId);
      const latest = this.d.caches.contents.get(c.metadata.name) ?? c;
      if (isBeingCreated(latest)) {
        await this.d.kube.patch(Resources.VolumeSnapshotContent, latest.metadata, {
          metadata: { annotations: { [ANN_BEING_CREATED]: null } },
        });
      }
      if (!snap.readyToUse && !deleting) {
        const n = this.polls.get(c.metadata.name) ?? 0;
        this.polls.set(c.metadata.name, n + 1);
        const delay = Math.min(MAX_POLL_MS, this.d.settings.readyPollIntervalMs * 2 ** Math.min(n, 10));
        log.debug({ snapshotHandle: snap.snapshotId, retryInMs: delay }, 'Snapshot not ready yet');
        return { requeueAfterMs: delay };
      }
      this.polls.delete(c.metadata.name);
      log.info({ snapshotHandle: snap.snapshotId, node: nodeId, readyToUse: snap.readyToUse }, 'Created snapshot');
      return 'continue';
    } catch (err) {
      await this.recordCreateError(w, err);
      throw err;
    }
  }

  private async writeStatus(c: VolumeSnapshotContent, snap: CsiSnapshot, nodeId: string | undefined): Promise<void> {
    const status = {
      snapshotHandle: snap.snapshotId,
      creationTime: snap.creationTimeNs > 0n ? snap.creationTimeNs : BigInt(Date.now()) * 1_000_000n,
      restoreSize: snap.sizeBytes,
      readyToUse: snap.readyToUse,
      error: null,
    };
    await this.d.kube.patch(Resources.VolumeSnapshotContent, c.metadata, { status }, { subresource: 'status' });
    if (nodeId && c.metadata.labels?.[LABEL_MANAGED_BY] !== nodeId) {
      await this.d.kube.patch(Resources.VolumeSnapshotContent, c.metadata, {
        metadata: { labels: { [LABEL_MANAGED_BY]: nodeId } },
      });
    }
  }

  /** status.error on the content, an event on it and on its snapshot; a final gRPC error ends "being created". */
  private async recordCreateError(w: ContentWorld, err: unknown): Promise<void> {
    const c = this.d.caches.contents.get(w.content.metadata.name) ?? w.content;
    if (isAbortedCall(err)) return;
    const message = `Failed to create snapshot: ${errorMessage(err)}`;
    const reason = err instanceof NodeUnavailableError ? Reason.NodeUnavailable : Reason.SnapshotCreationFailed;
    if (c.status?.error?.message !== message) {
      await this.d.kube
        .patch(
          Resources.VolumeSnapshotContent,
          c.metadata,
          { status: { error: { message, time: nowTime() } } },
          { subresource: 'status' },
        )
        .catch(() => undefined);
    }
    this.d.events.record(Resources.VolumeSnapshotContent, c, 'Warning', reason, message);
    if (w.snapshot && w.snapshot.metadata.uid === c.spec.volumeSnapshotRef.uid) {
      this.d.events.record(Resources.VolumeSnapshot, w.snapshot, 'Warning', reason, message);
    }
    if (isCsiFinalError(err) && isBeingCreated(c)) {
      await this.d.kube.patch(Resources.VolumeSnapshotContent, c.metadata, {
        metadata: { annotations: { [ANN_BEING_CREATED]: null } },
      });
    }
  }

  /** Finds a pre-provisioned snapshot: on its managed-by node, or on any ready node that lists it. */
  private async locate(
    c: VolumeSnapshotContent,
    handle: string,
  ): Promise<{ nodeId: string; snap: CsiSnapshot } | undefined> {
    const label = c.metadata.labels?.[LABEL_MANAGED_BY];
    const candidates = label ? [label] : this.d.nodes.all().map((n) => n.nodeId);
    const down: string[] = [];
    for (const nodeId of candidates) {
      const info = this.d.nodes.get(nodeId);
      if (!info.ready || !info.endpoint) {
        down.push(nodeId);
        continue;
      }
      const found = await this.d.csi.get(nodeId, info.endpoint).listSnapshots({ snapshotId: handle });
      const snap = found.find((s) => s.snapshotId === handle);
      if (snap) return { nodeId, snap };
    }
    if (down.length > 0) {
      throw new NodeUnavailableError(
        down.join(','),
        `snapshot "${handle}" is not on any ready node and ${down.length} node(s) are unavailable`,
      );
    }
    return undefined;
  }

  private async importSnapshot(w: ContentWorld, log: ReconcileContext['log']): Promise<ReconcileResult | 'continue'> {
    const c = w.content;
    const handle = c.spec.source.snapshotHandle as string;
    try {
      const found = await this.locate(c, handle);
      if (!found) {
        throw new ControllerError(
          ErrorCode.SnapshotHandleNotFound,
          `snapshot handle "${handle}" was not found on any node`,
          {
            reason: Reason.ContentValidationError,
          },
        );
      }
      await this.writeStatus(c, found.snap, found.nodeId);
      log.info(
        { snapshotHandle: handle, node: found.nodeId, readyToUse: found.snap.readyToUse },
        'Imported pre-provisioned snapshot',
      );
      if (!found.snap.readyToUse) return { requeueAfterMs: this.d.settings.readyPollIntervalMs };
      return 'continue';
    } catch (err) {
      const message = `Failed to check snapshot "${handle}": ${errorMessage(err)}`;
      if (c.status?.error?.message !== message) {
        await this.d.kube
          .patch(
            Resources.VolumeSnapshotContent,
            c.metadata,
            { status: { error: { message, time: nowTime() } } },
            { subresource: 'status' },
          )
          .catch(() => undefined);
      }
      this.d.events.record(
        Resources.VolumeSnapshotContent,
        c,
        'Warning',
        Reason.SnapshotContentCheckandUpdateFailed,
        message,
      );
      if (w.snapshot)
        this.d.events.record(
          Resources.VolumeSnapshot,
          w.snapshot,
          'Warning',
          Reason.SnapshotContentCheckandUpdateFailed,
          message,
        );
      throw err;
    }
  }

  private async deleteSnapshot(
    w: ContentWorld,
    handle: string,
    log: ReconcileContext['log'],
  ): Promise<ReconcileResult | 'continue'> {
    const c = w.content;
    try {
      let nodeId = c.metadata.labels?.[LABEL_MANAGED_BY] ?? this.sourceNode(c);
      if (!nodeId) {
        const found = await this.locate(c, handle);
        if (!found) {
          log.info({ snapshotHandle: handle }, 'Snapshot to delete is on no node; treating it as deleted');
          nodeId = undefined;
        } else {
          nodeId = found.nodeId;
        }
      }
      if (nodeId) {
        await this.client(nodeId).deleteSnapshot(handle, c.spec.source.volumeHandle);
        log.info({ snapshotHandle: handle, node: nodeId }, 'Deleted snapshot');
      }
    } catch (err) {
      if (isAbortedCall(err)) throw err;
      const message = `Failed to delete snapshot "${handle}": ${errorMessage(err)}`;
      const reason = err instanceof NodeUnavailableError ? Reason.NodeUnavailable : Reason.SnapshotDeleteError;
      this.d.events.record(Resources.VolumeSnapshotContent, c, 'Warning', reason, message);
      if (err instanceof CsiCallError)
        log.warn({ snapshotHandle: handle, code: err.codeName }, 'DeleteSnapshot failed');
      throw err;
    }
    await this.d.kube.setFinalizers(Resources.VolumeSnapshotContent, c, [], [FIN_CONTENT_BOUND]);
    const uid = c.spec.volumeSnapshotRef.uid;
    if (uid) this.d.metrics.endOperation(uid, 'DeleteSnapshot', 'success');
    return {};
  }
}
