// SPDX-License-Identifier: Apache-2.0
// Loads loopsnap's own node-plugin service, csi/proto/loopsnap/v1/node_agent.proto (committed; ours), with the
// same loader options as csi.proto: snake_case fields, 64-bit integers as strings, enums as strings.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { CSI_PROTO_LOADER_OPTIONS } from './csi-proto.js';
import { LoopsnapError } from './errors.js';

function rootDir(): string {
  const here = fileURLToPath(new URL('.', import.meta.url));
  return here.includes('/dist/') ? join(here, '..', '..', '..') : join(here, '..', '..');
}

export function agentProtoPath(): string {
  return join(rootDir(), 'csi', 'proto', 'loopsnap', 'v1', 'node_agent.proto');
}

let cached: grpc.ServiceClientConstructor | undefined;

/** The `loopsnap.v1.NodeAgent` service constructor (client) and definition (`.service`, for servers). */
export function nodeAgentService(): grpc.ServiceClientConstructor {
  if (cached) return cached;
  const path = agentProtoPath();
  if (!existsSync(path)) throw new LoopsnapError('LOOPSNAP_PROTO_MISSING', `node agent proto not found at ${path}`);
  const root = grpc.loadPackageDefinition(protoLoader.loadSync(path, CSI_PROTO_LOADER_OPTIONS));
  const ctor = ((root.loopsnap as grpc.GrpcObject | undefined)?.v1 as grpc.GrpcObject | undefined)?.NodeAgent as
    grpc.ServiceClientConstructor | undefined;
  if (!ctor?.service)
    throw new LoopsnapError('LOOPSNAP_PROTO_INVALID', `${path} does not define loopsnap.v1.NodeAgent`);
  cached = ctor;
  return ctor;
}

/** Operation as it travels (snake_case, 64-bit numbers as strings, enum as its name). */
export interface AgentOperationMessage {
  operation_id: string;
  kind: string;
  volume_id: string;
  source_snapshot_id: string;
  source_volume_id: string;
  state: 'STATE_UNSPECIFIED' | 'PENDING' | 'RUNNING' | 'COMPLETED' | 'FAILED';
  blocks_done: string;
  blocks_total: string;
  block_size_bytes: number;
  start_time_ms: string;
  completion_time_ms: string;
  restore_point_snapshot_id: string;
  restore_point_size_bytes: string;
  restore_point_creation_time_ms: string;
  must_finish: boolean;
  mode: string;
  message: string;
  error_code: string;
}
