// SPDX-License-Identifier: Apache-2.0
// Error catalogue of the node agent (in-place restore and refresh, loopsnap.v1.NodeAgent). Codes are stable and
// listed in docs/restore.md; each carries its gRPC status by name, which csi/src/errors.ts toGrpcStatus reads.
import { LoopsnapError } from '../../../common/src/errors.js';
import type { GrpcStatusName } from '../errors.js';

export const AGENT_ERRORS = {
  AGENT_ERR_INVALID: { grpc: 'INVALID_ARGUMENT', doc: 'A request field is missing or malformed' },
  AGENT_ERR_NOT_IN_LINEAGE: {
    grpc: 'INVALID_ARGUMENT',
    doc: 'The snapshot is not of the volume (restore) or of its source (refresh), nor of a volume in that lineage',
  },
  AGENT_ERR_TOO_LARGE: { grpc: 'OUT_OF_RANGE', doc: 'The snapshot is larger than the volume; expand the volume first' },
  AGENT_ERR_NO_SOURCE: {
    grpc: 'FAILED_PRECONDITION',
    doc: 'A refresh of a volume that was not created from a snapshot or volume, or whose source volume is gone',
  },
  AGENT_ERR_IN_USE: {
    grpc: 'FAILED_PRECONDITION',
    doc: 'The volume is staged (mounted by a pod); unmount it before restoring or refreshing it',
  },
  AGENT_ERR_NOT_READY: { grpc: 'FAILED_PRECONDITION', doc: 'The source snapshot is not ready to use' },
  AGENT_ERR_NOT_FOUND: { grpc: 'NOT_FOUND', doc: 'The volume, snapshot or operation does not exist on this node' },
  AGENT_ERR_CONFLICT: { grpc: 'ALREADY_EXISTS', doc: 'The operation id was used before with other arguments' },
  AGENT_ERR_BUSY: { grpc: 'ABORTED', doc: 'Another operation holds the volume or snapshot; retry' },
  AGENT_ERR_RUNNING: { grpc: 'FAILED_PRECONDITION', doc: 'The operation is still running and cannot be forgotten' },
  AGENT_ERR_STATE_CORRUPT: { grpc: 'DATA_LOSS', doc: 'An operation record failed to parse or validate' },
  AGENT_ERR_COPY_FAILED: { grpc: 'INTERNAL', doc: 'The copy failed (see the message); it is retried on restart' },
} as const satisfies Record<string, { grpc: GrpcStatusName; doc: string }>;

export type AgentErrorCode = keyof typeof AGENT_ERRORS;

export class AgentError extends LoopsnapError {
  declare readonly code: AgentErrorCode;
  readonly grpcStatus: GrpcStatusName;

  constructor(code: AgentErrorCode, message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
    super(code, message, options);
    this.grpcStatus = AGENT_ERRORS[code].grpc;
  }
}
