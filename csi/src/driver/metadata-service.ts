// SPDX-License-Identifier: Apache-2.0
// CSI SnapshotMetadata (changed-block tracking): allocated extents of a snapshot (OP-18) and changed extents
// between two snapshots of one volume (OP-14/16), as pages of ascending, non-overlapping byte extents.
// Pages are computed lazily, one engine query per page, so a stream costs memory proportional to a page.
// A page never holds an extent that ends at or before the requested starting offset, and the first extent
// is clipped to start at it.
import { CsiError } from '../errors.js';
import type { SnapshotRecord } from '../state/records.js';
import type { ByteExtent } from './backend.js';
import type { DriverContext } from './context.js';

/** Extents per message when the request leaves max_results at 0 (host-path uses the same). */
export const DEFAULT_MAX_RESULTS = 256;

export interface MetadataQuery {
  readonly startingOffset: number;
  readonly maxResults: number;
}

export interface MetadataStream {
  readonly volumeCapacityBytes: number;
  pages(): AsyncGenerator<ByteExtent[]>;
}

export class MetadataService {
  constructor(private readonly d: DriverContext) {}

  allocated(snapshotId: string, q: MetadataQuery): MetadataStream {
    const snap = this.snapshot(snapshotId, 'snapshot_id');
    const query = this.checkQuery(q, snap.sizeBytes);
    const backend = this.d.backend;
    return {
      volumeCapacityBytes: snap.sizeBytes,
      pages: () =>
        pagesOf(query, (startingOffset, maxResults) =>
          backend.allocatedExtents(snap.sourceVolumeId, snap.engineSnapshotId, { startingOffset, maxResults }),
        ),
    };
  }

  delta(baseSnapshotId: string, targetSnapshotId: string, q: MetadataQuery): MetadataStream {
    const base = this.snapshot(baseSnapshotId, 'base_snapshot_id');
    const target = this.snapshot(targetSnapshotId, 'target_snapshot_id');
    if (base.sourceVolumeId !== target.sourceVolumeId) {
      throw new CsiError(
        'CSI_ERR_INVALID_FIELD',
        `snapshots ${baseSnapshotId} and ${targetSnapshotId} belong to different volumes (${base.sourceVolumeId}, ${target.sourceVolumeId})`,
      );
    }
    if (base.method === 'clone' || target.method === 'clone') {
      throw new CsiError(
        'CSI_ERR_DELTA_UNSUPPORTED',
        'no changed-block tracking between clone-method snapshots (independent images); do a full backup',
      );
    }
    if (base.engineSnapshotId >= target.engineSnapshotId) {
      throw new CsiError(
        'CSI_ERR_INVALID_FIELD',
        `base snapshot ${baseSnapshotId} is not older than target snapshot ${targetSnapshotId}`,
      );
    }
    const query = this.checkQuery(q, target.sizeBytes);
    const backend = this.d.backend;
    return {
      volumeCapacityBytes: target.sizeBytes,
      pages: () =>
        pagesOf(query, (startingOffset, maxResults) =>
          backend.changedExtents(base.sourceVolumeId, base.engineSnapshotId, target.engineSnapshotId, {
            startingOffset,
            maxResults,
          }),
        ),
    };
  }

  private snapshot(id: string, field: string): SnapshotRecord {
    const rec = this.d.state.snapshot(id);
    if (!rec || rec.phase !== 'ready') {
      throw new CsiError('CSI_ERR_SNAPSHOT_NOT_FOUND', `${field}: snapshot ${id} does not exist`);
    }
    if (!rec.readyToUse) throw new CsiError('CSI_ERR_NOT_READY', `${field}: snapshot ${id} is not ready to use yet`);
    return rec;
  }

  private checkQuery(q: MetadataQuery, sizeBytes: number): MetadataQuery {
    if (!Number.isSafeInteger(q.startingOffset) || q.startingOffset < 0 || q.startingOffset > sizeBytes) {
      throw new CsiError(
        'CSI_ERR_OFFSET',
        `starting_offset ${q.startingOffset} is outside the snapshot (0..${sizeBytes} bytes)`,
      );
    }
    if (!Number.isInteger(q.maxResults) || q.maxResults < 0) {
      throw new CsiError('CSI_ERR_INVALID_FIELD', `max_results ${q.maxResults} must not be negative`);
    }
    return { startingOffset: q.startingOffset, maxResults: q.maxResults === 0 ? DEFAULT_MAX_RESULTS : q.maxResults };
  }
}

/** Pages of at most `maxResults` extents from `query(startingOffset, maxResults)`, starting at q.startingOffset. */
export async function* pagesOf(
  q: MetadataQuery,
  query: (startingOffset: number, maxResults: number) => ByteExtent[],
): AsyncGenerator<ByteExtent[]> {
  let offset = q.startingOffset;
  for (;;) {
    const raw = query(offset, q.maxResults);
    const page: ByteExtent[] = [];
    for (const e of raw) {
      const end = e.offset + e.length;
      if (end <= offset) continue;
      const start = Math.max(e.offset, offset);
      page.push({ offset: start, length: end - start });
    }
    if (page.length > 0) yield page;
    if (raw.length < q.maxResults) return;
    const last = raw[raw.length - 1]!;
    offset = Math.max(offset, last.offset + last.length);
    // Yield to the event loop between pages: a large differential must not starve other calls.
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}
