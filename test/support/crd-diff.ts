// SPDX-License-Identifier: Apache-2.0
// Structural comparison of two CustomResourceDefinitions: everything the API server enforces or shows
// (names, scope, versions, served/storage flags, schemas with types, formats, required lists, enums,
// patterns, bounds, x-kubernetes-* extensions and CEL rules, subresources, printer columns) must be equal.
// Human prose (descriptions) and our own labels are ignored.

export interface CrdDiff {
  readonly path: string;
  readonly ours: unknown;
  readonly upstream: unknown;
}

const IGNORED_KEYS = new Set(['description']);

/** Keys whose array values are sets (order carries no meaning). */
const SET_KEYS = new Set(['required', 'shortNames', 'enum']);

export function normalize(value: unknown, key = ''): unknown {
  if (Array.isArray(value)) {
    const items = value.map((v) => normalize(v));
    if (SET_KEYS.has(key)) return [...items].sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b)));
    return items;
  }
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
      if (IGNORED_KEYS.has(k)) continue;
      if (k === 'rule' && typeof v === 'string') {
        out[k] = v.replace(/\s+/g, ' ').trim();
        continue;
      }
      out[k] = normalize(v, k);
    }
    return out;
  }
  return value;
}

/** Every path where the two normalized values differ. */
export function diffValues(ours: unknown, upstream: unknown, path = ''): CrdDiff[] {
  if (Array.isArray(ours) && Array.isArray(upstream)) {
    const out: CrdDiff[] = [];
    const n = Math.max(ours.length, upstream.length);
    for (let i = 0; i < n; i++) out.push(...diffValues(ours[i], upstream[i], `${path}[${i}]`));
    return out;
  }
  if (isObject(ours) && isObject(upstream)) {
    const out: CrdDiff[] = [];
    const keys = new Set([...Object.keys(ours), ...Object.keys(upstream)]);
    for (const k of [...keys].sort()) out.push(...diffValues(ours[k], upstream[k], path ? `${path}.${k}` : k));
    return out;
  }
  return JSON.stringify(ours) === JSON.stringify(upstream) ? [] : [{ path, ours, upstream }];
}

/** Compares what the API server sees of two CRDs: `spec` plus the api-approved annotation. */
export function diffCrds(ours: CrdLike, upstream: CrdLike): CrdDiff[] {
  const pick = (c: CrdLike) =>
    normalize({
      name: c.metadata?.name,
      apiApproved: c.metadata?.annotations?.['api-approved.kubernetes.io'],
      spec: c.spec,
    });
  return diffValues(pick(ours), pick(upstream));
}

export interface CrdLike {
  metadata?: { name?: string; annotations?: Record<string, string> };
  spec?: unknown;
}

/** Counts nodes of a kind in a schema, to prove a comparison was not vacuous. */
export function countKey(value: unknown, key: string): number {
  if (Array.isArray(value)) return value.reduce<number>((n, v) => n + countKey(v, key), 0);
  if (isObject(value)) {
    let n = 0;
    for (const [k, v] of Object.entries(value)) n += (k === key ? 1 : 0) + countKey(v, key);
    return n;
  }
  return 0;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}
