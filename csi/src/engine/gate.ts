// SPDX-License-Identifier: Apache-2.0
// Volume-wide shared/exclusive gate. Production writes, discards and snapshot reads enter shared; snapshot
// creation and deletion, discard of whole granules, resize and checkpoints run exclusive. An exclusive
// section starts only when no shared holder is left on the engine thread AND no worker thread is inside a
// direct write (the CTL_INFLIGHT counter of shared-state.ts), and it keeps CTL_GATE = 1 while it runs so
// that workers route new writes to the engine. This is OP-1's quiesce step.

import { CTL_GATE, CTL_INFLIGHT } from './shared-state.js';

export class Gate {
  private holders = 0;
  private exclusiveActive = false;
  private exclusiveQueue: (() => void)[] = [];
  private sharedWaiters: (() => void)[] = [];
  private drained: (() => void) | null = null;

  constructor(
    private readonly control: Int32Array,
    private readonly schedule: (fn: () => void) => void,
  ) {}

  /** Enters shared. Returns null when entered at once, else a promise that resolves once entered. */
  enterShared(): Promise<void> | null {
    if (!this.exclusiveActive && this.exclusiveQueue.length === 0) {
      this.holders++;
      return null;
    }
    return new Promise((resolve) => {
      this.sharedWaiters.push(() => {
        this.holders++;
        resolve();
      });
    });
  }

  leaveShared(): void {
    this.holders--;
    if (this.holders === 0 && this.drained !== null) {
      const d = this.drained;
      this.drained = null;
      d();
    }
  }

  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    if (this.exclusiveActive || this.exclusiveQueue.length > 0) {
      await new Promise<void>((resolve) => this.exclusiveQueue.push(resolve));
    }
    this.exclusiveActive = true;
    Atomics.store(this.control, CTL_GATE, 1);
    try {
      if (this.holders > 0) await new Promise<void>((resolve) => (this.drained = resolve));
      while (Atomics.load(this.control, CTL_INFLIGHT) !== 0) {
        await new Promise<void>((resolve) => this.schedule(resolve));
      }
      return await fn();
    } finally {
      this.exclusiveActive = false;
      const next = this.exclusiveQueue.shift();
      if (next !== undefined) {
        // Hand over directly; shared waiters keep waiting behind the queued exclusive section.
        this.exclusiveActive = true;
        next();
      } else {
        Atomics.store(this.control, CTL_GATE, 0);
        for (const w of this.sharedWaiters.splice(0)) w();
      }
    }
  }
}
