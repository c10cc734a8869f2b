// SPDX-License-Identifier: Apache-2.0
// Error catalogue of the snapshot engine and its file stores. Every code is stable, documented in
// docs/errors.md (a test checks this) and mapped to the gRPC status a CSI handler should return.
// Messages may change; callers branch on `code` only.
import { LoopsnapError } from '../../../common/src/errors.js';

/** gRPC status names, spelled as in @grpc/grpc-js `status` (the engine imports no grpc module). */
export type GrpcStatusName =
  | 'INVALID_ARGUMENT'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'OUT_OF_RANGE'
  | 'RESOURCE_EXHAUSTED'
  | 'FAILED_PRECONDITION'
  | 'ABORTED'
  | 'DATA_LOSS'
  | 'UNAVAILABLE'
  | 'INTERNAL';

export const ENGINE_ERRORS = {
  ENGINE_BAD_ARGUMENT: { grpc: 'INVALID_ARGUMENT', summary: 'a parameter is malformed (size, alignment, method)' },
  ENGINE_OUT_OF_RANGE: { grpc: 'OUT_OF_RANGE', summary: 'a byte or block range lies outside the volume or snapshot' },
  ENGINE_UNKNOWN_SNAPSHOT: { grpc: 'NOT_FOUND', summary: 'no live snapshot has this id' },
  ENGINE_SNAPSHOT_INVALID: {
    grpc: 'FAILED_PRECONDITION',
    summary: 'the snapshot lost a before-image (save pool exhausted) and can only be deleted',
  },
  ENGINE_SNAPSHOT_BUSY: { grpc: 'FAILED_PRECONDITION', summary: 'the snapshot is pinned by a reader or dependant' },
  ENGINE_SNAPSHOT_LIMIT: { grpc: 'RESOURCE_EXHAUSTED', summary: 'the volume already holds the maximum snapshots' },
  ENGINE_SAVE_POOL_FULL: {
    grpc: 'RESOURCE_EXHAUSTED',
    summary:
      'the save pool reached its quota or the disk is full, and only snapshots with dependants need the space (the write gets ENOSPC; ADR 0012)',
  },
  ENGINE_READ_ONLY: { grpc: 'FAILED_PRECONDITION', summary: 'the view is read-only (RO snapshot)' },
  ENGINE_UNKNOWN_RW: { grpc: 'NOT_FOUND', summary: 'no RW snapshot has this id' },
  ENGINE_RW_BUSY: {
    grpc: 'FAILED_PRECONDITION',
    summary: 'the RW snapshot is the source of a running restore or held by a copy job',
  },
  ENGINE_RESTORE_IN_PROGRESS: {
    grpc: 'FAILED_PRECONDITION',
    summary: 'an in-place restore of the volume is running (cuts, resizes and a second restore wait for it)',
  },
  ENGINE_NO_RESTORE: { grpc: 'FAILED_PRECONDITION', summary: 'no in-place restore is running on the volume' },
  ENGINE_SNAPSHOT_NOT_READY: {
    grpc: 'FAILED_PRECONDITION',
    summary: 'the snapshot is the restore point of a running in-place restore and is readable once it completes',
  },
  ENGINE_SHRINK_UNSUPPORTED: { grpc: 'INVALID_ARGUMENT', summary: 'volumes can grow but never shrink' },
  ENGINE_CORRUPT_METADATA: { grpc: 'DATA_LOSS', summary: 'metadata failed a checksum or structural check' },
  ENGINE_BAD_MAGIC: { grpc: 'DATA_LOSS', summary: 'a metadata file does not start with the loopsnap magic' },
  ENGINE_BAD_VERSION: { grpc: 'FAILED_PRECONDITION', summary: 'metadata was written by an unsupported format version' },
  ENGINE_VOLUME_FAILED: {
    grpc: 'UNAVAILABLE',
    summary: 'a metadata commit failed; the volume refuses I/O until it is reopened',
  },
  ENGINE_CLOSED: { grpc: 'FAILED_PRECONDITION', summary: 'the volume was closed' },
  ENGINE_DEVICE_IO: { grpc: 'INTERNAL', summary: 'the backing device reported an I/O error' },
  ENGINE_DEVICE_NO_SPACE: { grpc: 'RESOURCE_EXHAUSTED', summary: 'the backing device has no space left' },
  STORE_BAD_ID: { grpc: 'INVALID_ARGUMENT', summary: 'a volume id is not safe to use as a path component' },
  STORE_VOLUME_EXISTS: { grpc: 'ALREADY_EXISTS', summary: 'a volume with this id already exists' },
  STORE_VOLUME_NOT_FOUND: { grpc: 'NOT_FOUND', summary: 'no volume with this id exists under the state dir' },
  STORE_VOLUME_BUSY: { grpc: 'ABORTED', summary: 'the volume is already open in this process' },
} as const satisfies Record<string, { grpc: GrpcStatusName; summary: string }>;

export type EngineErrorCode = keyof typeof ENGINE_ERRORS;

/** errno the data path answers for these codes (what a thin-provisioned device out of space answers). */
const ENOSPC_ERRNO = 28;
const ERRNO_OF: Partial<Record<EngineErrorCode, number>> = {
  ENGINE_SAVE_POOL_FULL: ENOSPC_ERRNO,
  ENGINE_DEVICE_NO_SPACE: ENOSPC_ERRNO,
};

export class EngineError extends LoopsnapError {
  declare readonly code: EngineErrorCode;
  readonly grpcStatus: GrpcStatusName;
  /** Positive errno for the data path (frontend/worker-io.ts errnoOf), when the code has one; else EIO. */
  readonly errno: number | undefined;

  constructor(
    code: EngineErrorCode,
    message: string,
    options?: { cause?: unknown; details?: Record<string, unknown> },
  ) {
    super(code, message, options);
    this.grpcStatus = ENGINE_ERRORS[code].grpc;
    this.errno = ERRNO_OF[code];
  }
}

export function engineError(
  code: EngineErrorCode,
  message: string,
  details?: Record<string, unknown>,
  cause?: unknown,
): EngineError {
  return new EngineError(code, message, { details: details ?? {}, cause });
}

export function isEngineError(err: unknown, code?: EngineErrorCode): err is EngineError {
  return err instanceof EngineError && (code === undefined || err.code === code);
}
