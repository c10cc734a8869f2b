// SPDX-License-Identifier: Apache-2.0
// The controller's error catalogue. Every code is listed in docs/controller.md (a unit test checks it).
// A reconcile that throws is retried with exponential backoff, except for TerminalError. Errors a user
// can fix carry the event `reason` under which they are reported on the object.
import * as grpc from '@grpc/grpc-js';
import { LoopsnapError } from '../../common/src/errors.js';

export const ErrorCode = {
  ConfigInvalid: 'LOOPSNAP_CONFIG_INVALID',
  NodeUnavailable: 'LOOPSNAP_NODE_UNAVAILABLE',
  CsiCallFailed: 'LOOPSNAP_CSI_CALL_FAILED',
  ClassNotFound: 'LOOPSNAP_CLASS_NOT_FOUND',
  NoDefaultClass: 'LOOPSNAP_NO_DEFAULT_CLASS',
  MultipleDefaultClasses: 'LOOPSNAP_MULTIPLE_DEFAULT_CLASSES',
  ClassDriverMismatch: 'LOOPSNAP_CLASS_DRIVER_MISMATCH',
  PvcNotFound: 'LOOPSNAP_PVC_NOT_FOUND',
  PvcNotBound: 'LOOPSNAP_PVC_NOT_BOUND',
  PvcDeleting: 'LOOPSNAP_PVC_DELETING',
  ContentMissing: 'LOOPSNAP_CONTENT_MISSING',
  BindMismatch: 'LOOPSNAP_BIND_MISMATCH',
  SnapshotHandleNotFound: 'LOOPSNAP_SNAPSHOT_HANDLE_NOT_FOUND',
  NoSuitableNode: 'LOOPSNAP_NO_SUITABLE_NODE',
  DataSourceNotReady: 'LOOPSNAP_DATA_SOURCE_NOT_READY',
  DataSourceInvalid: 'LOOPSNAP_DATA_SOURCE_INVALID',
  InvalidSpec: 'LOOPSNAP_INVALID_SPEC',
  NotLeader: 'LOOPSNAP_NOT_LEADER',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export class ControllerError extends LoopsnapError {
  /** Event reason under which the error is reported on the object being reconciled, if any. */
  readonly reason: string | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    opts?: { reason?: string; cause?: unknown; details?: Record<string, unknown> },
  ) {
    super(code, message, opts);
    this.reason = opts?.reason;
  }
}

/** Not retried: logged, counted, reported; the object is reconciled again only when it changes. */
export class TerminalError extends ControllerError {}

export class NodeUnavailableError extends ControllerError {
  readonly nodeId: string;

  constructor(nodeId: string, why: string, opts?: { reason?: string }) {
    super(ErrorCode.NodeUnavailable, `node plugin on node "${nodeId}" is unavailable: ${why}; will retry`, opts);
    this.nodeId = nodeId;
  }
}

/** A CSI RPC that failed with a gRPC status. */
export class CsiCallError extends ControllerError {
  readonly grpcCode: grpc.status;
  readonly method: string;
  readonly nodeId: string;

  constructor(method: string, nodeId: string, grpcCode: grpc.status, details: string, cause?: unknown) {
    super(
      ErrorCode.CsiCallFailed,
      `${method} on node "${nodeId}" failed: ${grpc.status[grpcCode] ?? grpcCode}: ${details}`,
      {
        cause,
        details: { method, nodeId, grpcCode },
      },
    );
    this.grpcCode = grpcCode;
    this.method = method;
    this.nodeId = nodeId;
  }

  get codeName(): string {
    return grpc.status[this.grpcCode] ?? String(this.grpcCode);
  }
}

const NON_FINAL_CODES: ReadonlySet<grpc.status> = new Set([
  grpc.status.CANCELLED,
  grpc.status.DEADLINE_EXCEEDED,
  grpc.status.UNAVAILABLE,
  grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.ABORTED,
]);

/**
 * Port of external-snapshotter's isCSIFinalError: after these codes the operation may still be in progress
 * on the storage side, so the being-created annotation must stay. Any error without a gRPC status (the call
 * may not have reached the plugin, or may have) is non-final too.
 */
export function isCsiFinalError(err: unknown): boolean {
  if (err instanceof CsiCallError) return !NON_FINAL_CODES.has(err.grpcCode);
  return false;
}

/** ABORTED: another operation on the same volume is in flight on the plugin; retry quietly. */
export function isAbortedCall(err: unknown): boolean {
  return err instanceof CsiCallError && err.grpcCode === grpc.status.ABORTED;
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
