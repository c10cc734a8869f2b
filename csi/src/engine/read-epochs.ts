// SPDX-License-Identifier: Apache-2.0
// Read epochs: lets the in-place restore's copier overwrite a clone block only after every read that may
// have resolved that block to the clone (or to a slot about to change) has finished (EC-2), without blocking
// new reads. Reads that may resolve to the clone (snapshot and RW reads, production reads during a restore)
// run between enter() and leave(); quiesce() waits until every read that entered before the call has left.
// New reads see the updated maps, so they never need to be waited for. Writers never enter: a reader never
// waits on a block a writer holds, so a writer waiting here cannot deadlock.

export class ReadEpochs {
  private epoch = 0;
  private readonly active = new Map<number, number>();
  private waiters: { epoch: number; resolve: () => void }[] = [];

  /** Starts a read; returns the token for leave(). */
  enter(): number {
    const e = this.epoch;
    this.active.set(e, (this.active.get(e) ?? 0) + 1);
    return e;
  }

  leave(token: number): void {
    const n = (this.active.get(token) ?? 0) - 1;
    if (n > 0) {
      this.active.set(token, n);
      return;
    }
    this.active.delete(token);
    if (this.waiters.length === 0) return;
    const oldest = this.oldestActive();
    const still: typeof this.waiters = [];
    for (const w of this.waiters) {
      if (oldest >= w.epoch) w.resolve();
      else still.push(w);
    }
    this.waiters = still;
  }

  /** Resolves once every read that entered before this call has left. */
  quiesce(): Promise<void> {
    const target = ++this.epoch;
    if (this.oldestActive() >= target) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ epoch: target, resolve }));
  }

  /** Runs `fn` as a read. */
  async read<T>(fn: () => Promise<T>): Promise<T> {
    const t = this.enter();
    try {
      return await fn();
    } finally {
      this.leave(t);
    }
  }

  private oldestActive(): number {
    let min = Number.POSITIVE_INFINITY;
    for (const e of this.active.keys()) if (e < min) min = e;
    return min;
  }
}
