// SPDX-License-Identifier: Apache-2.0
// Keeps driver records in step with the backend's background jobs: a clone-method snapshot becomes
// readyToUse when its image copy ended, a hydrated volume's origin becomes `copy` (independent of its
// source). Record updates take the object's operation lock (retrying while a CSI call holds it, or while the
// record is still being created), so they never overwrite a concurrent change of the same record. A crash
// before the update is caught up by recovery.ts; reads of readiness ask the backend anyway.
import type { DriverContext } from './context.js';
import { snapshotKey, volumeKey } from './locks.js';

const RETRY_MS = 100;
const MAX_TRIES = 6000;

/** Runs `fn` under `key` until it reports done (false = the record is not settled yet: retry). */
async function underLock(d: DriverContext, key: string, fn: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < MAX_TRIES; i++) {
    if (!d.locks.isHeld(key)) {
      try {
        if (await d.locks.run('BackgroundJobDone', [key], fn, { internal: true })) return;
      } catch (err) {
        if ((err as { code?: string }).code !== 'CSI_ERR_BUSY') throw err;
      }
    }
    await new Promise((r) => setTimeout(r, RETRY_MS));
  }
  d.log.warn({ key }, 'Gave up updating a record after a background job; the next start catches it up');
}

export function watchBackgroundJobs(d: DriverContext): void {
  d.backend.onJobDone(async (kind, id) => {
    if (kind === 'clone') {
      await underLock(d, snapshotKey(id), async () => {
        const rec = d.state.snapshot(id);
        if (rec?.phase === 'creating') return false;
        if (rec?.method === 'clone' && rec.phase === 'ready' && !rec.readyToUse) {
          await d.state.putSnapshot({ ...rec, readyToUse: true });
          d.log.info({ snapshotId: id }, 'Clone-method snapshot ready');
        }
        return true;
      });
    } else if (kind === 'hydrate') {
      await underLock(d, volumeKey(id), async () => {
        const rec = d.state.volume(id);
        if (rec?.phase === 'creating') return false;
        if (rec?.phase === 'ready' && rec.origin.kind === 'rw-clone') {
          await d.state.putVolume({ ...rec, origin: { kind: 'copy' } });
          d.log.info({ volumeId: id }, 'Volume hydrated');
        }
        return true;
      });
    } else d.log.info({ volumeId: id }, 'In-place restore complete');
  });
}
