// SPDX-License-Identifier: Apache-2.0
// TypeScript shapes of the csi.v1 messages this driver reads and writes, as @grpc/proto-loader decodes them
// with common/src/csi-proto.ts's options: field names snake_case as in csi.proto, int64 as decimal strings,
// enums as their names, unset message fields as null, maps as plain objects, and a oneof also reported as a
// string property naming the member that is set (`access_type: 'mount'`). Only the fields we use are typed;
// requests are typed loosely (every field optional) because a client may send anything.

export type Int64 = string | number;
export type StringMap = Record<string, string>;

export type AccessModeName =
  | 'UNKNOWN'
  | 'SINGLE_NODE_WRITER'
  | 'SINGLE_NODE_READER_ONLY'
  | 'MULTI_NODE_READER_ONLY'
  | 'MULTI_NODE_SINGLE_WRITER'
  | 'MULTI_NODE_MULTI_WRITER'
  | 'SINGLE_NODE_SINGLE_WRITER'
  | 'SINGLE_NODE_MULTI_WRITER';

export interface VolumeCapability {
  block?: Record<string, never> | null;
  mount?: { fs_type?: string; mount_flags?: string[]; volume_mount_group?: string } | null;
  access_mode?: { mode?: AccessModeName | number } | null;
  access_type?: 'block' | 'mount';
}

export interface CapacityRange {
  required_bytes?: Int64;
  limit_bytes?: Int64;
}

export interface Topology {
  segments?: StringMap;
}

export interface TopologyRequirement {
  requisite?: Topology[];
  preferred?: Topology[];
}

export interface VolumeContentSource {
  snapshot?: { snapshot_id?: string } | null;
  volume?: { volume_id?: string } | null;
  type?: 'snapshot' | 'volume';
}

export interface CsiVolume {
  capacity_bytes: Int64;
  volume_id: string;
  volume_context: StringMap;
  content_source: VolumeContentSource | null;
  accessible_topology: Topology[];
}

export interface CsiSnapshot {
  size_bytes: Int64;
  snapshot_id: string;
  source_volume_id: string;
  creation_time: { seconds: Int64; nanos: number };
  ready_to_use: boolean;
  group_snapshot_id: string;
}

export interface VolumeCondition {
  abnormal: boolean;
  message: string;
}

// ----- requests -------------------------------------------------------------------------------------------

export interface CreateVolumeRequest {
  name?: string;
  capacity_range?: CapacityRange | null;
  volume_capabilities?: VolumeCapability[];
  parameters?: StringMap;
  secrets?: StringMap;
  volume_content_source?: VolumeContentSource | null;
  accessibility_requirements?: TopologyRequirement | null;
  mutable_parameters?: StringMap;
}

export interface DeleteVolumeRequest {
  volume_id?: string;
}

export interface ValidateVolumeCapabilitiesRequest {
  volume_id?: string;
  volume_context?: StringMap;
  volume_capabilities?: VolumeCapability[];
  parameters?: StringMap;
  mutable_parameters?: StringMap;
}

export interface ListRequest {
  max_entries?: number;
  starting_token?: string;
}

export interface ListSnapshotsRequest extends ListRequest {
  source_volume_id?: string;
  snapshot_id?: string;
}

export interface GetCapacityRequest {
  volume_capabilities?: VolumeCapability[];
  parameters?: StringMap;
  accessible_topology?: Topology | null;
}

export interface CreateSnapshotRequest {
  source_volume_id?: string;
  name?: string;
  parameters?: StringMap;
}

export interface SnapshotIdRequest {
  snapshot_id?: string;
}

export interface ControllerExpandVolumeRequest {
  volume_id?: string;
  capacity_range?: CapacityRange | null;
  volume_capability?: VolumeCapability | null;
}

export interface VolumeIdRequest {
  volume_id?: string;
}

export interface NodeStageVolumeRequest {
  volume_id?: string;
  publish_context?: StringMap;
  staging_target_path?: string;
  volume_capability?: VolumeCapability | null;
  volume_context?: StringMap;
}

export interface NodeUnstageVolumeRequest {
  volume_id?: string;
  staging_target_path?: string;
}

export interface NodePublishVolumeRequest {
  volume_id?: string;
  publish_context?: StringMap;
  staging_target_path?: string;
  target_path?: string;
  volume_capability?: VolumeCapability | null;
  readonly?: boolean;
  volume_context?: StringMap;
}

export interface NodeUnpublishVolumeRequest {
  volume_id?: string;
  target_path?: string;
}

export interface NodeGetVolumeStatsRequest {
  volume_id?: string;
  volume_path?: string;
  staging_target_path?: string;
}

export interface NodeExpandVolumeRequest {
  volume_id?: string;
  volume_path?: string;
  capacity_range?: CapacityRange | null;
  staging_target_path?: string;
  volume_capability?: VolumeCapability | null;
}

export interface GetMetadataAllocatedRequest {
  snapshot_id?: string;
  starting_offset?: Int64;
  max_results?: number;
}

export interface GetMetadataDeltaRequest {
  base_snapshot_id?: string;
  target_snapshot_id?: string;
  starting_offset?: Int64;
  max_results?: number;
}

export interface BlockMetadata {
  byte_offset: Int64;
  size_bytes: Int64;
}

export interface MetadataResponse {
  block_metadata_type: 'FIXED_LENGTH' | 'VARIABLE_LENGTH';
  volume_capacity_bytes: Int64;
  block_metadata: BlockMetadata[];
}

/** Reads an int64 field (decoded as a string) as a safe integer; undefined when unset/zero-length. */
export function int64(value: Int64 | undefined | null): number {
  if (value === undefined || value === null || value === '') return 0;
  const n = typeof value === 'number' ? value : Number(value);
  return Number.isFinite(n) ? n : Number.NaN;
}

export const INT64_MAX = (1n << 63n) - 1n;
export const INT64_MIN = -(1n << 63n);

/**
 * Reads an int64 field exactly (no Number rounding above 2^53); 0n when unset. undefined when it is not an
 * integer of the int64 range (the wire decodes int64 as decimal strings; numbers come from JSON clients).
 */
export function int64Exact(value: Int64 | undefined | null): bigint | undefined {
  if (value === undefined || value === null || value === '') return 0n;
  if (typeof value === 'number') return Number.isSafeInteger(value) ? BigInt(value) : undefined;
  if (!/^-?[0-9]{1,19}$/.test(value)) return undefined;
  const n = BigInt(value);
  return n > INT64_MAX || n < INT64_MIN ? undefined : n;
}

/** A google.protobuf.Timestamp for a time in ms since the epoch. */
export function timestamp(ms: number): { seconds: string; nanos: number } {
  const seconds = Math.floor(ms / 1000);
  return { seconds: String(seconds), nanos: Math.round((ms - seconds * 1000) * 1e6) };
}
