// SPDX-License-Identifier: Apache-2.0
// Error catalogue of the CSI driver layer (csi/src/grpc, csi/src/driver, csi/src/state), and the one place
// where any error becomes a gRPC status. Codes are stable and documented in docs/csi-driver.md (a test checks
// it); messages may change. Engine (EngineError) and data-path (MountError) errors already carry their gRPC
// status name; handlers rethrow them unwrapped and `toGrpcStatus` maps them here.
import { status as GrpcStatus } from '@grpc/grpc-js';
import { LoopsnapError } from '../../common/src/errors.js';

/** gRPC status names as spelled by @grpc/grpc-js `status`. */
export type GrpcStatusName = keyof typeof GrpcStatus;

export const CSI_ERRORS = {
  CSI_ERR_MISSING_FIELD: { grpc: 'INVALID_ARGUMENT', doc: 'A required request field is missing' },
  CSI_ERR_INVALID_FIELD: { grpc: 'INVALID_ARGUMENT', doc: 'A request field has a value the driver does not accept' },
  CSI_ERR_BAD_PARAMETER: {
    grpc: 'INVALID_ARGUMENT',
    doc: 'An unknown or malformed StorageClass/VolumeSnapshotClass parameter',
  },
  CSI_ERR_UNSUPPORTED_CAPABILITY: {
    grpc: 'INVALID_ARGUMENT',
    doc: 'A volume capability (access mode or type) the driver cannot provide',
  },
  CSI_ERR_CAPABILITY_MISMATCH: {
    grpc: 'FAILED_PRECONDITION',
    doc: 'Stage/publish asks for an access type the volume was not created for',
  },
  CSI_ERR_VOLUME_NOT_FOUND: { grpc: 'NOT_FOUND', doc: 'No volume with this id on this node' },
  CSI_ERR_SNAPSHOT_NOT_FOUND: { grpc: 'NOT_FOUND', doc: 'No snapshot with this id on this node' },
  CSI_ERR_SOURCE_NOT_FOUND: { grpc: 'NOT_FOUND', doc: 'The volume content source (snapshot or volume) does not exist' },
  CSI_ERR_PATH_NOT_FOUND: { grpc: 'NOT_FOUND', doc: 'The volume is not staged or published at the given path' },
  CSI_ERR_NAME_CONFLICT: {
    grpc: 'ALREADY_EXISTS',
    doc: 'The name is taken by an object with a different source or size',
  },
  CSI_ERR_PUBLISH_CONFLICT: { grpc: 'ALREADY_EXISTS', doc: 'Already staged/published at this path with other options' },
  CSI_ERR_BUSY: { grpc: 'ABORTED', doc: 'An operation on the same volume or name is in flight' },
  CSI_ERR_BAD_TOKEN: { grpc: 'ABORTED', doc: 'A pagination starting_token this driver did not issue' },
  CSI_ERR_IN_USE: {
    grpc: 'FAILED_PRECONDITION',
    doc: 'The object is in use (staged, published, has snapshots or dependants)',
  },
  CSI_ERR_NOT_STAGED: {
    grpc: 'FAILED_PRECONDITION',
    doc: 'Publish of a volume that is not staged at the given staging path',
  },
  CSI_ERR_SINGLE_WRITER: {
    grpc: 'FAILED_PRECONDITION',
    doc: 'A single-writer volume is already published at another target',
  },
  CSI_ERR_THIN_CLONE: {
    grpc: 'FAILED_PRECONDITION',
    doc: 'The volume is a thin clone without a snapshot queue of its own (hydrate it first)',
  },
  CSI_ERR_NOT_READY: {
    grpc: 'FAILED_PRECONDITION',
    doc: 'The snapshot is not ready to use yet (background copy running)',
  },
  CSI_ERR_DELTA_UNSUPPORTED: {
    grpc: 'FAILED_PRECONDITION',
    doc: 'No changed-block tracking between these two snapshots',
  },
  CSI_ERR_CAPACITY: {
    grpc: 'OUT_OF_RANGE',
    doc: 'The capacity range cannot be satisfied (too small, too large, shrink)',
  },
  CSI_ERR_OFFSET: { grpc: 'OUT_OF_RANGE', doc: 'starting_offset is negative or beyond the volume size' },
  CSI_ERR_TOPOLOGY: { grpc: 'RESOURCE_EXHAUSTED', doc: 'The accessibility requirements exclude this node' },
  CSI_ERR_UNIMPLEMENTED: { grpc: 'UNIMPLEMENTED', doc: 'An RPC or option this driver does not offer (yet)' },
  CSI_ERR_NOT_READY_SERVICE: { grpc: 'UNAVAILABLE', doc: 'The driver is starting or stopping' },
  CSI_ERR_STATE_CORRUPT: { grpc: 'DATA_LOSS', doc: 'A driver state file failed to parse or validate' },
  CSI_ERR_PATH_NOT_ALLOWED: {
    grpc: 'INVALID_ARGUMENT',
    doc: 'A staging or target path that is relative, has `..`, NUL or control characters, lies outside the kubelet directory, in or above the state directory, inside a mount of this plugin, or in procfs/sysfs',
  },
  CSI_ERR_PATH_SYMLINK: {
    grpc: 'INVALID_ARGUMENT',
    doc: 'A component of a staging or target path is a symbolic link (none is followed below the kubelet directory)',
  },
  CSI_ERR_PATH_UNUSABLE: {
    grpc: 'INVALID_ARGUMENT',
    doc: 'A parent of a staging or target path is missing or not a directory, or a call on it failed (errno in the message)',
  },
  CSI_ERR_TARGET_IN_THE_WAY: {
    grpc: 'INVALID_ARGUMENT',
    doc: 'Stage/publish onto an existing non-empty directory or file, a foreign mount, or an object of the wrong type: the mount would hide it',
  },
  CSI_ERR_TARGET_NOT_EMPTY: {
    grpc: 'FAILED_PRECONDITION',
    doc: 'Unpublish unmounted the volume, but the target the plugin created holds files written while nothing was mounted there (listed in the message); they are kept',
  },
  CSI_ERR_PATH_TIMEOUT: {
    grpc: 'DEADLINE_EXCEEDED',
    doc: 'A file-system call on a staging or target path did not return within --path-timeout-seconds (a hung mount on the path)',
  },
  CSI_ERR_BAD_MOUNT_FLAGS: {
    grpc: 'INVALID_ARGUMENT',
    doc: 'A mount flag is malformed, reserved (bind, loop, x-mount.*, ...) or refused by the file system',
  },
  CSI_ERR_NO_SPACE: {
    grpc: 'RESOURCE_EXHAUSTED',
    doc: 'ENOSPC or EDQUOT: the disk holding the state directory or the path is full',
  },
  CSI_ERR_DATAPATH_DOWN: {
    grpc: 'FAILED_PRECONDITION',
    doc: "Probe: the plugin's FUSE mount is gone, so no volume's I/O can be served; restart the node plugin",
  },
  CSI_ERR_INTERNAL: { grpc: 'INTERNAL', doc: 'An unexpected failure (see the log line of the call)' },
} as const satisfies Record<string, { grpc: GrpcStatusName; doc: string }>;

export type CsiErrorCode = keyof typeof CSI_ERRORS;

export class CsiError extends LoopsnapError {
  declare readonly code: CsiErrorCode;
  readonly grpcStatus: GrpcStatusName;

  constructor(code: CsiErrorCode, message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
    super(code, message, options);
    this.grpcStatus = CSI_ERRORS[code].grpc;
  }
}

export function csiError(code: CsiErrorCode, message: string, details?: Record<string, unknown>): CsiError {
  return new CsiError(code, message, details === undefined ? undefined : { details });
}

/** `INVALID_ARGUMENT "<field> missing in request"`, the wording of the CSI sidecars and host-path. */
export function missing(field: string): CsiError {
  return new CsiError('CSI_ERR_MISSING_FIELD', `${field} missing in request`, { details: { field } });
}

export interface GrpcStatusObject {
  readonly code: number;
  readonly details: string;
  /** Our stable error code, when the error came from our catalogues. */
  readonly errorCode: string | undefined;
}

function statusByName(name: string | undefined): number | undefined {
  if (name === undefined) return undefined;
  const v = (GrpcStatus as unknown as Record<string, number>)[name];
  return typeof v === 'number' ? v : undefined;
}

/**
 * Maps any thrown value to a gRPC status. Errors of our catalogues carry their status by name (`grpcStatus`
 * on CsiError/EngineError, `grpcCode` on the data path's MountError); an AggregateError takes the status of
 * its first member; everything else is INTERNAL with its message.
 */
export function toGrpcStatus(err: unknown): GrpcStatusObject {
  const s = statusOf(err);
  // A full disk is RESOURCE_EXHAUSTED whatever wrapped the ENOSPC on its way up (a state file write, a tool).
  if ((s.code === GrpcStatus.INTERNAL || s.code === GrpcStatus.UNKNOWN) && noSpaceIn(err)) {
    return { code: GrpcStatus.RESOURCE_EXHAUSTED, details: s.details, errorCode: 'CSI_ERR_NO_SPACE' };
  }
  return s;
}

const NO_SPACE_ERRNOS = new Set(['ENOSPC', 'EDQUOT']);

/** Whether `err` or an error in its cause chain is ENOSPC/EDQUOT (a Node system error or a tool's). */
export function noSpaceIn(err: unknown): boolean {
  let e: unknown = err;
  for (let depth = 0; depth < 8 && e instanceof Error; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && (NO_SPACE_ERRNOS.has(code) || code === 'DP_ERR_NO_SPACE')) return true;
    if (e instanceof AggregateError && e.errors.some((x) => noSpaceIn(x))) return true;
    e = e.cause;
  }
  return false;
}

function statusOf(err: unknown): GrpcStatusObject {
  if (err instanceof AggregateError && err.errors.length > 0 && !(err instanceof LoopsnapError)) {
    const first = statusOf(err.errors[0]);
    return { ...first, details: `${err.message}: ${first.details}` };
  }
  if (err instanceof LoopsnapError) {
    const e = err as LoopsnapError & { grpcStatus?: string; grpcCode?: string };
    const code = statusByName(e.grpcStatus) ?? statusByName(e.grpcCode) ?? GrpcStatus.INTERNAL;
    return { code, details: err.message, errorCode: err.code };
  }
  if (err instanceof Error) return { code: GrpcStatus.INTERNAL, details: err.message, errorCode: undefined };
  return { code: GrpcStatus.INTERNAL, details: String(err), errorCode: undefined };
}

/** The name of a numeric gRPC status (`NOT_FOUND`), for logs and metric labels. */
export function statusName(code: number): string {
  for (const [k, v] of Object.entries(GrpcStatus)) if (v === code) return k;
  return `CODE_${code}`;
}
