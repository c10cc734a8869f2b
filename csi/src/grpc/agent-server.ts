// SPDX-License-Identifier: Apache-2.0
// loopsnap.v1.NodeAgent (csi/proto/loopsnap/v1/node_agent.proto) on the node agent (csi/src/agent). Served on
// the TCP mutual-TLS endpoint only; calls go through handler.ts like every CSI call (one log line, metrics,
// errors to gRPC statuses).
import type * as grpc from '@grpc/grpc-js';
import { nodeAgentService } from '../../../common/src/agent-proto.js';
import type { NodeAgent, OperationView } from '../agent/node-agent.js';
import { type HandlerDeps, unary } from './handler.js';
import type { ExtraService } from './server.js';

interface StartRestoreReq {
  operation_id: string;
  volume_id: string;
  snapshot_id: string;
  keep_restore_point: boolean;
  restore_point_name: string;
}
interface StartRefreshReq {
  operation_id: string;
  volume_id: string;
  snapshot_id?: string;
  from_source?: boolean;
  source?: 'snapshot_id' | 'from_source';
}
interface OperationReq {
  operation_id: string;
}

const STATE = { pending: 'PENDING', running: 'RUNNING', completed: 'COMPLETED', failed: 'FAILED' } as const;

export function operationMessage(v: OperationView): Record<string, unknown> {
  return {
    operation_id: v.operationId,
    kind: v.kind,
    volume_id: v.volumeId,
    source_snapshot_id: v.sourceSnapshotId,
    source_volume_id: v.sourceVolumeId,
    state: STATE[v.state],
    blocks_done: String(v.blocksDone),
    blocks_total: String(v.blocksTotal),
    block_size_bytes: v.blockSizeBytes,
    start_time_ms: String(v.startTimeMs),
    completion_time_ms: String(v.completionTimeMs),
    restore_point_snapshot_id: v.restorePointSnapshotId,
    restore_point_size_bytes: String(v.restorePointSizeBytes),
    restore_point_creation_time_ms: String(v.restorePointCreatedAtMs),
    must_finish: v.mustFinish,
    mode: v.mode,
    message: v.message,
    error_code: v.errorCode,
  };
}

export function agentService(deps: HandlerDeps, agent: NodeAgent): ExtraService {
  const implementation: grpc.UntypedServiceImplementation = {
    StartRestore: unary<StartRestoreReq, Record<string, unknown>>(deps, 'StartRestore', async (req) =>
      operationMessage(
        await agent.startRestore({
          operationId: req.operation_id,
          volumeId: req.volume_id,
          snapshotId: req.snapshot_id,
          keepRestorePoint: req.keep_restore_point,
          restorePointName: req.restore_point_name,
        }),
      ),
    ),
    StartRefresh: unary<StartRefreshReq, Record<string, unknown>>(deps, 'StartRefresh', async (req) =>
      operationMessage(
        await agent.startRefresh({
          operationId: req.operation_id,
          volumeId: req.volume_id,
          snapshotId: req.source === 'snapshot_id' ? (req.snapshot_id ?? '') : '',
          fromSource: req.source === 'from_source' && req.from_source === true,
        }),
      ),
    ),
    GetOperation: unary<OperationReq, Record<string, unknown>>(deps, 'GetOperation', async (req) =>
      operationMessage(agent.get(req.operation_id)),
    ),
    DeleteOperation: unary<OperationReq, Record<string, unknown>>(deps, 'DeleteOperation', async (req) => {
      await agent.delete(req.operation_id);
      return {};
    }),
  };
  return { definition: nodeAgentService().service, implementation };
}
