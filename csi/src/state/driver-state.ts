// SPDX-License-Identifier: Apache-2.0
// The driver's persisted state (records.ts for the format): loaded once at start, kept in memory with name
// indexes, and written through on every change. Invariant: memory never runs ahead of disk; a put or
// remove updates the maps only after the file change is durable, so whatever a caller was told survives a
// crash. Writes to one file are serialised (they share a temp name); different files proceed in parallel.
// On a full disk a write gives the space reserve back and is tried once more (space-reserve.ts), so the
// records of deletes and unpublishes always land; removals take the reserve again when space came back.
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncDir, writeFileAtomic } from '../../../common/src/atomic-file.js';
import type { Logger } from '../../../common/src/log.js';
import { CsiError } from '../errors.js';
import { isSnapshotId, isVolumeId } from './ids.js';
import { parseSnapshotRecord, parseVolumeRecord, type SnapshotRecord, type VolumeRecord } from './records.js';
import { SPACE_RESERVE_DEFAULT_BYTES, SpaceReserve } from './space-reserve.js';

export const STATE_SUBDIR = 'csi';

export class DriverState {
  private readonly volumesById = new Map<string, VolumeRecord>();
  private readonly snapshotsById = new Map<string, SnapshotRecord>();
  private readonly volumeIdByName = new Map<string, string>();
  private readonly snapshotIdByName = new Map<string, string>();
  private readonly fileQueues = new Map<string, Promise<void>>();

  private constructor(
    readonly dir: string,
    readonly reserve: SpaceReserve,
  ) {}

  get volumesDir(): string {
    return join(this.dir, 'volumes');
  }

  get snapshotsDir(): string {
    return join(this.dir, 'snapshots');
  }

  /** Loads `<stateDir>/csi`; creates it when missing. A record that fails validation stops the load. */
  static async load(
    stateDir: string,
    log: Logger,
    reserveBytes: number = SPACE_RESERVE_DEFAULT_BYTES,
  ): Promise<DriverState> {
    const dir = join(stateDir, STATE_SUBDIR);
    const s = new DriverState(dir, new SpaceReserve(join(dir, 'space-reserve'), reserveBytes, log));
    await s.reserve.withReserve('mkdir', async () => {
      await mkdir(s.volumesDir, { recursive: true, mode: 0o700 });
      await mkdir(s.snapshotsDir, { recursive: true, mode: 0o700 });
    });
    await s.reserve.ensure();
    for (const rec of await readRecords(s.volumesDir, isVolumeId, parseVolumeRecord)) s.indexVolume(rec);
    for (const rec of await readRecords(s.snapshotsDir, isSnapshotId, parseSnapshotRecord)) s.indexSnapshot(rec);
    log.info({ volumes: s.volumesById.size, snapshots: s.snapshotsById.size, path: s.dir }, 'Loaded driver state');
    return s;
  }

  // ----- reads ----------------------------------------------------------------------------------------------

  volume(volumeId: string): VolumeRecord | undefined {
    return this.volumesById.get(volumeId);
  }

  volumeByName(name: string): VolumeRecord | undefined {
    const id = this.volumeIdByName.get(name);
    return id === undefined ? undefined : this.volumesById.get(id);
  }

  /** Every volume record, sorted by id (the pagination order). */
  volumes(): VolumeRecord[] {
    return [...this.volumesById.values()].sort((a, b) => cmp(a.volumeId, b.volumeId));
  }

  snapshot(snapshotId: string): SnapshotRecord | undefined {
    return this.snapshotsById.get(snapshotId);
  }

  snapshotByName(name: string): SnapshotRecord | undefined {
    const id = this.snapshotIdByName.get(name);
    return id === undefined ? undefined : this.snapshotsById.get(id);
  }

  /** Every snapshot record, sorted by id (the pagination order). */
  snapshots(): SnapshotRecord[] {
    return [...this.snapshotsById.values()].sort((a, b) => cmp(a.snapshotId, b.snapshotId));
  }

  snapshotsOf(volumeId: string): SnapshotRecord[] {
    return this.snapshots().filter((s) => s.sourceVolumeId === volumeId);
  }

  // ----- writes ---------------------------------------------------------------------------------------------

  async putVolume(rec: VolumeRecord): Promise<void> {
    if (!isVolumeId(rec.volumeId)) throw new CsiError('CSI_ERR_INTERNAL', `refusing to persist id ${rec.volumeId}`);
    const other = this.volumeIdByName.get(rec.name);
    if (other !== undefined && other !== rec.volumeId) {
      throw new CsiError('CSI_ERR_NAME_CONFLICT', `volume name ${JSON.stringify(rec.name)} belongs to ${other}`);
    }
    await this.writeRecord(join(this.volumesDir, `${rec.volumeId}.json`), rec);
    this.indexVolume(rec);
  }

  /** Removes a volume record. Not an error when it does not exist. */
  async removeVolume(volumeId: string): Promise<void> {
    if (!isVolumeId(volumeId)) return;
    await this.removeRecord(join(this.volumesDir, `${volumeId}.json`));
    const rec = this.volumesById.get(volumeId);
    this.volumesById.delete(volumeId);
    if (rec && this.volumeIdByName.get(rec.name) === volumeId) this.volumeIdByName.delete(rec.name);
  }

  async putSnapshot(rec: SnapshotRecord): Promise<void> {
    if (!isSnapshotId(rec.snapshotId)) {
      throw new CsiError('CSI_ERR_INTERNAL', `refusing to persist id ${rec.snapshotId}`);
    }
    const other = this.snapshotIdByName.get(rec.name);
    if (other !== undefined && other !== rec.snapshotId) {
      throw new CsiError('CSI_ERR_NAME_CONFLICT', `snapshot name ${JSON.stringify(rec.name)} belongs to ${other}`);
    }
    await this.writeRecord(join(this.snapshotsDir, `${rec.snapshotId}.json`), rec);
    this.indexSnapshot(rec);
  }

  /** Removes a snapshot record. Not an error when it does not exist. */
  async removeSnapshot(snapshotId: string): Promise<void> {
    if (!isSnapshotId(snapshotId)) return;
    await this.removeRecord(join(this.snapshotsDir, `${snapshotId}.json`));
    const rec = this.snapshotsById.get(snapshotId);
    this.snapshotsById.delete(snapshotId);
    if (rec && this.snapshotIdByName.get(rec.name) === snapshotId) this.snapshotIdByName.delete(rec.name);
  }

  // ----- internals ------------------------------------------------------------------------------------------

  private indexVolume(rec: VolumeRecord): void {
    this.volumesById.set(rec.volumeId, rec);
    this.volumeIdByName.set(rec.name, rec.volumeId);
  }

  private indexSnapshot(rec: SnapshotRecord): void {
    this.snapshotsById.set(rec.snapshotId, rec);
    this.snapshotIdByName.set(rec.name, rec.snapshotId);
  }

  private serial(path: string, fn: () => Promise<void>): Promise<void> {
    const prev = this.fileQueues.get(path) ?? Promise.resolve();
    const next = prev.catch(() => undefined).then(fn);
    this.fileQueues.set(path, next);
    const clear = (): void => {
      if (this.fileQueues.get(path) === next) this.fileQueues.delete(path);
    };
    next.then(clear, clear);
    return next;
  }

  private writeRecord(path: string, rec: object): Promise<void> {
    const text = `${JSON.stringify(rec, null, 2)}\n`;
    return this.serial(path, () => this.reserve.withReserve('record write', () => writeFileAtomic(path, text)));
  }

  private removeRecord(path: string): Promise<void> {
    return this.serial(path, async () => {
      await rm(path, { force: true });
      await this.reserve.withReserve('record removal', () => fsyncDir(join(path, '..')));
      void this.reserve.ensure();
    });
  }
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Reads `<id>.json` files of `dir`; removes leftover temp files of interrupted writes. */
async function readRecords<T>(
  dir: string,
  validId: (id: string) => boolean,
  parse: (file: string, raw: unknown) => T,
): Promise<T[]> {
  const out: T[] = [];
  for (const entry of (await readdir(dir)).sort()) {
    const path = join(dir, entry);
    if (entry.includes('.tmp-')) {
      await rm(path, { force: true });
      continue;
    }
    if (!entry.endsWith('.json') || !validId(entry.slice(0, -'.json'.length))) continue;
    let raw: unknown;
    try {
      raw = JSON.parse(await readFile(path, 'utf8'));
    } catch (err) {
      throw new CsiError('CSI_ERR_STATE_CORRUPT', `state file ${path}: ${(err as Error).message}`, { cause: err });
    }
    const rec = parse(path, raw);
    const id = (rec as { volumeId?: string; snapshotId?: string }).snapshotId ?? (rec as { volumeId: string }).volumeId;
    if (`${id}.json` !== entry) {
      throw new CsiError('CSI_ERR_STATE_CORRUPT', `state file ${path} holds the record of ${id}`);
    }
    out.push(rec);
  }
  return out;
}
