// SPDX-License-Identifier: Apache-2.0
// Base of every typed error in loopsnap. `code` is stable (documented in docs/errors.md and asserted by a
// test); messages may change. Components subclass it or build instances through their own catalogue.

export class LoopsnapError extends Error {
  readonly code: string;
  readonly details: Readonly<Record<string, unknown>>;

  constructor(code: string, message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.details = Object.freeze({ ...(options?.details ?? {}) });
  }
}

export function isLoopsnapError(err: unknown, code?: string): err is LoopsnapError {
  return err instanceof LoopsnapError && (code === undefined || err.code === code);
}
