// SPDX-License-Identifier: Apache-2.0
// Helpers shared by the crash tests: a seeded generator and "acceptable content" tracking per view.
//
// Candidates of a view (the live volume or an RW snapshot): per block, the value at the last durable point
// followed by every value written since. After a crash, each 512-byte sector of a block must equal that
// sector of one candidate (sectors are written atomically; unflushed writes may land in any subset).

export const SECTOR = 512;

export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Sector-wise: every 512-byte sector of `got` equals that sector of one candidate. */
export function sectorsMatch(got: Uint8Array, candidates: readonly Uint8Array[]): boolean {
  for (let s = 0; s < got.length; s += SECTOR) {
    const sector = got.subarray(s, s + SECTOR);
    if (!candidates.some((c) => equal(c.subarray(s, s + SECTOR), sector))) return false;
  }
  return true;
}

/** Acceptable contents of several views, keyed by name. */
export class Candidates {
  private readonly views = new Map<string, Uint8Array[][]>();

  /** Everything current is durable: each block's only candidate is its current value. */
  durable(name: string, blocks: readonly Uint8Array[]): void {
    this.views.set(
      name,
      blocks.map((b) => [b.slice()]),
    );
  }

  /** Adds the current values as candidates where they differ from the latest one. */
  note(name: string, blocks: readonly Uint8Array[]): void {
    const list = this.views.get(name);
    if (list === undefined) {
      this.durable(name, blocks);
      return;
    }
    blocks.forEach((b, i) => {
      const c = list[i];
      if (c === undefined) list[i] = [new Uint8Array(b.length), b.slice()];
      else if (!equal(c[c.length - 1]!, b)) c.push(b.slice());
    });
  }

  forget(name: string): void {
    this.views.delete(name);
  }

  has(name: string): boolean {
    return this.views.has(name);
  }

  /** Throws when a block of `got` (the whole view read back) matches no candidate. */
  check(name: string, got: Uint8Array, blockSize: number): void {
    const list = this.views.get(name) ?? [];
    for (let b = 0; b * blockSize < got.length; b++) {
      const cands = list[b] ?? [new Uint8Array(blockSize)];
      if (!sectorsMatch(got.subarray(b * blockSize, (b + 1) * blockSize), cands)) {
        if (process.env.LOOPSNAP_CRASH_TRACE === '1') {
          const hex = (x: Uint8Array) => Buffer.from(x.subarray(0, 8)).toString('hex');
          console.log(
            `${name} block ${b}: got ${hex(got.subarray(b * blockSize))}, candidates ${cands.map(hex).join(' ')}`,
          );
        }
        throw new Error(`${name} block ${b}: recovered content matches no acknowledged state`);
      }
    }
  }
}
