// SPDX-License-Identifier: Apache-2.0
// gRPC client of a node plugin's loopsnap.v1.NodeAgent (in-place restore and refresh), on the same channel
// as that node's CSI client. A failed call throws CsiCallError (gRPC status code in `grpcCode`).
import * as grpc from '@grpc/grpc-js';
import { type AgentOperationMessage, nodeAgentService } from '../../../common/src/agent-proto.js';
import type { Logger } from '../../../common/src/log.js';
import { CsiCallError } from '../errors.js';
import type { ControllerMetrics } from '../metrics.js';

export type AgentOperationState = 'PENDING' | 'RUNNING' | 'COMPLETED' | 'FAILED';

/** An operation on a node, with numbers parsed. */
export interface AgentOperation {
  readonly operationId: string;
  readonly kind: string;
  readonly volumeId: string;
  readonly sourceSnapshotId: string;
  readonly sourceVolumeId: string;
  readonly state: AgentOperationState;
  readonly blocksDone: number;
  readonly blocksTotal: number;
  readonly blockSizeBytes: number;
  readonly startTimeMs: number;
  readonly completionTimeMs: number;
  readonly restorePointSnapshotId: string;
  readonly restorePointSizeBytes: number;
  readonly restorePointCreationTimeMs: number;
  readonly mustFinish: boolean;
  readonly mode: string;
  readonly message: string;
  readonly errorCode: string;
}

export function toOperation(m: AgentOperationMessage): AgentOperation {
  const state = m.state === 'STATE_UNSPECIFIED' ? 'PENDING' : m.state;
  return {
    operationId: m.operation_id,
    kind: m.kind,
    volumeId: m.volume_id,
    sourceSnapshotId: m.source_snapshot_id,
    sourceVolumeId: m.source_volume_id,
    state,
    blocksDone: Number(m.blocks_done),
    blocksTotal: Number(m.blocks_total),
    blockSizeBytes: m.block_size_bytes,
    startTimeMs: Number(m.start_time_ms),
    completionTimeMs: Number(m.completion_time_ms),
    restorePointSnapshotId: m.restore_point_snapshot_id,
    restorePointSizeBytes: Number(m.restore_point_size_bytes),
    restorePointCreationTimeMs: Number(m.restore_point_creation_time_ms),
    mustFinish: m.must_finish,
    mode: m.mode,
    message: m.message,
    errorCode: m.error_code,
  };
}

type RawCall = (
  req: unknown,
  md: grpc.Metadata,
  opts: grpc.CallOptions,
  cb: (err: grpc.ServiceError | null, res: unknown) => void,
) => void;

export class NodeAgentClient {
  private readonly client: grpc.Client;

  constructor(
    readonly nodeId: string,
    endpoint: string,
    channel: ReturnType<grpc.Client['getChannel']>,
    private readonly opts: { readonly timeoutMs: number; readonly metrics?: ControllerMetrics; readonly log?: Logger },
  ) {
    this.client = new (nodeAgentService())(endpoint, grpc.credentials.createInsecure(), { channelOverride: channel });
  }

  private call<T>(method: string, req: unknown): Promise<T> {
    const fn = (this.client as unknown as Record<string, RawCall>)[method];
    if (!fn) throw new Error(`NodeAgent method ${method} is not defined`);
    const start = Date.now();
    return new Promise<T>((resolve, reject) => {
      fn.call(this.client, req, new grpc.Metadata(), { deadline: Date.now() + this.opts.timeoutMs }, (err, res) => {
        const code = err ? (grpc.status[err.code] ?? String(err.code)) : 'OK';
        this.opts.metrics?.csiCallsTotal.inc({ method, code });
        this.opts.log?.debug(
          { method, node: this.nodeId, code, durationSeconds: (Date.now() - start) / 1000 },
          'Called node agent',
        );
        if (err) reject(new CsiCallError(method, this.nodeId, err.code, err.details || err.message, err));
        else resolve(res as T);
      });
    });
  }

  async startRestore(args: {
    operationId: string;
    volumeId: string;
    snapshotId: string;
    keepRestorePoint: boolean;
    restorePointName: string;
  }): Promise<AgentOperation> {
    return toOperation(
      await this.call<AgentOperationMessage>('StartRestore', {
        operation_id: args.operationId,
        volume_id: args.volumeId,
        snapshot_id: args.snapshotId,
        keep_restore_point: args.keepRestorePoint,
        restore_point_name: args.restorePointName,
      }),
    );
  }

  async startRefresh(args: {
    operationId: string;
    volumeId: string;
    snapshotId?: string;
    fromSource: boolean;
  }): Promise<AgentOperation> {
    const source = args.fromSource ? { from_source: true } : { snapshot_id: args.snapshotId ?? '' };
    return toOperation(
      await this.call<AgentOperationMessage>('StartRefresh', {
        operation_id: args.operationId,
        volume_id: args.volumeId,
        ...source,
      }),
    );
  }

  async getOperation(operationId: string): Promise<AgentOperation> {
    return toOperation(await this.call<AgentOperationMessage>('GetOperation', { operation_id: operationId }));
  }

  /** OK when the operation does not exist; FAILED_PRECONDITION while it runs. */
  async deleteOperation(operationId: string): Promise<void> {
    await this.call('DeleteOperation', { operation_id: operationId });
  }
}
