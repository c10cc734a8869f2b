// SPDX-License-Identifier: Apache-2.0
// Volumes under the node plugin's state dir (architecture.md):
//   <stateDir>/volumes/<volumeId>/clone.img   live blocks (sparse)
//   <stateDir>/volumes/<volumeId>/save.img    save pool
//   <stateDir>/volumes/<volumeId>/meta/       checkpoint-0, checkpoint-1, journal
// Creation builds everything in volumes/.tmp-<volumeId>-<n>/ (first checkpoint included), fsyncs, renames it
// into place and fsyncs volumes/, so a volume directory either is complete or does not exist. Deletion
// renames the directory to volumes/.deleting-<volumeId>-<n> before removing it. `recover()` clears leftovers of
// both after a crash. Volume ids are validated before they touch a path.

import { join } from 'node:path';
import { engineError } from '../engine/errors.js';
import { peekCheckpoint } from '../engine/checkpoint-codec.js';
import { type CreateVolumeOptions, SnapshotVolume, type VolumeRuntimeOptions } from '../engine/volume.js';
import { FileBlockDevice } from './file-block-device.js';
import type { FileIo } from './file-io.js';
import { NodeFileIo } from './file-io.js';
import { FileMetaStore } from './file-meta-store.js';

const VOLUME_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

export function validateVolumeId(id: string): void {
  if (!VOLUME_ID.test(id) || id.includes('..')) {
    throw engineError('STORE_BAD_ID', `volume id ${JSON.stringify(id)} is not a safe path component`, { id });
  }
}

export interface VolumeStoreOptions {
  /** Zeros written into a new volume's journal so that commits need no size change; default 8 MiB. */
  journalPreallocateBytes?: number;
  /** Directory under the state dir holding the volumes; default `volumes` (clone-method images: `clones`). */
  dirName?: string;
}

export const JOURNAL_PREALLOCATE_DEFAULT_BYTES = 8 * 1024 * 1024;

export class VolumeStore {
  private readonly open = new Map<string, SnapshotVolume>();
  private seq = 0;
  private readonly journalPreallocate: number;
  readonly volumesDir: string;

  constructor(
    readonly stateDir: string,
    private readonly io: FileIo = new NodeFileIo(),
    options: VolumeStoreOptions = {},
  ) {
    this.journalPreallocate = options.journalPreallocateBytes ?? JOURNAL_PREALLOCATE_DEFAULT_BYTES;
    this.volumesDir = join(stateDir, options.dirName ?? 'volumes');
    this.io.mkdir(this.volumesDir);
  }

  volumeDir(id: string): string {
    validateVolumeId(id);
    return join(this.volumesDir, id);
  }

  /** Creates and opens a new volume. Fails with STORE_VOLUME_EXISTS when the id is taken. */
  async create(id: string, options: CreateVolumeOptions): Promise<SnapshotVolume> {
    const dir = this.volumeDir(id);
    if (this.io.exists(dir)) throw engineError('STORE_VOLUME_EXISTS', `volume ${id} already exists`, { id });
    const tmp = join(this.volumesDir, `.tmp-${id}-${process.pid}-${this.seq++}`);
    this.io.remove(tmp);
    this.io.mkdir(join(tmp, 'meta'));
    let volume: SnapshotVolume | undefined;
    try {
      const devices = this.devices(tmp, options.blockSize ?? 4096, true);
      await devices.meta.preallocateJournal(this.journalPreallocate);
      volume = await SnapshotVolume.create(devices, options);
      await volume.flush();
      await this.io.syncDir(join(tmp, 'meta'));
      await this.io.syncDir(tmp);
      if (this.io.exists(dir)) throw engineError('STORE_VOLUME_EXISTS', `volume ${id} already exists`, { id });
      this.io.rename(tmp, dir);
      await this.io.syncDir(this.volumesDir);
    } catch (err) {
      await volume?.close().catch(() => {});
      this.io.remove(tmp);
      throw err;
    }
    this.open.set(id, volume);
    return volume;
  }

  /** Opens an existing volume (replaying its journal). One open instance per id and store. */
  async openVolume(id: string, options: VolumeRuntimeOptions = {}): Promise<SnapshotVolume> {
    const dir = this.volumeDir(id);
    const current = this.open.get(id);
    if (current !== undefined && !current.isClosed) {
      throw engineError('STORE_VOLUME_BUSY', `volume ${id} is already open`, { id });
    }
    if (!this.io.exists(join(dir, 'meta'))) {
      throw engineError('STORE_VOLUME_NOT_FOUND', `volume ${id} does not exist`, { id });
    }
    const blockSize = await blockSizeOf(dir, this.io);
    const volume = await SnapshotVolume.open(this.devices(dir, blockSize, false), options);
    this.open.set(id, volume);
    return volume;
  }

  /** Deletes a closed volume and all its snapshots. Missing volumes are not an error. */
  async delete(id: string): Promise<void> {
    const dir = this.volumeDir(id);
    const current = this.open.get(id);
    if (current !== undefined && !current.isClosed) {
      throw engineError('STORE_VOLUME_BUSY', `volume ${id} is open; close it before deleting`, { id });
    }
    this.open.delete(id);
    if (!this.io.exists(dir)) return;
    const doomed = join(this.volumesDir, `.deleting-${id}-${process.pid}-${this.seq++}`);
    this.io.rename(dir, doomed);
    await this.io.syncDir(this.volumesDir);
    this.io.remove(doomed);
  }

  /** Ids of the volumes under the state dir. */
  list(): string[] {
    return this.io
      .readdir(this.volumesDir)
      .filter((n) => !n.startsWith('.'))
      .sort();
  }

  /** Removes half-created and half-deleted volume directories left by a crash; returns their names. */
  recover(): string[] {
    const leftovers = this.io
      .readdir(this.volumesDir)
      .filter((n) => n.startsWith('.tmp-') || n.startsWith('.deleting-'));
    for (const n of leftovers) this.io.remove(join(this.volumesDir, n));
    return leftovers;
  }

  private devices(dir: string, blockSize: number, create: boolean) {
    const clone = this.io.open(join(dir, 'clone.img'), create);
    const save = this.io.open(join(dir, 'save.img'), create);
    return {
      clone: new FileBlockDevice(clone, blockSize),
      save: new FileBlockDevice(save, blockSize),
      meta: FileMetaStore.open(this.io, join(dir, 'meta'), create),
    };
  }
}

/** Reads the block size from the newest valid checkpoint header without opening the volume. */
async function blockSizeOf(dir: string, io: FileIo): Promise<number> {
  const meta = FileMetaStore.open(io, join(dir, 'meta'), false);
  try {
    const { checkpoints } = await meta.load();
    let best: { gen: number; blockSize: number } | null = null;
    for (const cp of checkpoints) {
      try {
        const head = peekCheckpoint(cp);
        if (best === null || head.gen > best.gen) best = head;
      } catch {
        // A torn slot; the other one decides (SnapshotVolume.open reports real corruption).
      }
    }
    if (best !== null) return best.blockSize;
  } finally {
    await meta.close();
  }
  throw engineError('ENGINE_CORRUPT_METADATA', `volume in ${dir} has no checkpoint`, { dir });
}
