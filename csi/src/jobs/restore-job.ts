// SPDX-License-Identifier: Apache-2.0
// The background copier of an in-place restore (OP-13 step 6) as a scheduler job. Its durable state is the
// restore record in the volume's own journal, so after a crash or restart the owner submits a new RestoreJob
// for every volume whose restoreStatus() is not null and the copy continues where the record says.
// A flush every `flushEveryBytes` makes the placed blocks (and their RP clears) durable, bounding the work a
// crash can make the copier redo.
import type { SnapshotVolume } from '../engine/volume.js';
import type { BackgroundJob, JobProgress } from './scheduler.js';

export class RestoreJob implements BackgroundJob {
  readonly kind = 'restore';
  private last: JobProgress;
  private sinceFlush = 0;

  constructor(
    private readonly volume: SnapshotVolume,
    readonly id: string,
    private readonly flushEveryBytes = 256 * 1024 * 1024,
  ) {
    const st = volume.restoreStatus();
    this.last = st === null ? { doneBytes: 0, totalBytes: 0 } : { doneBytes: st.doneBytes, totalBytes: st.totalBytes };
  }

  progress(): JobProgress {
    return this.last;
  }

  async step(budgetBytes: number): Promise<boolean> {
    const blocks = Math.max(1, Math.floor(budgetBytes / this.volume.blockSize));
    const st = await this.volume.restoreStep(blocks);
    if (st === null) {
      this.last = { doneBytes: this.last.totalBytes, totalBytes: this.last.totalBytes };
      return true;
    }
    this.sinceFlush += st.doneBytes - this.last.doneBytes;
    this.last = { doneBytes: st.doneBytes, totalBytes: st.totalBytes };
    if (this.sinceFlush >= this.flushEveryBytes) {
      this.sinceFlush = 0;
      await this.volume.flush();
    }
    return false;
  }
}
