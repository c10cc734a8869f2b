// SPDX-License-Identifier: Apache-2.0
// The node agent: in-place restore and refresh of this node's volumes (loopsnap.v1.NodeAgent, docs/restore.md).
//
// An operation is validated, persisted (operation-store.ts, state `pending`), and then driven in the
// background: cut the restore point (restore with keepRestorePoint) or the source's fresh snapshot (refresh
// from the source) through the CSI snapshot service, take the volume's operation lock (and the source
// snapshot's), check the volume is still unstaged, persist `running`, copy (copier.ts), persist `completed`.
// The lock is held for the whole copy: NodeStage, CreateSnapshot, DeleteVolume of the volume answer ABORTED
// meanwhile (kubelet and the controller retry), so nothing reads a half-converted volume. On start, `running`
// operations take their locks again before the plugin serves, and every unfinished operation resumes; the copy
// is idempotent, so a crash at any point converges on the same content. Every call is idempotent by id.
import type { Registry } from 'prom-client';
import { Counter } from 'prom-client';
import type { Logger } from '../../../common/src/log.js';
import type { DriverContext } from '../driver/context.js';
import { snapshotKey, volumeKey } from '../driver/locks.js';
import type { SnapshotService } from '../driver/snapshot-service.js';
import { CsiError } from '../errors.js';
import type { JobSample } from '../metrics.js';
import { isSnapshotId, isVolumeId, nameProblem } from '../state/ids.js';
import type { ContentPort } from './content-port.js';
import { planCopy, runCopy } from './copier.js';
import { AgentError } from './errors.js';
import { lineageOf, parentOf } from './lineage.js';
import {
  isActive,
  isOperationId,
  OPERATION_RECORD_VERSION,
  type OperationKind,
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
  readonly stateDir: string;
  readonly log: Logger;
  readonly registry?: Registry;
  /** Delay between attempts while a lock is held by someone else (ms). */
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
      this.holdKeys(rec.operationId, rec.kind, this.lockKeys(rec));
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
      if (this.o.driver.state.volume(input.volumeId)?.stage) {
        await this.o.snapshots.delete(rp.snapshotId).catch(() => undefined);
        this.checkUnstaged(input.volumeId, 'restore');
      }
      this.checkVolume(input.volumeId);
    }
    return this.create({
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
      this.checkUnstaged(input.volumeId, 'refresh');
      sourceVolumeId = parent;
    } else {
      sourceVolumeId = this.validate('refresh', input.volumeId, input.snapshotId).sourceVolumeId;
    }
    return this.create({
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
    return this.store
      .all()
      .filter((r) => r.state === 'running')
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

  private checkUnstaged(volumeId: string, what: OperationKind): void {
    if (this.o.driver.state.volume(volumeId)?.stage) {
      throw new AgentError(
        'AGENT_ERR_IN_USE',
        `volume ${volumeId} is staged (in use by a pod); stop the pod so that it is unstaged, then the ${what} starts (docs/restore.md)`,
      );
    }
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
    this.checkUnstaged(volumeId, kind);
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
        mode: 'copy',
        blocksDone: 0,
        blocksTotal: 0,
        blockSizeBytes: this.o.content.blockSize(fields.volumeId),
        startTimeMs: now,
        completionTimeMs: 0,
        message: 'accepted',
        errorCode: '',
        createdAtMs: now,
      });
    } catch (err) {
      this.releaseKeys(fields.operationId);
      throw err;
    }
    this.log.info(
      { operationId: rec.operationId, kind: rec.kind, volumeId: rec.volumeId, snapshotId: rec.sourceSnapshotId },
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
      const snap = this.o.driver.state.snapshot(rec.sourceSnapshotId);
      if (!snap) throw new AgentError('AGENT_ERR_NOT_FOUND', `snapshot ${rec.sourceSnapshotId} no longer exists`);
      if (rec.state === 'pending') {
        const vol = this.o.driver.state.volume(rec.volumeId);
        if (!vol) throw new AgentError('AGENT_ERR_NOT_FOUND', `volume ${rec.volumeId} no longer exists`);
        if (vol.stage) {
          throw new AgentError(
            'AGENT_ERR_IN_USE',
            `volume ${rec.volumeId} was staged before the ${rec.kind} could start; nothing was changed`,
          );
        }
        rec = await this.store.put({ ...rec, state: 'running', message: 'copying' });
      }
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
      rec = await this.store.put({
        ...rec,
        state: 'completed',
        blocksDone: plan.totalBlocks,
        completionTimeMs: Date.now(),
        message: `completed: ${result.blocksWritten} block(s) written, ${result.blocksEqual} already equal, ${result.blocksZeroed} zeroed`,
      });
      this.progress.delete(id);
      this.opsTotal?.inc({ kind: rec.kind, result: 'completed' });
      this.log.info({ operationId: id, volumeId: rec.volumeId, ...result }, 'Operation completed');
    } finally {
      this.releaseKeys(id);
    }
    if (rec.fromSource) {
      await this.retryBusy(() => snapshots.delete(rec.sourceSnapshotId), signal).catch((err: unknown) =>
        this.log.warn({ err, snapshotId: rec.sourceSnapshotId }, 'Failed to delete the refresh source snapshot'),
      );
    }
  }
}
