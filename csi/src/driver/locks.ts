// SPDX-License-Identifier: Apache-2.0
// Per-key operation exclusion (CSI "operation pending for volume" = ABORTED). Keys name what an operation
// touches: `volume/<id>`, `volume-name/<name>`, `snapshot/<id>`, `snapshot-name/<name>`. An operation
// takes all its keys at once or none; a second operation on any held key fails at once with ABORTED (the
// CO retries), it never queues behind the first. Exception: the plugin's own bookkeeping (`internal`, e.g. a
// record update after a background copy ended) is short and not the caller's doing, so a call meeting it
// waits for it instead of failing.
import { CsiError } from '../errors.js';

interface Holder {
  readonly operation: string;
  readonly internal: boolean;
  readonly done: Promise<void>;
}

export class OperationLocks {
  private readonly held = new Map<string, Holder>();

  /** Runs `fn` holding `keys`; ABORTED when any key is held by a (non-internal) operation in flight. */
  async run<T>(
    operation: string,
    keys: readonly string[],
    fn: () => Promise<T>,
    opts: { internal?: boolean } = {},
  ): Promise<T> {
    const unique = [...new Set(keys)];
    for (;;) {
      const holders = unique.map((k) => [k, this.held.get(k)] as const).filter(([, h]) => h !== undefined);
      if (holders.length === 0) break;
      for (const [k, h] of holders) {
        if (!h!.internal) {
          throw new CsiError('CSI_ERR_BUSY', `an operation (${h!.operation}) on ${k} is already in progress`, {
            details: { key: k, heldBy: h!.operation },
          });
        }
      }
      await Promise.all(holders.map(([, h]) => h!.done));
    }
    let release!: () => void;
    const holder: Holder = {
      operation,
      internal: opts.internal === true,
      done: new Promise<void>((r) => (release = r)),
    };
    for (const k of unique) this.held.set(k, holder);
    try {
      return await fn();
    } finally {
      for (const k of unique) this.held.delete(k);
      release();
    }
  }

  isHeld(key: string): boolean {
    return this.held.has(key);
  }
}

export const volumeKey = (id: string): string => `volume/${id}`;
export const volumeNameKey = (name: string): string => `volume-name/${name}`;
export const snapshotKey = (id: string): string => `snapshot/${id}`;
export const snapshotNameKey = (name: string): string => `snapshot-name/${name}`;
