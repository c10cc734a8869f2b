// SPDX-License-Identifier: Apache-2.0
// Error catalogue of the data path (csi/src/frontend and csi/src/mount). Codes are stable; each carries the
// gRPC status a CSI handler should answer with and, for errors raised on the FUSE path, the errno the kernel
// gets.
import { LoopsnapError } from '../../../common/src/errors.js';

export const DATAPATH_ERRORS = {
  DP_ERR_EXEC: { grpc: 'INTERNAL', errno: 5, doc: 'A system tool (mount, losetup, mkfs, ...) failed' },
  DP_ERR_TIMEOUT: { grpc: 'DEADLINE_EXCEEDED', errno: 5, doc: 'A system tool did not finish in time' },
  DP_ERR_NOT_ROOT: { grpc: 'FAILED_PRECONDITION', errno: 1, doc: 'The data path needs root (CAP_SYS_ADMIN)' },
  DP_ERR_FUSE_MOUNT: { grpc: 'INTERNAL', errno: 5, doc: 'Mounting the FUSE file system failed' },
  DP_ERR_FUSE_INIT: { grpc: 'INTERNAL', errno: 5, doc: 'The kernel did not complete the FUSE handshake' },
  DP_ERR_WORKER: { grpc: 'INTERNAL', errno: 5, doc: 'A data-path worker could not be started' },
  DP_ERR_VIEW_EXISTS: { grpc: 'ALREADY_EXISTS', errno: 17, doc: 'A view with that name is already exposed' },
  DP_ERR_VIEW_NOT_FOUND: { grpc: 'NOT_FOUND', errno: 2, doc: 'No view with that name is exposed' },
  DP_ERR_VIEW_BUSY: { grpc: 'FAILED_PRECONDITION', errno: 16, doc: 'The view is still open (a loop device uses it)' },
  DP_ERR_BAD_NAME: { grpc: 'INVALID_ARGUMENT', errno: 22, doc: 'A view name or path is not acceptable' },
  DP_ERR_ADOPT: {
    grpc: 'INTERNAL',
    errno: 5,
    doc: 'The FUSE connection of a predecessor process cannot be taken over',
  },
  DP_ERR_SERVER_STOPPED: { grpc: 'UNAVAILABLE', errno: 107, doc: 'The FUSE server is stopping or stopped' },
  DP_ERR_READ_ONLY: { grpc: 'FAILED_PRECONDITION', errno: 30, doc: 'Write to a read-only view' },
  DP_ERR_LOOP: { grpc: 'INTERNAL', errno: 5, doc: 'Attaching or detaching a loop device failed' },
  DP_ERR_FS_TYPE: { grpc: 'INVALID_ARGUMENT', errno: 22, doc: 'Unsupported file-system type' },
  DP_ERR_FS_MISMATCH: {
    grpc: 'FAILED_PRECONDITION',
    errno: 22,
    doc: 'The device already holds a different file system than requested',
  },
  DP_ERR_MOUNT: { grpc: 'INTERNAL', errno: 5, doc: 'Mounting or unmounting failed' },
  DP_ERR_FREEZE: { grpc: 'INTERNAL', errno: 5, doc: 'Freezing or thawing a file system failed' },
  DP_ERR_NOT_STAGED: { grpc: 'FAILED_PRECONDITION', errno: 22, doc: 'Publish of a volume that is not staged' },
  DP_ERR_NO_SPACE: {
    grpc: 'RESOURCE_EXHAUSTED',
    errno: 28,
    doc: 'A system tool failed with ENOSPC or EDQUOT (the disk or a quota is full)',
  },
} as const;

export type DatapathErrorCode = keyof typeof DATAPATH_ERRORS;

export class MountError extends LoopsnapError {
  declare readonly code: DatapathErrorCode;
  /** errno for the kernel when this error ends a FUSE request. */
  get errno(): number {
    return DATAPATH_ERRORS[this.code].errno;
  }
  get grpcCode(): string {
    return DATAPATH_ERRORS[this.code].grpc;
  }

  constructor(
    code: DatapathErrorCode,
    message: string,
    options?: { cause?: unknown; details?: Record<string, unknown> },
  ) {
    super(code, message, options);
  }
}
