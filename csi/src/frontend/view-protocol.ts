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
 * - `live`: the engine's production volume, with the engine's fast-path protocol (engine/shared-state.ts):
 *   reads pread the clone file (`fd`), zeros for granules whose meta bit is clear; writes pwrite the clone
 *   when the gate is open, the generation current and every touched block `settled`, inside the engine's
 *   in-flight count; anything else (unsettled blocks, reads while the engine routes reads, discard, flush)
 *   is a call into the main thread, which runs the engine.
 * - `remote`: every data operation is a call into the main thread (snapshot views, RW snapshot views).
 */
export type ViewKind = 'file' | 'live' | 'remote';

/**
 * The engine's shared state for worker threads (structurally engine/shared-state.ts SharedVolumeState).
 * control: [ENGINE_CTL_GATE, ENGINE_CTL_INFLIGHT, ENGINE_CTL_GENERATION, ENGINE_CTL_FLAGS, ...];
 * settled: bit per block, 1 = a production write needs no engine work; meta: MBM_P, bit per granule.
 */
export interface EngineFastPath {
  readonly control: Int32Array;
  readonly settled: Uint32Array;
  readonly meta: Uint32Array;
  readonly blockSize: number;
  readonly blockCount: number;
  readonly granuleShift: number;
  readonly generation: number;
}

export const ENGINE_CTL_GATE = 0;
export const ENGINE_CTL_INFLIGHT = 1;
export const ENGINE_CTL_GENERATION = 2;
export const ENGINE_CTL_FLAGS = 3;
export const ENGINE_FLAG_READS_VIA_ENGINE = 1;

export interface ViewDescriptor {
  readonly nodeId: number;
  readonly name: string;
  readonly kind: ViewKind;
  readonly readOnly: boolean;
  readonly sizeBytes: number;
  /** File descriptor (process-wide) for `file` and `live`; -1 for `remote`. Owned and closed by main. */
  readonly fd: number;
  readonly ctl: SharedArrayBuffer;
  /** log2 of the block size (st_blksize of the file). */
  readonly blockShift: number;
  /** `live` views only. */
  readonly engine: EngineFastPath | null;
  readonly mtimeSec: number;
}

/** Main → worker (over the worker's control MessagePort, drained with receiveMessageOnPort). */
export type WorkerControl =
  | { readonly t: 'add'; readonly view: ViewDescriptor }
  /** Replaces the engine arrays of a live view (after a resize bumped the engine's generation). */
  | { readonly t: 'update'; readonly view: ViewDescriptor }
  | { readonly t: 'stop' };

/** Worker → main (over parentPort). Calls carry `worker` and expect a result in that worker's call block. */
export type WorkerCall =
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
