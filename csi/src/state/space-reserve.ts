// SPDX-License-Identifier: Apache-2.0
// Space held back for the writes the plugin needs to delete and to recover on a full disk (issue 15,
// ADR 0012): a file of zeros (`<stateDir>/csi/space-reserve`, blocks really allocated) that is given back
// the first time a metadata write of the driver meets ENOSPC, so that write (a record of NodeUnpublish,
// DeleteSnapshot, DeleteVolume...) and the engine commits behind it find room, and the deletes they serve
// free space for everything else. It is taken again once the file system has twice its size free.
// A reserve that cannot be made (the disk is already full at start) is not an error: the plugin starts
// without one and logs it.
import { open, rm, stat, statfs } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Logger } from '../../../common/src/log.js';

export const SPACE_RESERVE_DEFAULT_BYTES = 16 * 1024 * 1024;
const CHUNK_BYTES = 1024 * 1024;

export function isNoSpace(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT' || code === 'ENGINE_DEVICE_NO_SPACE';
}

export class SpaceReserve {
  private taking: Promise<void> | null = null;

  constructor(
    readonly path: string,
    readonly bytes: number,
    private readonly log: Logger,
  ) {}

  /** Bytes the reserve file holds now. */
  async heldBytes(): Promise<number> {
    return stat(this.path).then(
      (s) => s.blocks * 512,
      () => 0,
    );
  }

  /** Takes the reserve when it is missing and the file system has twice its size free; never throws. */
  ensure(): Promise<void> {
    this.taking ??= this.take().finally(() => {
      this.taking = null;
    });
    return this.taking;
  }

  /** Gives the reserve back (the file is removed); true when it held space. */
  async release(reason: string): Promise<boolean> {
    const held = await this.heldBytes();
    if (held === 0) return false;
    await rm(this.path, { force: true });
    this.log.warn({ path: this.path, bytes: held, reason }, 'Released the space reserve: the disk is full');
    return true;
  }

  /** Runs `fn`; on ENOSPC gives the reserve back and runs it once more. */
  async withReserve<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (!isNoSpace(err) || !(await this.release(what))) throw err;
      return fn();
    }
  }

  private async take(): Promise<void> {
    if (this.bytes <= 0) return;
    try {
      const held = await this.heldBytes();
      if (held >= this.bytes) return;
      const fs = await statfs(dirname(this.path));
      if (fs.bavail * fs.bsize < 2 * this.bytes) {
        this.log.warn(
          { path: this.path, bytes: this.bytes, freeBytes: fs.bavail * fs.bsize },
          'Could not take the space reserve: too little free space',
        );
        return;
      }
      const fh = await open(this.path, 'w', 0o600);
      try {
        const zeros = new Uint8Array(CHUNK_BYTES);
        for (let pos = 0; pos < this.bytes; pos += CHUNK_BYTES) {
          await fh.write(zeros, 0, Math.min(CHUNK_BYTES, this.bytes - pos), pos);
        }
        await fh.sync();
      } finally {
        await fh.close();
      }
      this.log.info({ path: this.path, bytes: this.bytes }, 'Took the space reserve');
    } catch (err) {
      await rm(this.path, { force: true }).catch(() => undefined);
      this.log.warn({ err, path: this.path }, 'Could not take the space reserve');
    }
  }
}
