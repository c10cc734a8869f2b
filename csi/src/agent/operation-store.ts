// SPDX-License-Identifier: Apache-2.0
// Persisted node-agent operations: <stateDir>/csi/operations/<operationId>.json, one file per operation,
// replaced atomically (writeFileAtomic). Memory never runs ahead of disk: put() updates the map only after the
// file is durable. Format (version 1):
//   { version, operationId, kind: restore|refresh, volumeId, sourceSnapshotId ('' until a refresh from the
//     source has cut its snapshot), sourceVolumeId, fromSource, keepRestorePoint, restorePointName,
//     restorePointSnapshotId, state: pending|running|completed|failed, mode: copy|online, blocksDone,
//     blocksTotal, blockSizeBytes, startTimeMs, completionTimeMs, message, errorCode, createdAtMs,
//     switchedAtMs? }
// `mode` is fixed at creation: `copy` converts the content through the engine's write path while the volume is
// held; `online` uses the engine's own restore (OP-13) or refresh (OP-10). `switchedAtMs` (optional, absent in
// records written before it existed = 0) is when an online operation's switch was durable: from then on the
// volume serves the new content and needs no lock; before it (or in copy mode) a `running` operation's volume
// may be partly converted, so on start the agent takes its locks again before serving.
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncDir, writeFileAtomic } from '../../../common/src/atomic-file.js';
import { AgentError } from './errors.js';

export const OPERATION_RECORD_VERSION = 1;
const OPERATION_ID_RE = /^[a-z0-9]([-a-z0-9]{0,126}[a-z0-9])?$/;

export type OperationKind = 'restore' | 'refresh';
export type OperationState = 'pending' | 'running' | 'completed' | 'failed';

export interface OperationRecord {
  readonly version: number;
  readonly operationId: string;
  readonly kind: OperationKind;
  readonly volumeId: string;
  readonly sourceSnapshotId: string;
  readonly sourceVolumeId: string;
  readonly fromSource: boolean;
  readonly keepRestorePoint: boolean;
  readonly restorePointName: string;
  readonly restorePointSnapshotId: string;
  readonly state: OperationState;
  readonly mode: OperationMode;
  readonly blocksDone: number;
  readonly blocksTotal: number;
  readonly blockSizeBytes: number;
  readonly startTimeMs: number;
  readonly completionTimeMs: number;
  readonly message: string;
  readonly errorCode: string;
  readonly createdAtMs: number;
  readonly switchedAtMs?: number;
}

export type OperationMode = 'copy' | 'online';

export function isOperationId(id: string): boolean {
  return OPERATION_ID_RE.test(id);
}

export function isActive(r: OperationRecord): boolean {
  return r.state === 'pending' || r.state === 'running';
}

/** An active operation whose volume must stay held (no stage, cut or delete) until it ends. */
export function holdsVolume(r: OperationRecord): boolean {
  return isActive(r) && !(r.mode === 'online' && (r.switchedAtMs ?? 0) > 0);
}

const STR = [
  'operationId',
  'volumeId',
  'sourceSnapshotId',
  'sourceVolumeId',
  'restorePointName',
  'restorePointSnapshotId',
  'message',
  'errorCode',
] as const;
const NUM = ['blocksDone', 'blocksTotal', 'blockSizeBytes', 'startTimeMs', 'completionTimeMs', 'createdAtMs'] as const;

export function parseOperationRecord(file: string, raw: unknown): OperationRecord {
  const bad = (why: string) => new AgentError('AGENT_ERR_STATE_CORRUPT', `operation record ${file}: ${why}`);
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw bad('not a JSON object');
  const r = raw as Record<string, unknown>;
  if (r.version !== OPERATION_RECORD_VERSION) throw bad(`unsupported version ${String(r.version)}`);
  for (const k of STR) if (typeof r[k] !== 'string') throw bad(`bad ${k}`);
  for (const k of NUM) if (!Number.isSafeInteger(r[k]) || (r[k] as number) < 0) throw bad(`bad ${k}`);
  if (r.kind !== 'restore' && r.kind !== 'refresh') throw bad('bad kind');
  if (!['pending', 'running', 'completed', 'failed'].includes(r.state as string)) throw bad('bad state');
  if (r.mode !== 'copy' && r.mode !== 'online') throw bad('bad mode');
  if (r.switchedAtMs !== undefined && (!Number.isSafeInteger(r.switchedAtMs) || (r.switchedAtMs as number) < 0)) {
    throw bad('bad switchedAtMs');
  }
  if (typeof r.fromSource !== 'boolean' || typeof r.keepRestorePoint !== 'boolean') throw bad('bad flags');
  if (!isOperationId(r.operationId as string)) throw bad('bad operationId');
  return r as unknown as OperationRecord;
}

export class OperationStore {
  private readonly byId = new Map<string, OperationRecord>();

  private constructor(readonly dir: string) {}

  static async load(stateDir: string): Promise<OperationStore> {
    const s = new OperationStore(join(stateDir, 'csi', 'operations'));
    await mkdir(s.dir, { recursive: true, mode: 0o700 });
    for (const f of await readdir(s.dir)) {
      if (!f.endsWith('.json')) continue;
      const path = join(s.dir, f);
      const rec = parseOperationRecord(path, JSON.parse(await readFile(path, 'utf8')) as unknown);
      s.byId.set(rec.operationId, rec);
    }
    return s;
  }

  get(id: string): OperationRecord | undefined {
    return this.byId.get(id);
  }

  all(): OperationRecord[] {
    return [...this.byId.values()].sort((a, b) => a.createdAtMs - b.createdAtMs);
  }

  async put(rec: OperationRecord): Promise<OperationRecord> {
    if (!isOperationId(rec.operationId))
      throw new AgentError('AGENT_ERR_INVALID', `bad operation id ${rec.operationId}`);
    await writeFileAtomic(join(this.dir, `${rec.operationId}.json`), `${JSON.stringify(rec)}\n`);
    this.byId.set(rec.operationId, rec);
    return rec;
  }

  async remove(id: string): Promise<void> {
    if (!isOperationId(id)) return;
    await rm(join(this.dir, `${id}.json`), { force: true });
    await fsyncDir(this.dir);
    this.byId.delete(id);
  }
}
