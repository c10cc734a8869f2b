// SPDX-License-Identifier: Apache-2.0
// ListVolumes / ListSnapshots pagination. Items are listed in ascending id order; next_token is the id of
// the last item returned, and a page starts after that id. A token stays valid when its item is deleted
// meanwhile (the page simply starts at the next id); a token that is not an id of ours is ABORTED.
import { CsiError } from '../errors.js';

export interface Page<T> {
  readonly entries: T[];
  readonly nextToken: string;
}

export function paginate<T>(
  sorted: readonly T[],
  idOf: (item: T) => string,
  opts: { maxEntries?: number; startingToken?: string; validToken: (token: string) => boolean },
): Page<T> {
  const max = opts.maxEntries ?? 0;
  if (!Number.isInteger(max) || max < 0) {
    throw new CsiError('CSI_ERR_INVALID_FIELD', `max_entries ${max} must not be negative`);
  }
  const token = opts.startingToken ?? '';
  if (token !== '' && !opts.validToken(token)) {
    throw new CsiError('CSI_ERR_BAD_TOKEN', `starting_token ${JSON.stringify(token)} was not issued by this driver`);
  }
  const from = token === '' ? 0 : firstAfter(sorted, idOf, token);
  const end = max === 0 ? sorted.length : Math.min(sorted.length, from + max);
  const entries = sorted.slice(from, end);
  const last = entries.at(-1);
  return { entries, nextToken: end < sorted.length && last !== undefined ? idOf(last) : '' };
}

function firstAfter<T>(sorted: readonly T[], idOf: (item: T) => string, token: string): number {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (idOf(sorted[mid] as T) <= token) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
