// SPDX-License-Identifier: Apache-2.0
// Every CSI method goes through `unary` or `serverStream`: they time the call, turn thrown errors into gRPC
// statuses (errors.ts), count it in the metrics, and write exactly one structured log line per call:
//   { method, volumeId?, snapshotId?, ..., durationSeconds, code }
// at debug for read-only calls (Probe and capabilities at trace), info for calls that change something,
// warn for client errors and error (with the stack) for INTERNAL/UNKNOWN/DATA_LOSS. The request body is
// logged at trace only, with secrets redacted by the logger (common/src/log.ts).
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../../../common/src/log.js';
import { CsiError, statusName, toGrpcStatus } from '../errors.js';
import type { CsiMetrics } from '../metrics.js';

export interface CallContext {
  readonly method: string;
  readonly log: Logger;
  /** Aborted when the client cancels or the deadline passes. */
  readonly signal: AbortSignal;
}

export interface HandlerDeps {
  readonly log: Logger;
  readonly metrics?: CsiMetrics;
  /** When false, calls fail with UNAVAILABLE (start-up, shutdown). Identity calls ignore it. */
  readonly serving?: () => boolean;
}

const TRACE_METHODS = new Set([
  'Probe',
  'GetPluginInfo',
  'GetPluginCapabilities',
  'ControllerGetCapabilities',
  'NodeGetCapabilities',
]);
const READ_METHODS = new Set([
  'NodeGetInfo',
  'NodeGetVolumeStats',
  'GetCapacity',
  'ListVolumes',
  'ListSnapshots',
  'GetSnapshot',
  'ControllerGetVolume',
  'ValidateVolumeCapabilities',
  'GetMetadataAllocated',
  'GetMetadataDelta',
  'GetOperation',
]);
const IDENTITY_METHODS = new Set(['Probe', 'GetPluginInfo', 'GetPluginCapabilities']);

const LOGGED_FIELDS: ReadonlyArray<readonly [string, string]> = [
  ['volume_id', 'volumeId'],
  ['snapshot_id', 'snapshotId'],
  ['source_volume_id', 'sourceVolumeId'],
  ['base_snapshot_id', 'baseSnapshotId'],
  ['target_snapshot_id', 'targetSnapshotId'],
  ['name', 'name'],
  ['staging_target_path', 'stagingTargetPath'],
  ['target_path', 'targetPath'],
  ['volume_path', 'volumePath'],
  ['operation_id', 'operationId'],
];

/** The identifying fields of a request, renamed to our log keys. */
export function requestFields(req: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  if (typeof req !== 'object' || req === null) return out;
  const r = req as Record<string, unknown>;
  for (const [from, to] of LOGGED_FIELDS) {
    const v = r[from];
    if (typeof v === 'string' && v !== '') out[to] = v;
  }
  return out;
}

function levelFor(method: string, code: number): 'trace' | 'debug' | 'info' | 'warn' | 'error' {
  if (code === grpc.status.INTERNAL || code === grpc.status.UNKNOWN || code === grpc.status.DATA_LOSS) return 'error';
  if (code !== grpc.status.OK) return 'warn';
  if (TRACE_METHODS.has(method)) return 'trace';
  if (READ_METHODS.has(method)) return 'debug';
  return 'info';
}

interface Finish {
  (err: unknown): grpc.ServiceError | null;
}

function begin(
  deps: HandlerDeps,
  method: string,
  req: unknown,
): { ctx: CallContext; finish: Finish; abort: () => void } {
  const started = process.hrtime.bigint();
  const fields = requestFields(req);
  const log = deps.log.child({ method, ...fields });
  const abort = new AbortController();
  log.trace({ req }, 'Received CSI call');
  const finish: Finish = (err) => {
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const st = err === undefined ? undefined : toGrpcStatus(err);
    const code = st?.code ?? grpc.status.OK;
    const codeName = statusName(code);
    deps.metrics?.observe(method, codeName, seconds);
    const level = levelFor(method, code);
    const line: Record<string, unknown> = { durationSeconds: Number(seconds.toFixed(6)), code: codeName };
    if (st) {
      line.message = st.details;
      if (st.errorCode) line.errorCode = st.errorCode;
      if (level === 'error') line.err = err;
    }
    log[level](line, st ? 'Failed CSI call' : 'Served CSI call');
    if (!st) return null;
    const e = new Error(st.details) as grpc.ServiceError;
    e.code = code;
    e.details = st.details;
    e.metadata = new grpc.Metadata();
    if (st.errorCode) e.metadata.set('loopsnap-error-code', st.errorCode);
    return e;
  };
  return { ctx: { method, log, signal: abort.signal }, finish, abort: () => abort.abort() };
}

function checkServing(deps: HandlerDeps, method: string): void {
  if (!IDENTITY_METHODS.has(method) && deps.serving && !deps.serving()) {
    throw new CsiError('CSI_ERR_NOT_READY_SERVICE', 'the node plugin is starting or stopping; retry');
  }
}

export function unary<Req, Res>(
  deps: HandlerDeps,
  method: string,
  fn: (req: Req, ctx: CallContext) => Promise<Res>,
): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    const { ctx, finish, abort } = begin(deps, method, call.request);
    call.on('cancelled', abort);
    Promise.resolve()
      .then(() => checkServing(deps, method))
      .then(() => fn(call.request, ctx))
      .then(
        (res) => {
          finish(undefined);
          callback(null, res);
        },
        (err: unknown) => callback(finish(err ?? new Error('unknown error'))),
      );
  };
}

export function serverStream<Req, Res>(
  deps: HandlerDeps,
  method: string,
  fn: (req: Req, send: (msg: Res) => Promise<void>, ctx: CallContext) => Promise<void>,
): grpc.handleServerStreamingCall<Req, Res> {
  return (call) => {
    const { ctx, finish, abort } = begin(deps, method, call.request);
    call.on('cancelled', abort);
    const send = (msg: Res): Promise<void> => {
      if (ctx.signal.aborted) return Promise.reject(new Error('the client cancelled the stream'));
      // Respect back-pressure: wait for 'drain' when the write buffer is full.
      if (call.write(msg)) return Promise.resolve();
      return new Promise((resolve) => call.once('drain', () => resolve()));
    };
    Promise.resolve()
      .then(() => checkServing(deps, method))
      .then(() => fn(call.request, send, ctx))
      .then(
        () => {
          finish(undefined);
          call.end();
        },
        (err: unknown) => {
          const e = finish(err ?? new Error('unknown error'));
          if (!ctx.signal.aborted && e) call.emit('error', e);
        },
      );
  };
}
