// SPDX-License-Identifier: Apache-2.0
// Kubernetes resource quantities (storage sizes) <-> bytes, and CSI/metav1 time formats.
import { ControllerError, ErrorCode } from './errors.js';

const SUFFIX: Record<string, bigint> = {
  '': 1n,
  Ki: 1024n,
  Mi: 1024n ** 2n,
  Gi: 1024n ** 3n,
  Ti: 1024n ** 4n,
  Pi: 1024n ** 5n,
  Ei: 1024n ** 6n,
  k: 1000n,
  M: 1000n ** 2n,
  G: 1000n ** 3n,
  T: 1000n ** 4n,
  P: 1000n ** 5n,
  E: 1000n ** 6n,
};

/** Bytes of a quantity such as "1Gi", "500M", "1.5Gi" or "1e9"; fractions of a byte round up. */
export function parseQuantityBytes(q: string): bigint {
  const m = /^([0-9]+)(?:\.([0-9]+))?(?:([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E))?$/.exec(q.trim());
  if (!m) throw new ControllerError(ErrorCode.InvalidSpec, `invalid quantity "${q}"`);
  const [, whole = '0', frac = '', exp, suffix = ''] = m;
  const mult = SUFFIX[suffix] ?? 1n;
  let num = BigInt(whole + frac) * mult;
  let den = 10n ** BigInt(frac.length);
  if (exp) {
    const e = Number(exp.slice(1));
    if (e >= 0) num *= 10n ** BigInt(e);
    else den *= 10n ** BigInt(-e);
  }
  return (num + den - 1n) / den;
}

/** The shortest exact binary-suffixed form: 1073741824 -> "1Gi", 1000 -> "1000". */
export function formatQuantityBytes(bytes: bigint): string {
  for (const s of ['Ei', 'Pi', 'Ti', 'Gi', 'Mi', 'Ki'] as const) {
    const m = SUFFIX[s] as bigint;
    if (bytes > 0n && bytes % m === 0n) return `${bytes / m}${s}`;
  }
  return bytes.toString();
}

/** metav1.Time (RFC 3339, whole seconds) for nanoseconds since the epoch. */
export function nsToTime(ns: bigint | number): string {
  const ms = Number(BigInt(ns) / 1_000_000n);
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

export function nowTime(): string {
  return new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
}
