// SPDX-License-Identifier: Apache-2.0
// Start-up cleanup after the node plugin died: its FUSE connection is gone, so every loop device on a view
// file answers EIO and every file system on those loops is dead. We remove exactly what is ours, identified
// by the FUSE mount point under our state dir: loop devices whose backing file lies under it, every mount of
// those loop devices (staging, publish binds, anywhere), and the FUSE mount itself. Nothing else is touched.
//
// Order: thaw (a frozen file system would block its unmount) -> unmount every mount of the loop (lazy when
// busy; pods' bind mounts may pin it) -> detach the loop (autoclear when still referenced) -> unmount FUSE.
import { writeFile } from 'node:fs/promises';
import type { Logger } from '../../../common/src/log.js';
import { run } from './exec.js';
import { loopsBackedUnder } from './loop-device.js';
import { readMountInfo } from './mountinfo.js';
import { unmount } from './mounts.js';

export interface CleanupReport {
  readonly loopsDetached: string[];
  readonly mountsRemoved: string[];
  readonly fuseUnmounted: boolean;
  readonly errors: string[];
}

export interface CleanupOptions {
  /** Our FUSE mount point, `<stateDir>/fuse`. */
  readonly fuseMountpoint: string;
  /** File-system type of our FUSE mount (fuse.loopsnap). */
  readonly fuseFsType: string;
  readonly log?: Logger;
}

export async function cleanupStale(opts: CleanupOptions): Promise<CleanupReport> {
  const report = {
    loopsDetached: [] as string[],
    mountsRemoved: [] as string[],
    fuseUnmounted: false,
    errors: [] as string[],
  };
  const loops = await loopsBackedUnder(opts.fuseMountpoint);
  const mounts = await readMountInfo();
  for (const loop of loops) {
    const ofLoop = mounts.filter((m) => m.major === loop.major && m.minor === loop.minor).reverse();
    for (const m of ofLoop) {
      try {
        await run('fsfreeze', ['--unfreeze', m.mountPoint], { okCodes: [0, 1], timeoutMs: 10_000 });
        await unmount(m.mountPoint, { lazy: true });
        report.mountsRemoved.push(m.mountPoint);
      } catch (err) {
        report.errors.push(`unmount ${m.mountPoint}: ${(err as Error).message}`);
      }
    }
    try {
      await run('losetup', ['--detach', loop.device]);
      report.loopsDetached.push(loop.device);
    } catch (err) {
      report.errors.push(`detach ${loop.device}: ${(err as Error).message}`);
    }
  }
  const fuse = mounts.filter((m) => m.mountPoint === opts.fuseMountpoint && m.fsType === opts.fuseFsType);
  for (const m of fuse.reverse()) {
    try {
      // A dead connection cannot be reached for a clean unmount; abort it first so nothing waits on it.
      await writeFile(`/sys/fs/fuse/connections/${m.minor}/abort`, '1').catch(() => undefined);
      await unmount(m.mountPoint, { lazy: true });
      report.fuseUnmounted = true;
    } catch (err) {
      report.errors.push(`unmount ${m.mountPoint}: ${(err as Error).message}`);
    }
  }
  if (report.loopsDetached.length + report.mountsRemoved.length > 0 || report.fuseUnmounted) {
    opts.log?.warn(report, 'Cleaned up stale data-path state of an earlier run');
  }
  return report;
}
