// SPDX-License-Identifier: Apache-2.0
// Consistent cuts: freeze the file system above a view (flushes its dirty data and journal, blocks new
// writes), run the cut, thaw. Thaw always runs, also when the cut fails; a failing thaw is reported together
// with the cut's own error.
import type { Logger } from '../../../common/src/log.js';
import { MountError } from './errors.js';
import { run } from './exec.js';

export interface FreezeOptions {
  readonly log?: Logger;
  /** Upper bound for fsfreeze -f itself (it waits for in-flight writes to drain). Default 60 s. */
  readonly freezeTimeoutMs?: number;
}

export async function freezeFs(mountpoint: string, timeoutMs = 60_000): Promise<void> {
  try {
    await run('fsfreeze', ['--freeze', mountpoint], { timeoutMs });
  } catch (err) {
    throw new MountError('DP_ERR_FREEZE', `freeze ${mountpoint}: ${(err as Error).message}`, { cause: err });
  }
}

/** Thaws `mountpoint`. Thawing a file system that is not frozen is not an error. */
export async function thawFs(mountpoint: string): Promise<void> {
  try {
    await run('fsfreeze', ['--unfreeze', mountpoint], { timeoutMs: 60_000 });
  } catch (err) {
    const stderr = String((err as MountError).details?.stderr ?? '');
    if (/Invalid argument/i.test(stderr)) return; // EINVAL: not frozen
    throw new MountError('DP_ERR_FREEZE', `thaw ${mountpoint}: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Runs `cut` with the file system at `mountpoint` frozen. The result of `cut` is returned; if `cut` throws,
 * the file system is thawed and the error rethrown (an AggregateError when the thaw fails too).
 */
export async function withFrozenFs<T>(mountpoint: string, cut: () => Promise<T>, opts: FreezeOptions = {}): Promise<T> {
  const started = Date.now();
  await freezeFs(mountpoint, opts.freezeTimeoutMs);
  let result: T;
  try {
    result = await cut();
  } catch (err) {
    try {
      await thawFs(mountpoint);
    } catch (thawErr) {
      throw new AggregateError([err, thawErr], `cut failed and thaw of ${mountpoint} failed`, { cause: thawErr });
    }
    throw err;
  }
  await thawFs(mountpoint);
  opts.log?.info({ path: mountpoint, durationSeconds: (Date.now() - started) / 1000 }, 'Thawed file system after cut');
  return result;
}
