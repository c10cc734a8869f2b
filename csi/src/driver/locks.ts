// SPDX-License-Identifier: Apache-2.0
// Per-key operation exclusion (CSI "operation pending for volume" = ABORTED). Keys name what an operation
// touches: `volume/<id>`, `volume-name/<name>`, `snapshot/<id>`, `snapshot-name/<name>`. An operation
// takes all its keys at once or none; a second operation on any held key fails at once with ABORTED (the
// CO retries), it never queues behind the first.
import { CsiError } from '../errors.js';

export class OperationLocks {
  private readonly held = new Map<string, string>();

  /** Runs `fn` holding `keys`; ABORTED when any key is held by an operation in flight. */
  async run<T>(operation: string, keys: readonly string[], fn: () => Promise<T>): Promise<T> {
    const unique = [...new Set(keys)];
    for (const k of unique) {
      const by = this.held.get(k);
      if (by !== undefined) {
        throw new CsiError('CSI_ERR_BUSY', `an operation (${by}) on ${k} is already in progress`, {
          details: { key: k, heldBy: by },
        });
      }
    }
    for (const k of unique) this.held.set(k, operation);
    try {
      return await fn();
    } finally {
      for (const k of unique) this.held.delete(k);
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
