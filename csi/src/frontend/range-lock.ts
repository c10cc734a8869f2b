// SPDX-License-Identifier: Apache-2.0
// FIFO shared/exclusive locks on block ranges of one volume, for the main thread's slow path.
//
// Why: engine operations started from different views of one volume run concurrently on the main thread
// (async I/O). A snapshot read that resolved block b to the clone must finish reading before a production
// write copies b out and overwrites it; holding `shared` on the read range and `exclusive` on the write range
// orders them. After the write the worker fast path may overwrite b directly, which is safe because no
// snapshot read resolves b to the clone any more (the before-image is in the save pool).
//
// Fairness: a request is granted when it conflicts with no holder and no earlier waiter, so an exclusive
// request (a cut takes the whole volume) is not starved by a stream of shared ones.

export type LockMode = 'shared' | 'exclusive';

interface Req {
  readonly first: number;
  readonly last: number;
  readonly mode: LockMode;
  grant?: () => void;
}

function conflicts(a: Req, b: Req): boolean {
  if (a.mode === 'shared' && b.mode === 'shared') return false;
  return a.first <= b.last && b.first <= a.last;
}

export class RangeLock {
  private readonly held = new Set<Req>();
  private readonly waiting: Req[] = [];

  /** Waits for [first, last] (inclusive block indexes) in `mode`; resolves with the release function. */
  acquire(first: number, last: number, mode: LockMode): Promise<() => void> {
    const req: Req = { first, last, mode };
    const release = (): void => {
      this.held.delete(req);
      this.pump();
    };
    if (this.waiting.length === 0 && ![...this.held].some((h) => conflicts(h, req))) {
      this.held.add(req);
      return Promise.resolve(release);
    }
    return new Promise((resolve) => {
      req.grant = () => resolve(release);
      this.waiting.push(req);
    });
  }

  async with<T>(first: number, last: number, mode: LockMode, fn: () => Promise<T>): Promise<T> {
    const release = await this.acquire(first, last, mode);
    try {
      return await fn();
    } finally {
      release();
    }
  }

  get holders(): number {
    return this.held.size;
  }

  get waiters(): number {
    return this.waiting.length;
  }

  private pump(): void {
    for (let i = 0; i < this.waiting.length;) {
      const req = this.waiting[i] as Req;
      const blocked =
        [...this.held].some((h) => conflicts(h, req)) || this.waiting.slice(0, i).some((w) => conflicts(w, req));
      if (blocked) {
        i++;
        continue;
      }
      this.waiting.splice(i, 1);
      this.held.add(req);
      req.grant?.();
    }
  }
}
