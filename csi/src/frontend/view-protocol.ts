// SPDX-License-Identifier: Apache-2.0
// Messages and shared memory between the FUSE server's main thread and its data-path workers.
//
// Every exposed view has a control block `ctl` (Int32Array on a SharedArrayBuffer):
//   [CTL_STATE] 1 = active, 2 = removed (workers answer ENOENT and drop the view)
//   [CTL_BUSY]  requests currently using the view (its fd or maps); incremented on entry, decremented on exit
//   [CTL_GATE]  0 = open; 1 = closed while the main thread cuts a snapshot: workers back off before entering
//   [CTL_OPENS] open file handles (OPEN minus RELEASE), so the main thread refuses to drop a view in use
// Entry protocol (worker): BUSY += 1, then read GATE; if closed, BUSY -= 1, wait on GATE, retry. Quiesce
// (main): GATE = 1, then wait until BUSY == 0. With sequentially consistent Atomics either the worker sees the
// gate closed or the main thread sees it busy, so nothing enters the view while the gate is closed.
//
// Each worker has its own call block `call` (Int32Array [CALL_STATE, CALL_RESULT]) for blocking calls into
// the main thread (the slow path): the worker stores CALL_STATE = 0, posts a WorkerCall, and Atomics.waits
// until the main thread stores the result (>= 0 success value, < 0 negated errno) and CALL_STATE = 1.
// Data for remote reads is placed by the main thread into the worker's reply buffer (a SharedArrayBuffer) at
// OUT_HEADER_BYTES; data for remote writes is read from the worker's request buffer at `dataOffset`.

export const CTL_STATE = 0;
export const CTL_BUSY = 1;
export const CTL_GATE = 2;
export const CTL_OPENS = 3;
export const CTL_WORDS = 4;

export const VIEW_ACTIVE = 1;
export const VIEW_REMOVED = 2;

export const CALL_STATE = 0;
export const CALL_RESULT = 1;
export const CALL_WORDS = 2;

/**
 * How a worker serves a view:
 * - `file`: pread/pwrite on `fd` and nothing else (pass-through; the `engine_overhead` baseline).
 * - `live`: the engine's production view. Reads: pread on `fd` (the clone file), zeros for granules whose
 *   `valid` bit is clear. Writes: pwrite on `fd` when every touched block's `writeDirect` bit is set,
 *   otherwise a `prepare` call first (the engine copies before-images, makes them durable, sets the bits).
 *   Discard and flush go to the main thread.
 * - `remote`: every data operation is a call into the main thread (snapshot views, RW snapshot views).
 */
export type ViewKind = 'file' | 'live' | 'remote';

export interface ViewDescriptor {
  readonly nodeId: number;
  readonly name: string;
  readonly kind: ViewKind;
  readonly readOnly: boolean;
  readonly sizeBytes: number;
  /** File descriptor (process-wide) for `file` and `live`; -1 for `remote`. Owned and closed by main. */
  readonly fd: number;
  readonly ctl: SharedArrayBuffer;
  /** log2 of the block size; blocks index `writeDirect`. */
  readonly blockShift: number;
  /** log2 of blocks per meta-bit-map granule; granules index `valid`. */
  readonly granuleShift: number;
  readonly writeDirect: SharedArrayBuffer | null;
  readonly valid: SharedArrayBuffer | null;
  readonly mtimeSec: number;
}

/** Main → worker (over the worker's control MessagePort, drained with receiveMessageOnPort). */
export type WorkerControl = { readonly t: 'add'; readonly view: ViewDescriptor } | { readonly t: 'stop' };

/** Worker → main (over parentPort). Calls carry `worker` and expect a result in that worker's call block. */
export type WorkerCall =
  | { readonly t: 'prepare'; readonly worker: number; readonly nodeId: number; offset: number; length: number }
  | { readonly t: 'read'; readonly worker: number; readonly nodeId: number; offset: number; length: number }
  | {
      readonly t: 'write';
      readonly worker: number;
      readonly nodeId: number;
      offset: number;
      length: number;
      dataOffset: number;
    }
  | {
      readonly t: 'discard';
      readonly worker: number;
      readonly nodeId: number;
      offset: number;
      length: number;
      mode: number;
    }
  | { readonly t: 'flush'; readonly worker: number; readonly nodeId: number };

/** Worker → main notifications (no reply). */
export type WorkerEvent =
  | { readonly t: 'ready'; readonly worker: number }
  | { readonly t: 'init'; readonly worker: number; major: number; minor: number; flags: number; maxWrite: number }
  | { readonly t: 'exit'; readonly worker: number; reason: string }
  | {
      readonly t: 'log';
      readonly worker: number;
      level: 'debug' | 'info' | 'warn' | 'error';
      msg: string;
      fields: Record<string, unknown>;
    };

export type WorkerMessage = WorkerCall | WorkerEvent;

export interface WorkerInit {
  readonly index: number;
  readonly fuseFd: number;
  /** Request buffer (max_write + headroom) and reply buffer (max read + header), shared with main. */
  readonly inBuf: SharedArrayBuffer;
  readonly outBuf: SharedArrayBuffer;
  readonly call: SharedArrayBuffer;
  readonly maxWrite: number;
  readonly views: readonly ViewDescriptor[];
  readonly entryValidSec: number;
  readonly attrValidSec: number;
  readonly parallelDirectWrites: boolean;
}
