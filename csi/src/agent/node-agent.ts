// SPDX-License-Identifier: Apache-2.0
// The node agent: in-place restore and refresh of this node's volumes (loopsnap.v1.NodeAgent, docs/restore.md).
//
// An operation is validated, persisted (operation-store.ts, state `pending`), and then driven in the
// background: cut the restore point (restore with keepRestorePoint) or the source's fresh snapshot (refresh
// from the source) through the CSI snapshot service, take the volume's operation lock (and the source
// snapshot's), check the volume's stage, persist `running`, convert, persist `completed`. Two modes, chosen at
// creation (modeFor):
//   online  the engine does it (RestoreService): a restore from a snapshot of the volume itself (OP-13) or a
//           refresh of a thin clone onto a snapshot of its base volume (OP-10). The lock is held only until the
//           switch is durable (`switchedAtMs`); then the volume serves the new content at once, may be staged,
//           and a restore's background copy is followed until the engine reports it done. A raw block volume
//           may stay staged through a restore (RestoreService drops its buffer cache around the switch).
//   copy    everything else (a snapshot of another volume of the lineage, hydrated clones): the content is
//           converted through the engine's write path (copier.ts) while the lock is held for the whole copy.
// While the lock is held NodeStage, CreateSnapshot, DeleteVolume of the volume answer ABORTED (kubelet and the
// controller retry), so nothing reads a half-converted volume; a volume staged with a file system is never
// converted (its caches would go stale). On start, operations that hold their volume take their locks again
// before the plugin serves, and every unfinished operation resumes; the copy and the refresh are idempotent,
// and an online restore whose switch is not recorded runs its switch again (the volume then equals the
// snapshot; writes in the instant between the engine's commit and the record are the only ones it can undo).
// Every call is idempotent by id.
import type { Registry } from 'prom-client';
import { Counter } from 'prom-client';
import type { Logger } from '../../../common/src/log.js';
import type { DriverContext } from '../driver/context.js';
import { snapshotKey, volumeKey } from '../driver/locks.js';
import type { RestoreService } from '../driver/restore-service.js';
import type { SnapshotService } from '../driver/snapshot-service.js';
import { CsiError } from '../errors.js';
import type { JobSample } from '../metrics.js';
import { isSnapshotId, isVolumeId, nameProblem } from '../state/ids.js';
import type { SnapshotRecord } from '../state/records.js';
import type { ContentPort } from './content-port.js';
import { planCopy, runCopy } from './copier.js';
import { AgentError } from './errors.js';
import { lineageOf, parentOf } from './lineage.js';
import {
  holdsVolume,
  isActive,
  isOperationId,
  OPERATION_RECORD_VERSION,
  type OperationKind,
  type OperationMode,
  type OperationRecord,
  OperationStore,
} from './operation-store.js';

export interface StartRestoreInput {
  readonly operationId: string;
  readonly volumeId: string;
  readonly snapshotId: string;
  readonly keepRestorePoint: boolean;
  readonly restorePointName: string;
}

export interface StartRefreshInput {
  readonly operationId: string;
  readonly volumeId: string;
  /** '' with fromSource. */
  readonly snapshotId: string;
  readonly fromSource: boolean;
}

/** An operation as reported: the record plus live progress. */
export interface OperationView extends OperationRecord {
  readonly mustFinish: boolean;
  readonly restorePointSizeBytes: number;
  readonly restorePointCreatedAtMs: number;
}

export interface NodeAgentOptions {
  readonly driver: DriverContext;
  readonly snapshots: SnapshotService;
  readonly content: ContentPort;
  /** The engine's online restore and refresh; without it every operation runs in copy mode. */
  readonly restores?: RestoreService;
  readonly stateDir: string;
  readonly log: Logger;
  readonly registry?: Registry;
  /** Delay between attempts while a lock is held by someone else, and between polls of a background copy (ms). */
  readonly retryMs?: number;
}

const COPY_ATTEMPTS = 5;

const sleep = (ms: number, signal: AbortSignal): Promise<void> =>
  new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason as Error);
      return;
    }
    const t = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(signal.reason as Error);
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });

function isBusy(err: unknown): boolean {
  return err instanceof CsiError && err.code === 'CSI_ERR_BUSY';
}

export class NodeAgent {
  private readonly progress = new Map<string, number>();
  private readonly tasks = new Map<string, { abort: AbortController; done: Promise<void> }>();
  private readonly heldLocks = new Map<string, () => void>();
  private readonly log: Logger;
  private readonly opsTotal: Counter<'kind' | 'result'> | undefined;
  private readonly bytesTotal: Counter<'kind'> | undefined;
  private stopped = false;

  private constructor(
    private readonly o: NodeAgentOptions,
    private readonly store: OperationStore,
  ) {
    this.log = o.log.child({ component: 'node-agent' });
    if (o.registry) {
      this.opsTotal = new Counter({
        name: 'loopsnap_node_operations_total',
        help: 'In-place restore and refresh operations finished on this node, by kind and result',
        labelNames: ['kind', 'result'],
        registers: [o.registry],
      });
      this.bytesTotal = new Counter({
        name: 'loopsnap_node_operation_written_bytes_total',
        help: 'Bytes written into volumes by in-place restores and refreshes, by kind',
        labelNames: ['kind'],
        registers: [o.registry],
      });
    }
  }

  static async start(o: NodeAgentOptions): Promise<NodeAgent> {
    return new NodeAgent(o, await OperationStore.load(o.stateDir));
  }

  /**
   * Takes the locks of every `running` operation (synchronously: call it before serving, so that nothing stages
   * a half-converted volume) and resumes every unfinished operation in the background.
   */
  resumeAll(): void {
    for (const rec of this.store.all()) {
      if (!isActive(rec)) continue;
      if (holdsVolume(rec)) this.holdKeys(rec.operationId, rec.kind, this.lockKeys(rec));
      this.log.info({ operationId: rec.operationId, volumeId: rec.volumeId, state: rec.state }, 'Resuming operation');
      this.launch(rec);
    }
  }

  // ----- calls ----------------------------------------------------------------------------------------------

  async startRestore(input: StartRestoreInput): Promise<OperationView> {
    this.checkIds(input.operationId, input.volumeId, input.snapshotId);
    if (input.keepRestorePoint) {
      const why = input.restorePointName === '' ? 'is empty' : nameProblem(input.restorePointName);
      if (why) throw new AgentError('AGENT_ERR_INVALID', `restore_point_name ${why}`);
    }
    const same = (r: OperationRecord): boolean =>
      r.kind === 'restore' &&
      r.volumeId === input.volumeId &&
      r.sourceSnapshotId === input.snapshotId &&
      r.keepRestorePoint === input.keepRestorePoint &&
      (!input.keepRestorePoint || r.restorePointName === input.restorePointName);
    const existing = this.existing(input.operationId, same);
    if (existing) return existing;
    const snap = this.validate('restore', input.volumeId, input.snapshotId);
    const mode = this.modeFor('restore', input.volumeId, snap);
    this.checkStage(input.volumeId, 'restore', mode);
    let restorePointSnapshotId = '';
    if (input.keepRestorePoint) {
      // Cut before the operation exists, so that the operation can hold the volume lock from its creation on.
      const rp = await this.o.snapshots.create({
        name: input.restorePointName,
        sourceVolumeId: input.volumeId,
        parameters: {},
      });
      restorePointSnapshotId = rp.snapshotId;
      const again = this.existing(input.operationId, same);
      if (again) return again;
      if (this.stageProblem(input.volumeId, 'restore', mode) !== undefined) {
        await this.o.snapshots.delete(rp.snapshotId).catch(() => undefined);
        this.checkStage(input.volumeId, 'restore', mode);
      }
      this.checkVolume(input.volumeId);
    }
    return this.create({
      mode,
      restorePointSnapshotId,
      operationId: input.operationId,
      kind: 'restore',
      volumeId: input.volumeId,
      sourceSnapshotId: input.snapshotId,
      sourceVolumeId: snap.sourceVolumeId,
      fromSource: false,
      keepRestorePoint: input.keepRestorePoint,
      restorePointName: input.keepRestorePoint ? input.restorePointName : '',
    });
  }

  async startRefresh(input: StartRefreshInput): Promise<OperationView> {
    this.checkIds(input.operationId, input.volumeId, input.fromSource ? undefined : input.snapshotId);
    if (input.fromSource === (input.snapshotId !== '')) {
      throw new AgentError('AGENT_ERR_INVALID', 'set exactly one of snapshot_id and from_source');
    }
    const same = (r: OperationRecord): boolean =>
      r.kind === 'refresh' &&
      r.volumeId === input.volumeId &&
      r.fromSource === input.fromSource &&
      (input.fromSource || r.sourceSnapshotId === input.snapshotId);
    const existing = this.existing(input.operationId, same);
    if (existing) return existing;
    let sourceVolumeId: string;
    if (input.fromSource) {
      this.checkVolume(input.volumeId);
      const parent = parentOf(this.o.driver.state, input.volumeId);
      const p = parent === undefined ? undefined : this.o.driver.state.volume(parent);
      if (!parent || !p || p.phase !== 'ready') {
        throw new AgentError(
          'AGENT_ERR_NO_SOURCE',
          parent
            ? `volume ${input.volumeId} was made from volume ${parent}, which no longer exists; refresh onto one of its snapshots instead`
            : `volume ${input.volumeId} was not created from a snapshot or a volume; there is nothing to refresh it from`,
        );
      }
      sourceVolumeId = parent;
    } else {
      sourceVolumeId = this.validate('refresh', input.volumeId, input.snapshotId).sourceVolumeId;
    }
    const mode = this.modeFor(
      'refresh',
      input.volumeId,
      input.fromSource ? undefined : this.o.driver.state.snapshot(input.snapshotId),
    );
    this.checkStage(input.volumeId, 'refresh', mode);
    return this.create({
      mode,
      operationId: input.operationId,
      kind: 'refresh',
      volumeId: input.volumeId,
      sourceSnapshotId: input.fromSource ? '' : input.snapshotId,
      sourceVolumeId,
      fromSource: input.fromSource,
      keepRestorePoint: false,
      restorePointName: '',
      restorePointSnapshotId: '',
    });
  }

  get(operationId: string): OperationView {
    const rec = isOperationId(operationId) ? this.store.get(operationId) : undefined;
    if (!rec) throw new AgentError('AGENT_ERR_NOT_FOUND', `operation ${operationId} does not exist on this node`);
    return this.view(rec);
  }

  async delete(operationId: string): Promise<void> {
    const rec = isOperationId(operationId) ? this.store.get(operationId) : undefined;
    if (!rec) return;
    if (isActive(rec)) {
      throw new AgentError(
        'AGENT_ERR_RUNNING',
        `operation ${operationId} is ${rec.state}; it must finish for the volume's content to be consistent`,
      );
    }
    await this.store.remove(operationId);
    this.progress.delete(operationId);
  }

  /** Running operations, for loopsnap_background_job_progress_ratio. */
  jobSamples(): JobSample[] {
    // An online restore's copy after the switch is the engine's own job (reported by the backend).
    return this.store
      .all()
      .filter((r) => r.state === 'running' && holdsVolume(r))
      .map((r) => {
        const v = this.view(r);
        return {
          kind: r.kind,
          id: r.operationId,
          doneBytes: v.blocksDone * v.blockSizeBytes,
          totalBytes: v.blocksTotal * v.blockSizeBytes,
        };
      });
  }

  /** Stops the copies between two chunks (records stay; the next start resumes them) and releases locks. */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.tasks.values()) t.abort.abort(new Error('node plugin stopping'));
    await Promise.all([...this.tasks.values()].map((t) => t.done));
    for (const id of [...this.heldLocks.keys()]) this.releaseKeys(id);
  }

  // ----- validation -----------------------------------------------------------------------------------------

  private checkIds(operationId: string, volumeId: string, snapshotId: string | undefined): void {
    if (!isOperationId(operationId)) {
      throw new AgentError('AGENT_ERR_INVALID', 'operation_id must be 1-128 characters of [a-z0-9-]');
    }
    if (!isVolumeId(volumeId)) throw new AgentError('AGENT_ERR_NOT_FOUND', `volume ${volumeId} does not exist`);
    if (snapshotId !== undefined && !isSnapshotId(snapshotId)) {
      throw new AgentError('AGENT_ERR_NOT_FOUND', `snapshot ${snapshotId} does not exist on this node`);
    }
  }

  private existing(operationId: string, same: (r: OperationRecord) => boolean): OperationView | undefined {
    const rec = this.store.get(operationId);
    if (!rec) return undefined;
    if (!same(rec)) {
      throw new AgentError('AGENT_ERR_CONFLICT', `operation ${operationId} exists with other arguments`, {
        details: { operationId },
      });
    }
    return this.view(rec);
  }

  private checkVolume(volumeId: string): void {
    const vol = this.o.driver.state.volume(volumeId);
    if (!vol) throw new AgentError('AGENT_ERR_NOT_FOUND', `volume ${volumeId} does not exist on this node`);
    if (vol.phase !== 'ready') throw new AgentError('AGENT_ERR_BUSY', `volume ${volumeId} is ${vol.phase}; retry`);
    const other = this.store.all().find((r) => isActive(r) && r.volumeId === volumeId);
    if (other) {
      throw new AgentError(
        'AGENT_ERR_BUSY',
        `a ${other.kind} (operation ${other.operationId}) of volume ${volumeId} is still ${other.state}; one operation at a time`,
        { details: { operationId: other.operationId } },
      );
    }
  }

  /**
   * online restore: only a file system must not be mounted (a raw block volume stays usable through the
   * switch); everything else: the volume must not be staged at all.
   */
  private stageProblem(volumeId: string, what: OperationKind, mode: OperationMode): string | undefined {
    const stage = this.o.driver.state.volume(volumeId)?.stage;
    if (!stage) return undefined;
    if (what === 'restore' && mode === 'online' && stage.accessType === 'block') return undefined;
    return what === 'restore' && mode === 'online'
      ? `volume ${volumeId} is staged with a mounted file system (in use by a pod); stop the pod so that it is unstaged, then the restore starts (docs/restore.md)`
      : `volume ${volumeId} is staged (in use by a pod); stop the pod so that it is unstaged, then the ${what} starts (docs/restore.md)`;
  }

  private checkStage(volumeId: string, what: OperationKind, mode: OperationMode): void {
    const why = this.stageProblem(volumeId, what, mode);
    if (why !== undefined) throw new AgentError('AGENT_ERR_IN_USE', why);
  }

  /** online when the engine can do it in place (see the file comment), else copy. */
  private modeFor(kind: OperationKind, volumeId: string, snap: SnapshotRecord | undefined): OperationMode {
    if (this.o.restores === undefined) return 'copy';
    const backend = this.o.driver.backend;
    if (kind === 'restore') {
      const own = snap !== undefined && snap.sourceVolumeId === volumeId && snap.method !== 'clone';
      return own && backend.backing(volumeId) === 'volume' ? 'online' : 'copy';
    }
    const origin = this.o.driver.state.volume(volumeId)?.origin;
    if (origin?.kind !== 'rw-clone' || origin.image === true || backend.backing(volumeId) !== 'rw') return 'copy';
    // fromSource (no snapshot yet): the agent cuts the snapshot of the base volume itself.
    if (snap === undefined) return parentOf(this.o.driver.state, volumeId) === origin.baseVolumeId ? 'online' : 'copy';
    return snap.sourceVolumeId === origin.baseVolumeId && snap.method !== 'clone' ? 'online' : 'copy';
  }

  /** The source snapshot's record after every check that does not depend on the lock. */
  private validate(kind: OperationKind, volumeId: string, snapshotId: string) {
    const state = this.o.driver.state;
    this.checkVolume(volumeId);
    const snap = state.snapshot(snapshotId);
    if (!snap || snap.phase === 'deleting') {
      throw new AgentError('AGENT_ERR_NOT_FOUND', `snapshot ${snapshotId} does not exist on this node`);
    }
    if (snap.phase !== 'ready' || !snap.readyToUse) {
      throw new AgentError('AGENT_ERR_NOT_READY', `snapshot ${snapshotId} is not ready to use yet`);
    }
    const base = kind === 'restore' ? volumeId : parentOf(state, volumeId);
    if (base === undefined) {
      throw new AgentError(
        'AGENT_ERR_NO_SOURCE',
        `volume ${volumeId} was not created from a snapshot or a volume; restore it instead of refreshing it`,
      );
    }
    const lineage = lineageOf(state, base);
    if (!lineage.includes(snap.sourceVolumeId)) {
      throw new AgentError(
        'AGENT_ERR_NOT_IN_LINEAGE',
        kind === 'restore'
          ? `snapshot ${snapshotId} is of volume ${snap.sourceVolumeId}, which is neither volume ${volumeId} nor a volume it was made from (${lineage.join(' <- ')})`
          : `snapshot ${snapshotId} is of volume ${snap.sourceVolumeId}, not of the volume ${volumeId} was made from (${lineage.join(' <- ')})`,
        { details: { lineage } },
      );
    }
    const vol = state.volume(volumeId);
    if (vol && snap.sizeBytes > vol.capacityBytes) {
      throw new AgentError(
        'AGENT_ERR_TOO_LARGE',
        `snapshot ${snapshotId} (${snap.sizeBytes} bytes) is larger than volume ${volumeId} (${vol.capacityBytes} bytes); expand the volume first`,
      );
    }
    if (!this.o.driver.backend.hasVolume(snap.sourceVolumeId)) {
      throw new AgentError(
        'AGENT_ERR_NOT_FOUND',
        `the engine volume ${snap.sourceVolumeId} of snapshot ${snapshotId} is not open`,
      );
    }
    return snap;
  }

  private async create(
    fields: Pick<
      OperationRecord,
      | 'operationId'
      | 'kind'
      | 'volumeId'
      | 'sourceSnapshotId'
      | 'sourceVolumeId'
      | 'fromSource'
      | 'keepRestorePoint'
      | 'restorePointName'
      | 'restorePointSnapshotId'
      | 'mode'
    >,
  ): Promise<OperationView> {
    if (this.stopped) throw new CsiError('CSI_ERR_NOT_READY_SERVICE', 'the node plugin is stopping; retry');
    // Hold the volume (and the source snapshot) from now on, in the same synchronous step as the checks
    // above: nothing can stage the volume between them and the copy.
    const keys = this.lockKeys(fields);
    const busy = keys.find((k) => this.o.driver.locks.isHeld(k));
    if (busy) throw new AgentError('AGENT_ERR_BUSY', `another operation holds ${busy}; retry`);
    this.holdKeys(fields.operationId, fields.kind, keys);
    const now = Date.now();
    let rec: OperationRecord;
    try {
      rec = await this.store.put({
        version: OPERATION_RECORD_VERSION,
        ...fields,
        state: 'pending',
        blocksDone: 0,
        blocksTotal: 0,
        blockSizeBytes: this.o.content.blockSize(fields.volumeId),
        startTimeMs: now,
        completionTimeMs: 0,
        message: 'accepted',
        errorCode: '',
        createdAtMs: now,
        switchedAtMs: 0,
      });
    } catch (err) {
      this.releaseKeys(fields.operationId);
      throw err;
    }
    this.log.info(
      {
        operationId: rec.operationId,
        kind: rec.kind,
        volumeId: rec.volumeId,
        snapshotId: rec.sourceSnapshotId,
        mode: rec.mode,
      },
      'Accepted operation',
    );
    this.launch(rec);
    return this.view(rec);
  }

  private view(rec: OperationRecord): OperationView {
    const rp = rec.restorePointSnapshotId ? this.o.driver.state.snapshot(rec.restorePointSnapshotId) : undefined;
    return {
      ...rec,
      blocksDone: rec.state === 'running' ? (this.progress.get(rec.operationId) ?? rec.blocksDone) : rec.blocksDone,
      mustFinish: rec.state === 'running',
      restorePointSizeBytes: rp?.sizeBytes ?? 0,
      restorePointCreatedAtMs: rp?.createdAt ?? 0,
    };
  }

  // ----- execution ------------------------------------------------------------------------------------------

  private lockKeys(rec: Pick<OperationRecord, 'volumeId' | 'sourceSnapshotId'>): string[] {
    return [volumeKey(rec.volumeId), ...(rec.sourceSnapshotId ? [snapshotKey(rec.sourceSnapshotId)] : [])];
  }

  /** Takes `keys` now (they must be free) for the operation, until releaseKeys. */
  private holdKeys(operationId: string, kind: OperationKind, keys: readonly string[]): void {
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    // locks.run takes every key before its first await, or rejects when one is held.
    this.o.driver.locks
      .run(kind === 'restore' ? 'VolumeRestore' : 'VolumeRefresh', keys, () => held)
      .catch((err: unknown) => this.log.error({ err, operationId }, 'Failed to hold the operation locks'));
    const prev = this.heldLocks.get(operationId);
    this.heldLocks.set(operationId, () => {
      prev?.();
      release();
    });
  }

  private releaseKeys(operationId: string): void {
    this.heldLocks.get(operationId)?.();
    this.heldLocks.delete(operationId);
  }

  /** Waits until `key` is free and takes it for the operation. */
  private async acquire(rec: OperationRecord, key: string, signal: AbortSignal): Promise<void> {
    for (;;) {
      if (!this.o.driver.locks.isHeld(key)) {
        this.holdKeys(rec.operationId, rec.kind, [key]);
        return;
      }
      await sleep(this.o.retryMs ?? 200, signal);
    }
  }

  private async retryBusy<T>(fn: () => Promise<T>, signal: AbortSignal): Promise<T> {
    for (;;) {
      try {
        return await fn();
      } catch (err) {
        if (!isBusy(err)) throw err;
        await sleep(this.o.retryMs ?? 200, signal);
      }
    }
  }

  private launch(rec: OperationRecord): void {
    const abort = new AbortController();
    const done = this.drive(rec, abort.signal)
      .catch(async (err: unknown) => {
        if (abort.signal.aborted) return;
        const cur = this.store.get(rec.operationId) ?? rec;
        const code = (err as { code?: unknown }).code;
        const message = (err as Error).message ?? String(err);
        this.log.error({ err, operationId: rec.operationId, volumeId: rec.volumeId }, 'Operation failed');
        this.opsTotal?.inc({ kind: rec.kind, result: 'failed' });
        await this.store
          .put({
            ...cur,
            state: 'failed',
            completionTimeMs: Date.now(),
            message:
              cur.state === 'running'
                ? `${message}; the volume's content is partly converted: create a new ${rec.kind} to finish`
                : message,
            errorCode: typeof code === 'string' ? code : 'AGENT_ERR_COPY_FAILED',
          })
          .catch((e: unknown) => this.log.error({ err: e }, 'Failed to persist a failed operation'));
      })
      .finally(() => {
        if (!abort.signal.aborted) this.releaseKeys(rec.operationId);
        this.tasks.delete(rec.operationId);
      });
    this.tasks.set(rec.operationId, { abort, done });
  }

  private async drive(start: OperationRecord, signal: AbortSignal): Promise<void> {
    const id = start.operationId;
    let rec = start;
    const snapshots = this.o.snapshots;
    if (rec.state === 'pending' && rec.fromSource && rec.sourceSnapshotId === '') {
      const s = await this.retryBusy(
        () => snapshots.create({ name: `refresh-source-${id}`, sourceVolumeId: rec.sourceVolumeId, parameters: {} }),
        signal,
      );
      rec = await this.store.put({ ...rec, sourceSnapshotId: s.snapshotId, message: 'source snapshot cut' });
      this.log.info({ operationId: id, snapshotId: s.snapshotId }, 'Cut a fresh snapshot of the source volume');
      await this.acquire(rec, snapshotKey(rec.sourceSnapshotId), signal);
    } else if (rec.fromSource && !this.o.driver.locks.isHeld(snapshotKey(rec.sourceSnapshotId))) {
      await this.acquire(rec, snapshotKey(rec.sourceSnapshotId), signal);
    }
    try {
      if (rec.kind === 'restore' && rec.mode === 'online' && (rec.switchedAtMs ?? 0) > 0) {
        rec = await this.followRestore(rec, signal);
        return;
      }
      const snap = this.o.driver.state.snapshot(rec.sourceSnapshotId);
      if (!snap) throw new AgentError('AGENT_ERR_NOT_FOUND', `snapshot ${rec.sourceSnapshotId} no longer exists`);
      if (rec.state === 'pending') {
        const vol = this.o.driver.state.volume(rec.volumeId);
        if (!vol) throw new AgentError('AGENT_ERR_NOT_FOUND', `volume ${rec.volumeId} no longer exists`);
        const why = this.stageProblem(rec.volumeId, rec.kind, rec.mode);
        if (why !== undefined) {
          throw new AgentError('AGENT_ERR_IN_USE', `${why}; nothing was changed`);
        }
        rec = await this.store.put({
          ...rec,
          state: 'running',
          message: rec.mode === 'online' ? 'switching' : 'copying',
        });
      }
      if (rec.mode === 'online') {
        rec = rec.kind === 'restore' ? await this.switchRestore(rec, signal) : await this.switchRefresh(rec);
      } else {
        rec = await this.copy(rec, snap, signal);
      }
    } finally {
      this.releaseKeys(id);
    }
    if (rec.fromSource) {
      await this.retryBusy(() => snapshots.delete(rec.sourceSnapshotId), signal).catch((err: unknown) =>
        this.log.warn({ err, snapshotId: rec.sourceSnapshotId }, 'Failed to delete the refresh source snapshot'),
      );
    }
  }

  /** Copy mode (file comment): converts the content through the engine's write path; the lock is held. */
  private async copy(start: OperationRecord, snap: SnapshotRecord, signal: AbortSignal): Promise<OperationRecord> {
    let rec = start;
    const id = rec.operationId;
    const src = { volumeId: snap.sourceVolumeId, engineSnapshotId: snap.engineSnapshotId, sizeBytes: snap.sizeBytes };
    const plan = planCopy(this.o.content, src, rec.volumeId);
    rec = await this.store.put({ ...rec, blocksTotal: plan.totalBlocks, blockSizeBytes: plan.blockSize });
    this.log.info(
      { operationId: id, volumeId: rec.volumeId, blocksTotal: plan.totalBlocks, kind: rec.kind },
      'Copying',
    );
    let result;
    for (let attempt = 1; ; attempt++) {
      try {
        result = await runCopy(this.o.content, src, rec.volumeId, plan, {
          signal,
          onProgress: (n) => this.progress.set(id, n),
        });
        break;
      } catch (err) {
        if (signal.aborted || attempt >= COPY_ATTEMPTS) throw err;
        this.log.warn({ err, operationId: id, attempt }, 'Copy failed; retrying');
        await sleep(500 * attempt, signal);
      }
    }
    this.bytesTotal?.inc({ kind: rec.kind }, result.bytesWritten);
    return this.complete(
      rec,
      plan.totalBlocks,
      `completed: ${result.blocksWritten} block(s) written, ${result.blocksEqual} already equal, ${result.blocksZeroed} zeroed`,
      result,
    );
  }

  /**
   * Online restore, under the operation's locks: the engine's switch (reads return the snapshot from now on),
   * recorded, then the locks go and the background copy is followed.
   */
  private async switchRestore(start: OperationRecord, signal: AbortSignal): Promise<OperationRecord> {
    const restores = this.o.restores as RestoreService;
    const backend = this.o.driver.backend;
    let rec = start;
    // A restore already running on the volume is this operation's own switch, made before a crash.
    if (backend.restoreState(rec.volumeId) === undefined) {
      await restores.startRestore(
        { volumeId: rec.volumeId, source: { snapshotId: rec.sourceSnapshotId } },
        { locked: true },
      );
    }
    const st = backend.restoreState(rec.volumeId);
    const bs = rec.blockSizeBytes;
    rec = await this.store.put({
      ...rec,
      switchedAtMs: Date.now(),
      blocksTotal: st === undefined ? 0 : Math.ceil(st.totalBytes / bs),
      message: 'the volume reads the snapshot; copying in the background',
    });
    this.log.info(
      {
        operationId: rec.operationId,
        volumeId: rec.volumeId,
        snapshotId: rec.sourceSnapshotId,
        blocksTotal: rec.blocksTotal,
      },
      'Switched volume to the snapshot (online restore)',
    );
    this.releaseKeys(rec.operationId);
    return this.followRestore(rec, signal);
  }

  /** Waits for the engine's background copy of a switched online restore, reporting its progress. */
  private async followRestore(start: OperationRecord, signal: AbortSignal): Promise<OperationRecord> {
    let rec = start;
    const backend = this.o.driver.backend;
    const bs = rec.blockSizeBytes;
    for (;;) {
      // Read in one synchronous step: a volume being deleted is marked so before its engine volume goes.
      const vol = this.o.driver.state.volume(rec.volumeId);
      const st = backend.restoreState(rec.volumeId);
      if (vol === undefined || vol.phase !== 'ready') {
        throw new AgentError('AGENT_ERR_NOT_FOUND', `volume ${rec.volumeId} was deleted while its restore copied`);
      }
      if (st === undefined) break;
      const total = Math.ceil(st.totalBytes / bs);
      if (total !== rec.blocksTotal) rec = await this.store.put({ ...rec, blocksTotal: total });
      this.progress.set(rec.operationId, Math.min(total, Math.floor(st.doneBytes / bs)));
      await sleep(this.o.retryMs ?? 200, signal);
    }
    this.bytesTotal?.inc({ kind: rec.kind }, rec.blocksTotal * bs);
    return this.complete(
      rec,
      rec.blocksTotal,
      `completed online: ${rec.blocksTotal} block(s) copied in the background`,
    );
  }

  /** Online refresh (OP-10), under the operation's locks: instant, no copy. */
  private async switchRefresh(rec: OperationRecord): Promise<OperationRecord> {
    const restores = this.o.restores as RestoreService;
    await restores.refresh({ volumeId: rec.volumeId, target: { snapshotId: rec.sourceSnapshotId } }, { locked: true });
    const blocks = Math.ceil(this.o.content.volumeSizeBytes(rec.volumeId) / rec.blockSizeBytes);
    return this.complete(
      { ...rec, switchedAtMs: Date.now() },
      blocks,
      'completed online: the volume reads the snapshot (refreshed in place, nothing copied)',
    );
  }

  private async complete(
    rec: OperationRecord,
    blocks: number,
    message: string,
    extra: object = {},
  ): Promise<OperationRecord> {
    const done = await this.store.put({
      ...rec,
      state: 'completed',
      blocksTotal: blocks,
      blocksDone: blocks,
      completionTimeMs: Date.now(),
      message,
    });
    this.progress.delete(rec.operationId);
    this.opsTotal?.inc({ kind: rec.kind, result: 'completed' });
    this.log.info(
      { operationId: rec.operationId, volumeId: rec.volumeId, mode: rec.mode, ...extra },
      'Operation completed',
    );
    return done;
  }
}
