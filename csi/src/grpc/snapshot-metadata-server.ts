// SPDX-License-Identifier: Apache-2.0
// csi.v1.SnapshotMetadata: server-streaming changed-block tracking. Every message carries VARIABLE_LENGTH
// extents and the snapshot's size; a stream with no extents sends one message with an empty list, so the
// client still learns the capacity.
import type * as grpc from '@grpc/grpc-js';
import type { MetadataService, MetadataStream } from '../driver/metadata-service.js';
import { CsiError } from '../errors.js';
import {
  int64Exact,
  type GetMetadataAllocatedRequest,
  type GetMetadataDeltaRequest,
  type MetadataResponse,
} from './csi-types.js';
import { type CallContext, type HandlerDeps, serverStream } from './handler.js';
import { requireString } from './validate.js';

export interface SnapshotMetadataDeps extends HandlerDeps {
  readonly metadata: MetadataService;
}

/** starting_offset exactly; an int64 beyond 2^53 lies beyond every volume, so it is clamped (OUT_OF_RANGE later). */
function startingOffset(value: string | number | undefined): number {
  const n = int64Exact(value);
  if (n === undefined) throw new CsiError('CSI_ERR_OFFSET', `starting_offset ${String(value)} is not an int64`);
  const max = BigInt(Number.MAX_SAFE_INTEGER);
  return Number(n > max ? max : n);
}

async function pump(
  stream: MetadataStream,
  send: (msg: MetadataResponse) => Promise<void>,
  ctx: CallContext,
): Promise<void> {
  const capacity = String(stream.volumeCapacityBytes);
  let sent = 0;
  for await (const page of stream.pages()) {
    if (ctx.signal.aborted) return;
    await send({
      block_metadata_type: 'VARIABLE_LENGTH',
      volume_capacity_bytes: capacity,
      block_metadata: page.map((e) => ({ byte_offset: String(e.offset), size_bytes: String(e.length) })),
    });
    sent++;
  }
  if (sent === 0)
    await send({ block_metadata_type: 'VARIABLE_LENGTH', volume_capacity_bytes: capacity, block_metadata: [] });
}

export function snapshotMetadataHandlers(deps: SnapshotMetadataDeps): grpc.UntypedServiceImplementation {
  const { metadata } = deps;
  return {
    GetMetadataAllocated: serverStream(
      deps,
      'GetMetadataAllocated',
      async (req: GetMetadataAllocatedRequest, send: (m: MetadataResponse) => Promise<void>, ctx) => {
        const snapshotId = requireString('snapshot_id', req.snapshot_id);
        const stream = metadata.allocated(snapshotId, {
          startingOffset: startingOffset(req.starting_offset),
          maxResults: req.max_results ?? 0,
        });
        await pump(stream, send, ctx);
      },
    ),
    GetMetadataDelta: serverStream(
      deps,
      'GetMetadataDelta',
      async (req: GetMetadataDeltaRequest, send: (m: MetadataResponse) => Promise<void>, ctx) => {
        const base = requireString('base_snapshot_id', req.base_snapshot_id);
        const target = requireString('target_snapshot_id', req.target_snapshot_id);
        const stream = metadata.delta(base, target, {
          startingOffset: startingOffset(req.starting_offset),
          maxResults: req.max_results ?? 0,
        });
        await pump(stream, send, ctx);
      },
    ),
  };
}
