// SPDX-License-Identifier: Apache-2.0
// Messages and shared memory between the FUSE server's main thread and its data-path workers.
//
// Every exposed view has a control block `ctl` (Int32Array on a SharedArrayBuffer):
//   [CTL_STATE] 1 = active, 2 = removed (workers answer ENOENT and drop the view)
//   [CTL_BUSY]  requests currently using the view (its fd or maps); incremented on entry, decremented on exit
//   [CTL_GATE]  0 = open; 1 = closed while the main thread needs the view drained (FuseServer.quiesce, e.g.
//               refreshing an RW snapshot): workers back off before entering. Cuts of a live view do not use
//               it: the engine has its own gate for the fast path (engine/shared-state.ts).
//   [CTL_OPENS] open file handles (OPEN minus RELEASE), so the main thread refuses to drop a view in use
//   [CTL_VERSION] version of the view's current descriptor; the main thread posts an `update` and then bumps
//               it (a resize, new engine arrays). A worker whose descriptor carries another version drains its
//               control messages before serving the view, so GETATTR never answers a size older than the
//               last completed update.
// Entry protocol (worker): BUSY += 1, then read GATE; if closed, BUSY -= 1, wait on GATE, retry. Quiesce
// (main): GATE = 1, then wait until BUSY == 0. With sequentially consistent Atomics either the worker sees the
// gate closed or the main thread sees it busy, so nothing enters the view while the gate is closed.
//
// Slow path = hand-off: a request the worker cannot serve alone is posted to the main thread as a
// WorkerRequest carrying the request's `unique` (and, for a write, a transferred copy of its data); the worker
// does not wait and reads the next request. The main thread runs the engine and writes the reply to /dev/fuse
// itself. So the number of slow-path requests in flight is bounded by the kernel (max_background), not by
// the number of workers, and the engine's group commit can batch all of them into one durability barrier.

export const CTL_STATE = 0;
export const CTL_BUSY = 1;
export const CTL_GATE = 2;
export const CTL_OPENS = 3;
export const CTL_VERSION = 4;
export const CTL_WORDS = 5;

export const VIEW_ACTIVE = 1;
export const VIEW_REMOVED = 2;

/**
 * How a worker serves a view:
 * - `file`: pread/pwrite on `fd` and nothing else (pass-through; the `engine_overhead` baseline).
 * - `live`: the engine's production volume, with the engine's fast-path protocol (engine/shared-state.ts):
 *   reads pread the clone file (`fd`), zeros for granules whose meta bit is clear; writes pwrite the clone
 *   when the gate is open, the generation current and every touched block `settled`, inside the engine's
 *   in-flight count; anything else (unsettled blocks, reads while the engine routes reads, discard, flush)
 *   is handed off to the main thread, which runs the engine.
 * - `remote`: every data operation is handed off to the main thread (snapshot views, RW snapshot views).
 */
export type ViewKind = 'file' | 'live' | 'remote';

/**
 * The engine's shared state for worker threads and its protocol: engine/shared-state.ts (one implementation,
 * run by the workers and exercised by the engine's tests).
 */
import type { SharedVolumeState } from '../engine/shared-state.js';

export type EngineFastPath = SharedVolumeState;

export interface ViewDescriptor {
  readonly nodeId: number;
  readonly name: string;
  readonly kind: ViewKind;
  readonly readOnly: boolean;
  readonly sizeBytes: number;
  /** File descriptor (process-wide) for `file` and `live`; -1 for `remote`. Owned and closed by main. */
  readonly fd: number;
  /** O_DIRECT descriptor of the same file (read-only for read-only views), or -1. Owned and closed by main. */
  readonly fdDirect: number;
  readonly ctl: SharedArrayBuffer;
  /** log2 of the block size (st_blksize of the file). */
  readonly blockShift: number;
  /** `live` views only. */
  readonly engine: EngineFastPath | null;
  readonly mtimeSec: number;
  /** Descriptor version (ctl[CTL_VERSION] once this descriptor is current); 0 when the view is added. */
  readonly version: number;
}

/** Main → worker (over the worker's control MessagePort, drained with receiveMessageOnPort). */
export type WorkerControl =
  | { readonly t: 'add'; readonly view: ViewDescriptor }
  /** Replaces a view's descriptor: a new size (online growth), new engine arrays (the engine's generation moved). */
  | { readonly t: 'update'; readonly view: ViewDescriptor }
  | { readonly t: 'stop' };

/** Worker → main (over parentPort): a request handed off to the main thread, which replies to the kernel. */
interface RequestBase {
  readonly worker: number;
  readonly nodeId: number;
  readonly uniqueLo: number;
  readonly uniqueHi: number;
}

export type WorkerRequest =
  | (RequestBase & { readonly t: 'read'; readonly offset: number; readonly length: number })
  | (RequestBase & { readonly t: 'write'; readonly offset: number; readonly data: Uint8Array })
  | (RequestBase & { readonly t: 'discard'; readonly offset: number; readonly length: number; readonly mode: number })
  | (RequestBase & { readonly t: 'flush' });

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

export type WorkerMessage = WorkerRequest | WorkerEvent;

/**
 * Per-worker request counters (Float64Array on a SharedArrayBuffer, written by that worker only, read by the
 * main thread at scrape time). Indexes below; a double counts exactly up to 2^53.
 */
export const COUNTER_FAST_READ = 0;
export const COUNTER_FAST_WRITE = 1;
export const COUNTER_HANDOFF_READ = 2;
export const COUNTER_HANDOFF_WRITE = 3;
export const COUNTER_HANDOFF_DISCARD = 4;
export const COUNTER_HANDOFF_FLUSH = 5;
export const COUNTER_MALFORMED = 6;
export const COUNTER_REQUESTS = 7;
export const COUNTER_SLOTS = 8;

export interface WorkerInit {
  readonly index: number;
  readonly fuseFd: number;
  readonly maxWrite: number;
  readonly views: readonly ViewDescriptor[];
  readonly entryValidSec: number;
  readonly attrValidSec: number;
  readonly parallelDirectWrites: boolean;
  /** A fully written file on the state dir's file system, for the O_DIRECT buffer-alignment probe; or null. */
  readonly dioProbePath: string | null;
  /** COUNTER_SLOTS doubles for this worker's request counters. */
  readonly counters: SharedArrayBuffer;
}
