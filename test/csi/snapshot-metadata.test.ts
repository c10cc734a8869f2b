// SPDX-License-Identifier: Apache-2.0
// CSI SnapshotMetadata through the real node plugin: extents written (fsync'd) through a published raw
// block device, snapshots between the writes, and the allocated / delta streams checked against exactly
// what was written. Discarded ranges (blkdiscard -> FUSE punch-hole -> engine) are never reported by later
// meta-bitmap snapshots.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { call, cleanupDir, isRoot, MiB, PluginProcess, stream } from './plugin.js';
import {
  createSnapshot,
  createVolume,
  type Published,
  stageAndPublish,
  unpublishAndUnstage,
  writeDurable,
} from './volumes.js';

const execFileP = promisify(execFile);
const KiB = 1024;

interface Msg {
  block_metadata_type: string;
  volume_capacity_bytes: string;
  block_metadata: { byte_offset: string; size_bytes: string }[];
}

type Range = [start: number, end: number];

function extentsOf(msgs: Msg[]): Range[] {
  return msgs.flatMap((m) =>
    m.block_metadata.map((b): Range => [Number(b.byte_offset), Number(b.byte_offset) + Number(b.size_bytes)]),
  );
}

/** Sorted, merged ranges (adjacent ones joined). */
function merge(ranges: Range[]): Range[] {
  const out: Range[] = [];
  for (const [s, e] of [...ranges].sort((a, b) => a[0] - b[0])) {
    const last = out.at(-1);
    if (last && s <= last[1]) last[1] = Math.max(last[1], e);
    else out.push([s, e]);
  }
  return out;
}

/** Block-aligned cover of a byte range (4 KiB blocks). */
function blocks(offset: number, length: number): Range {
  return [Math.floor(offset / 4096) * 4096, Math.ceil((offset + length) / 4096) * 4096];
}

describe('SnapshotMetadata streams (root: loop devices, FUSE)', () => {
  let plugin: PluginProcess | undefined;
  let vol: Published;
  let other: string;
  const snaps: string[] = [];
  const written1: Range[] = [];
  const written2: Range[] = [];

  beforeAll(async () => {
    if (!isRoot) return;
    plugin = await PluginProcess.start();
    const p = plugin;
    vol = await stageAndPublish(p, await createVolume(p, 'cbt', 'block', 16 * MiB), 'block');
    for (const [off, len] of [
      [0, 64 * KiB],
      [1 * MiB, 8 * KiB],
      [5 * MiB + 4096, 8 * KiB],
      [9 * MiB + 100, 200],
    ] as const) {
      await writeDurable(vol.targetPath, off, randomBytes(len));
      written1.push(blocks(off, len));
    }
    snaps.push((await createSnapshot(p, 'cbt-1', vol.volumeId)).snapshot_id);
    for (const [off, len] of [
      [64 * KiB, 64 * KiB],
      [1 * MiB, 4 * KiB],
      [8 * MiB, 4 * KiB],
    ] as const) {
      await writeDurable(vol.targetPath, off, randomBytes(len));
      written2.push(blocks(off, len));
    }
    snaps.push((await createSnapshot(p, 'cbt-2', vol.volumeId, { method: 'meta-bitmap' })).snapshot_id);
    await execFileP('blkdiscard', ['--offset', '0', '--length', String(64 * KiB), vol.targetPath]);
    snaps.push((await createSnapshot(p, 'cbt-3', vol.volumeId, { method: 'meta-bitmap' })).snapshot_id);
    other = await createVolume(p, 'cbt-other', 'block', 16 * MiB);
    snaps.push((await createSnapshot(p, 'cbt-other-1', other)).snapshot_id);
  });

  afterAll(async () => {
    if (!plugin) return;
    const p = plugin;
    try {
      await unpublishAndUnstage(p, vol);
      for (const s of snaps) await call(p.clients.controller, 'DeleteSnapshot', { snapshot_id: s });
      for (const v of [vol.volumeId, other]) await call(p.clients.controller, 'DeleteVolume', { volume_id: v });
    } finally {
      await p.stop();
      await cleanupDir(p.dir);
    }
  });

  it.skipIf(!isRoot)('2-1 allocated extents of a snapshot are exactly the blocks written before it', async () => {
    const msgs = await stream<Msg>(plugin!.clients.metadata, 'GetMetadataAllocated', { snapshot_id: snaps[0] });
    expect(msgs.length).toBeGreaterThan(0);
    for (const m of msgs) {
      expect(m.block_metadata_type).toBe('VARIABLE_LENGTH');
      expect(Number(m.volume_capacity_bytes)).toBe(16 * MiB);
    }
    expect(merge(extentsOf(msgs))).toEqual(merge(written1));
  });

  it.skipIf(!isRoot)('2-2 delta between two snapshots is exactly the blocks written between them', async () => {
    const msgs = await stream<Msg>(plugin!.clients.metadata, 'GetMetadataDelta', {
      base_snapshot_id: snaps[0],
      target_snapshot_id: snaps[1],
    });
    expect(merge(extentsOf(msgs))).toEqual(merge(written2));
    const all = await stream<Msg>(plugin!.clients.metadata, 'GetMetadataAllocated', { snapshot_id: snaps[1] });
    expect(merge(extentsOf(all))).toEqual(merge([...written1, ...written2]));
  });

  it.skipIf(!isRoot)('2-3 a meta-bitmap snapshot never reports discarded blocks', async () => {
    const allocated = merge(
      extentsOf(await stream<Msg>(plugin!.clients.metadata, 'GetMetadataAllocated', { snapshot_id: snaps[2] })),
    );
    const expected = merge([...written1, ...written2]).flatMap(([s, e]): Range[] =>
      e <= 64 * KiB ? [] : [[Math.max(s, 64 * KiB), e]],
    );
    expect(allocated).toEqual(expected);
    const delta = extentsOf(
      await stream<Msg>(plugin!.clients.metadata, 'GetMetadataDelta', {
        base_snapshot_id: snaps[1],
        target_snapshot_id: snaps[2],
      }),
    );
    expect(delta.filter(([s]) => s < 64 * KiB)).toEqual([]);
  });

  it.skipIf(!isRoot)('2-4 max_results pages the stream and starting_offset resumes inside an extent', async () => {
    const full = extentsOf(
      await stream<Msg>(plugin!.clients.metadata, 'GetMetadataAllocated', { snapshot_id: snaps[1] }),
    );
    const paged = await stream<Msg>(plugin!.clients.metadata, 'GetMetadataAllocated', {
      snapshot_id: snaps[1],
      max_results: 1,
    });
    expect(paged.every((m) => m.block_metadata.length === 1)).toBe(true);
    expect(extentsOf(paged)).toEqual(full);
    const from = 5 * MiB + 8192;
    const resumed = extentsOf(
      await stream<Msg>(plugin!.clients.metadata, 'GetMetadataAllocated', {
        snapshot_id: snaps[1],
        starting_offset: String(from),
      }),
    );
    expect(resumed[0]).toEqual([from, 5 * MiB + 4096 + 8 * KiB]);
    expect(resumed).toEqual(full.filter(([, e]) => e > from).map(([s, e]): Range => [Math.max(s, from), e]));
    const atEnd = await stream<Msg>(plugin!.clients.metadata, 'GetMetadataAllocated', {
      snapshot_id: snaps[1],
      starting_offset: String(16 * MiB),
    });
    expect(atEnd).toHaveLength(1);
    expect(atEnd[0]!.block_metadata).toEqual([]);
  });

  it.skipIf(!isRoot)('2-5 invalid requests get the spec status codes', async () => {
    const m = plugin!.clients.metadata;
    const cases: Array<[string, object, number]> = [
      ['GetMetadataAllocated', {}, 3],
      ['GetMetadataAllocated', { snapshot_id: 'snap-00000000000000000000000000000000' }, 5],
      ['GetMetadataAllocated', { snapshot_id: snaps[0], starting_offset: String(16 * MiB + 1) }, 11],
      ['GetMetadataAllocated', { snapshot_id: snaps[0], starting_offset: '-1' }, 11],
      ['GetMetadataAllocated', { snapshot_id: snaps[0], max_results: -1 }, 3],
      ['GetMetadataDelta', { target_snapshot_id: snaps[1] }, 3],
      ['GetMetadataDelta', { base_snapshot_id: snaps[1], target_snapshot_id: snaps[0] }, 3],
      ['GetMetadataDelta', { base_snapshot_id: snaps[0], target_snapshot_id: snaps[3] }, 3],
      ['GetMetadataDelta', { base_snapshot_id: 'nope', target_snapshot_id: snaps[1] }, 5],
    ];
    for (const [method, req, code] of cases) {
      await expect(stream(m, method, req), `${method} ${JSON.stringify(req)}`).rejects.toMatchObject({ code });
    }
  });
});
