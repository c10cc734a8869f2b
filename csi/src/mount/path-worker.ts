// SPDX-License-Identifier: Apache-2.0
// Entry point of a path worker thread (confined-path.ts starts them): runs one path-ops.ts call per message
// and answers { id, ok, value } or { id, ok: false, failure }. Descriptors it opens belong to the process, so
// the main thread uses and closes them.
import { parentPort } from 'node:worker_threads';
import * as ops from './path-ops.js';
import { PathOpError } from './path-ops.js';

export const PATH_OPS = {
  locate: ops.locate,
  openEntry: ops.openEntry,
  makeDir: ops.makeDir,
  makeFile: ops.makeFile,
  removeCreated: ops.removeCreated,
  listDir: ops.listDir,
  usage: ops.usage,
  closeFds: ops.closeFds,
  checkFsOptions: ops.checkFsOptions,
  checkFsOptionsOnDevice: ops.checkFsOptionsOnDevice,
} as const;

export type PathOpName = keyof typeof PATH_OPS;

export interface PathRequest {
  readonly id: number;
  readonly op: PathOpName;
  readonly args: readonly unknown[];
}

export type PathReply =
  | { readonly id: number; readonly ok: true; readonly value: unknown }
  | { readonly id: number; readonly ok: false; readonly failure: ops.PathFailure };

const port = parentPort;
if (port) {
  port.on('message', (req: PathRequest) => {
    let reply: PathReply;
    try {
      const fn = PATH_OPS[req.op] as (...a: unknown[]) => unknown;
      reply = { id: req.id, ok: true, value: fn(...req.args) };
    } catch (err) {
      const failure: ops.PathFailure =
        err instanceof PathOpError
          ? err.failure
          : { reason: 'errno', at: '', errno: (err as NodeJS.ErrnoException).code ?? 'EIO', message: String(err) };
      reply = { id: req.id, ok: false, failure };
    }
    port.postMessage(reply);
  });
}
