// SPDX-License-Identifier: Apache-2.0
// Error catalogue of the keeper's libc layer (csi/src/keeper/fd-passing.ts: Unix sockets, SCM_RIGHTS, flock).
// Codes are stable and listed in docs/errors.md (a test checks it); each carries its gRPC status by name, which
// csi/src/errors.ts toGrpcStatus reads. A failed system call keeps its errno, so callers can tell ENOENT from
// ECONNREFUSED without parsing messages.
import { LoopsnapError } from '../../../common/src/errors.js';
import type { GrpcStatusName } from '../errors.js';

export const FD_PASSING_ERRORS = {
  FD_ERR_SYSCALL: { grpc: 'INTERNAL', doc: 'A socket, descriptor or lock system call failed (errno in the error)' },
  FD_ERR_TIMEOUT: { grpc: 'DEADLINE_EXCEEDED', doc: 'No message arrived within the receive timeout' },
  FD_ERR_IN_USE: { grpc: 'FAILED_PRECONDITION', doc: 'A live process already listens on the socket path' },
  FD_ERR_TRUNCATED: {
    grpc: 'INTERNAL',
    doc: 'A received message or its descriptors did not fit (MSG_TRUNC/MSG_CTRUNC); the descriptors were closed',
  },
  FD_ERR_BAD_ARGUMENT: { grpc: 'INVALID_ARGUMENT', doc: 'A payload, descriptor count or socket path out of bounds' },
  FD_ERR_UNSUPPORTED: { grpc: 'FAILED_PRECONDITION', doc: 'The platform is not Linux x86_64 with glibc' },
} as const satisfies Record<string, { grpc: GrpcStatusName; doc: string }>;

export type FdPassingErrorCode = keyof typeof FD_PASSING_ERRORS;

export class FdPassingError extends LoopsnapError {
  declare readonly code: FdPassingErrorCode;
  readonly grpcStatus: GrpcStatusName;
  /** errno of the failed call (FD_ERR_SYSCALL, FD_ERR_TIMEOUT, FD_ERR_IN_USE), else undefined. */
  readonly errno: number | undefined;
  /** The libc function that failed, when one did. */
  readonly syscall: string | undefined;

  constructor(
    code: FdPassingErrorCode,
    message: string,
    options?: { errno?: number; syscall?: string; cause?: unknown; details?: Record<string, unknown> },
  ) {
    super(code, message, options);
    this.grpcStatus = FD_PASSING_ERRORS[code].grpc;
    this.errno = options?.errno;
    this.syscall = options?.syscall;
  }
}
