// SPDX-License-Identifier: Apache-2.0
// Driver logic over real engine volumes in memory (MemoryBackend) and real state files in a temp dir:
// idempotency by name, conflicts, dependency checks, thin clones and their content, pagination, metadata
// pages, crash recovery of every phase. Stage/publish need the data path and are covered by test/csi/.
// Thin clones, clone-method images, hydration, retirement, in-place restore and refresh: services-rw.test.ts.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../../common/src/log.js';
import { CsiError } from '../errors.js';
import { DriverState } from '../state/driver-state.js';
import { RECORD_VERSION } from '../state/records.js';
import type { DriverContext } from './context.js';
import {
  blockVolumeInput as input,
  MiB,
  testDriverContext,
  thinVolumeInput as thin,
} from './driver-harness.testing.js';
import { MemoryBackend } from './memory-backend.testing.js';
import { MetadataService } from './metadata-service.js';
import { recoverState } from './recovery.js';
import { SnapshotService } from './snapshot-service.js';
import { VolumeService } from './volume-service.js';

const mountCap = { mount: { fs_type: 'ext4' }, access_mode: { mode: 'SINGLE_NODE_WRITER' as const } };

function code(err: unknown): string {
  return err instanceof CsiError ? err.grpcStatus : `not a CsiError: ${String(err)}`;
}

async function rejectsWith(p: Promise<unknown>, grpc: string, message?: RegExp): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, 'expected a rejection').toBeDefined();
  expect(code(err)).toBe(grpc);
  if (message) expect((err as Error).message).toMatch(message);
}

describe('driver services', () => {
  let dir: string;
  let backend: MemoryBackend;
  let d: DriverContext;
  let volumes: VolumeService;
  let snapshots: SnapshotService;
  let metadata: MetadataService;
  const logged: string[] = [];

  async function boot(): Promise<void> {
    const log = createLogger({
      component: 'test',
      level: 'debug',
      destination: new Writable({
        write(chunk: Buffer, _enc, cb) {
          logged.push(chunk.toString());
          cb();
        },
      }),
    });
    const state = await DriverState.load(dir, log);
    d = testDriverContext(state, backend, log);
    volumes = new VolumeService(d);
    snapshots = new SnapshotService(d);
    metadata = new MetadataService(d);
  }

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'loopsnap-driver-'));
    backend = new MemoryBackend();
    await boot();
  });

  afterEach(async () => {
    await backend.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('6-1 CreateVolume is idempotent by name and refuses incompatible repeats with ALREADY_EXISTS', async () => {
    const a = await volumes.create(input('v'));
    expect(a.capacityBytes).toBe(4 * MiB);
    expect(a.accessTypes).toEqual(['block']);
    expect((await volumes.create(input('v'))).volumeId).toBe(a.volumeId);
    await rejectsWith(
      volumes.create(input('v', { capacityRange: { required_bytes: String(8 * MiB) } })),
      'ALREADY_EXISTS',
    );
    await rejectsWith(volumes.create(input('v', { capabilities: [mountCap] })), 'ALREADY_EXISTS');
    expect(backend.volumes.size).toBe(1);
  });

  it.each([
    [
      '6-2a unknown parameter',
      input('x', { parameters: { colour: 'blue' } }),
      'INVALID_ARGUMENT',
      /unknown StorageClass/,
    ],
    [
      '6-2b sidecar metadata is fine',
      input('x', { parameters: { 'csi.storage.k8s.io/pvc/name': 'p' } }),
      'OK',
      undefined,
    ],
    [
      '6-2c multi-node access',
      input('x', { capabilities: [{ block: {}, access_mode: { mode: 'MULTI_NODE_MULTI_WRITER' } }] }),
      'INVALID_ARGUMENT',
      /not supported/,
    ],
    [
      '6-2d unknown fs',
      input('x', { capabilities: [{ mount: { fs_type: 'zfs' }, access_mode: { mode: 'SINGLE_NODE_WRITER' } }] }),
      'INVALID_ARGUMENT',
      /fs_type/,
    ],
    ['6-2e too large', input('x', { capacityRange: { required_bytes: String(65 * MiB) } }), 'OUT_OF_RANGE', /maximum/],
    [
      '6-2f limit below required',
      input('x', { capacityRange: { required_bytes: String(8 * MiB), limit_bytes: String(4 * MiB) } }),
      'OUT_OF_RANGE',
      /exceeds limit/,
    ],
    [
      '6-2g other node',
      input('x', { accessibility: { requisite: [{ segments: { 'topology.loopsnap.dev/node': 'node-b' } }] } }),
      'RESOURCE_EXHAUSTED',
      /node-a/,
    ],
    [
      '6-2h missing source snapshot',
      input('x', { contentSource: { kind: 'snapshot', snapshotId: 'snap-0123456789abcdef0123456789abcdef' } }),
      'NOT_FOUND',
      /source snapshot/,
    ],
    [
      '6-2i missing source volume',
      input('x', { contentSource: { kind: 'volume', volumeId: 'fake-vol-id' } }),
      'NOT_FOUND',
      /source volume/,
    ],
  ] as const)('%s', async (_name, req, grpc, message) => {
    const p = volumes.create(req);
    if (grpc === 'OK') {
      expect((await p).name).toBe('x');
      return;
    }
    await rejectsWith(p, grpc, message);
    expect(backend.volumes.size).toBe(0);
    expect(d.state.volumes()).toEqual([]);
  });

  it('6-3 a restored volume holds the snapshot content, not later writes; the source cannot go first', async () => {
    const src = await volumes.create(input('src'));
    const v = backend.vol(src.volumeId);
    await v.write(0, new Uint8Array(8192).fill(1));
    await v.write(3 * MiB, new Uint8Array(100).fill(2));
    const snap = await snapshots.create({ name: 's', sourceVolumeId: src.volumeId, parameters: {} });
    expect(snap).toMatchObject({ readyToUse: true, sizeBytes: 4 * MiB, method: 'save-volume', phase: 'ready' });
    await v.write(0, new Uint8Array(8192).fill(9));
    await rejectsWith(
      volumes.create(
        input('small', {
          capacityRange: { required_bytes: String(2 * MiB) },
          contentSource: { kind: 'snapshot', snapshotId: snap.snapshotId },
        }),
      ),
      'OUT_OF_RANGE',
    );
    const restored = await volumes.create(
      thin('r', { contentSource: { kind: 'snapshot', snapshotId: snap.snapshotId } }),
    );
    expect(restored.origin).toEqual({
      kind: 'rw-clone',
      baseVolumeId: src.volumeId,
      engineSnapshotId: snap.engineSnapshotId,
    });
    const read = async (id: string, off: number, n: number) => {
      const buf = new Uint8Array(n);
      await backend.content(id).read(off, buf);
      return buf;
    };
    expect(await read(restored.volumeId, 0, 8192)).toEqual(new Uint8Array(8192).fill(1));
    expect(await read(restored.volumeId, 3 * MiB, 100)).toEqual(new Uint8Array(100).fill(2));
    const cloned = await volumes.create(thin('c', { contentSource: { kind: 'volume', volumeId: src.volumeId } }));
    expect(cloned.origin.kind).toBe('rw-clone');
    expect(await read(cloned.volumeId, 0, 8192)).toEqual(new Uint8Array(8192).fill(9));
    // The clone's base is a hidden snapshot: only the CSI snapshot is visible in the source queue.
    expect(
      backend
        .listSnapshots(src.volumeId)
        .filter((s) => !s.hidden)
        .map((s) => s.tag),
    ).toEqual([snap.snapshotId]);
    await rejectsWith(volumes.delete(src.volumeId), 'FAILED_PRECONDITION', /snapshot/);
    await snapshots.delete(snap.snapshotId);
    await volumes.delete(src.volumeId);
    await volumes.delete(src.volumeId);
    expect(backend.hasVolume(src.volumeId)).toBe(false);
    // Retired, not gone: the thin clones still read it, and it goes with the last of them.
    expect(await read(restored.volumeId, 0, 8192)).toEqual(new Uint8Array(8192).fill(1));
    expect(backend.factory.list('volumes')).toContain(src.volumeId);
    await volumes.delete(restored.volumeId);
    await volumes.delete(cloned.volumeId);
    expect(backend.factory.list('volumes')).toEqual([]);
  });

  it('6-4 CreateSnapshot: idempotent by name, ALREADY_EXISTS on another source or method, bad methods refused', async () => {
    const a = await volumes.create(input('a'));
    const b = await volumes.create(input('b'));
    const s = await snapshots.create({ name: 'n', sourceVolumeId: a.volumeId, parameters: { method: 'meta-bitmap' } });
    expect(
      (await snapshots.create({ name: 'n', sourceVolumeId: a.volumeId, parameters: { method: 'meta-bitmap' } }))
        .snapshotId,
    ).toBe(s.snapshotId);
    await rejectsWith(snapshots.create({ name: 'n', sourceVolumeId: b.volumeId, parameters: {} }), 'ALREADY_EXISTS');
    await rejectsWith(snapshots.create({ name: 'n', sourceVolumeId: a.volumeId, parameters: {} }), 'ALREADY_EXISTS');
    await rejectsWith(
      snapshots.create({ name: 'm', sourceVolumeId: a.volumeId, parameters: { method: 'cow' } }),
      'INVALID_ARGUMENT',
      /method/,
    );
    await rejectsWith(
      snapshots.create({ name: 'm', sourceVolumeId: 'vol-00000000000000000000000000000000', parameters: {} }),
      'NOT_FOUND',
    );
    await rejectsWith(
      Promise.resolve().then(() => snapshots.get('reallyfake')),
      'NOT_FOUND',
    );
    await snapshots.delete('reallyfake');
    expect(backend.listSnapshots(a.volumeId)).toHaveLength(1);
  });

  it('6-5 ListSnapshots filters and pages in id order; a token survives deletion of its snapshot', async () => {
    const a = await volumes.create(input('a'));
    const b = await volumes.create(input('b'));
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      const src = i % 2 === 0 ? a : b;
      ids.push((await snapshots.create({ name: `s${i}`, sourceVolumeId: src.volumeId, parameters: {} })).snapshotId);
    }
    const sorted = [...ids].sort();
    const p1 = snapshots.list({ snapshotId: '', sourceVolumeId: '', maxEntries: 2, startingToken: '' });
    expect(p1.entries.map((s) => s.snapshotId)).toEqual(sorted.slice(0, 2));
    await snapshots.delete(p1.nextToken);
    const p2 = snapshots.list({ snapshotId: '', sourceVolumeId: '', maxEntries: 0, startingToken: p1.nextToken });
    expect(p2.entries.map((s) => s.snapshotId)).toEqual(sorted.slice(2));
    expect(p2.nextToken).toBe('');
    expect(
      snapshots.list({ snapshotId: '', sourceVolumeId: b.volumeId, maxEntries: 0, startingToken: '' }).entries,
    ).toHaveLength([1, 3].map((k) => ids[k]).filter((id) => id !== p1.nextToken).length);
    expect(
      snapshots.list({ snapshotId: 'none-exist-id', sourceVolumeId: '', maxEntries: 0, startingToken: '' }).entries,
    ).toEqual([]);
    expect(() =>
      snapshots.list({ snapshotId: '', sourceVolumeId: '', maxEntries: 0, startingToken: 'garbage' }),
    ).toThrow(/starting_token/);
  });

  it('6-6 metadata pages: allocated and delta extents, max_results, starting offset, errors', async () => {
    const a = await volumes.create(input('a'));
    const v = backend.vol(a.volumeId);
    await v.write(0, new Uint8Array(12288).fill(1));
    await v.write(2 * MiB, new Uint8Array(4096).fill(1));
    const s1 = await snapshots.create({ name: 's1', sourceVolumeId: a.volumeId, parameters: {} });
    await v.write(1 * MiB, new Uint8Array(4096).fill(2));
    const s2 = await snapshots.create({ name: 's2', sourceVolumeId: a.volumeId, parameters: {} });
    const collect = async (s: { pages(): AsyncGenerator<{ offset: number; length: number }[]> }) => {
      const pages = [];
      for await (const p of s.pages()) pages.push(p);
      return pages;
    };
    expect((await collect(metadata.allocated(s1.snapshotId, { startingOffset: 0, maxResults: 0 }))).flat()).toEqual([
      { offset: 0, length: 12288 },
      { offset: 2 * MiB, length: 4096 },
    ]);
    const one = await collect(metadata.allocated(s2.snapshotId, { startingOffset: 5000, maxResults: 1 }));
    expect(one).toEqual([
      [{ offset: 5000, length: 12288 - 5000 }],
      [{ offset: MiB, length: 4096 }],
      [{ offset: 2 * MiB, length: 4096 }],
    ]);
    expect(
      (await collect(metadata.delta(s1.snapshotId, s2.snapshotId, { startingOffset: 0, maxResults: 0 }))).flat(),
    ).toEqual([{ offset: MiB, length: 4096 }]);
    expect(() => metadata.allocated(s1.snapshotId, { startingOffset: 4 * MiB + 1, maxResults: 0 })).toThrow(/outside/);
    expect(() => metadata.delta(s2.snapshotId, s1.snapshotId, { startingOffset: 0, maxResults: 0 })).toThrow(
      /not older/,
    );
    expect(() =>
      metadata.allocated('snap-00000000000000000000000000000000', { startingOffset: 0, maxResults: 0 }),
    ).toThrow(/does not exist/);
  });

  it('6-7 a failed engine step rolls the record back; nothing is left half-made', async () => {
    backend.failNext('createVolume');
    await expect(volumes.create(input('f'))).rejects.toThrow(/injected/);
    expect(d.state.volumeByName('f')).toBeUndefined();
    const a = await volumes.create(input('a'));
    backend.failNext('createSnapshot');
    await expect(snapshots.create({ name: 's', sourceVolumeId: a.volumeId, parameters: {} })).rejects.toThrow(
      /injected/,
    );
    expect(d.state.snapshotByName('s')).toBeUndefined();
    backend.failNext('createRwClone');
    const s = await snapshots.create({ name: 's', sourceVolumeId: a.volumeId, parameters: {} });
    await expect(
      volumes.create(input('r', { contentSource: { kind: 'snapshot', snapshotId: s.snapshotId } })),
    ).rejects.toThrow(/injected/);
    expect(d.state.volumeByName('r')).toBeUndefined();
    expect(backend.volumes.size).toBe(1);
  });

  it('6-8 recovery after a crash in every phase', async () => {
    const a = await volumes.create(input('a'));
    const gone = await volumes.create(input('gone'));
    const staged = await volumes.create(input('staged'));
    // Crash states, as a dead process would leave them on disk:
    const cut = await backend.createSnapshot(a.volumeId, {
      method: 'save-volume',
      tag: 'snap-11111111111111111111111111111111',
    });
    const base = {
      version: RECORD_VERSION,
      name: '',
      sourceVolumeId: a.volumeId,
      method: 'save-volume' as const,
      engineSnapshotId: -1,
      sizeBytes: 4 * MiB,
      createdAt: 1,
      readyToUse: false,
      parameters: {},
      phase: 'creating' as const,
    };
    await d.state.putSnapshot({ ...base, snapshotId: 'snap-11111111111111111111111111111111', name: 'cut-done' });
    await d.state.putSnapshot({
      ...base,
      snapshotId: 'snap-22222222222222222222222222222222',
      name: 'cut-never-happened',
    });
    const doomed = await snapshots.create({ name: 'doomed', sourceVolumeId: a.volumeId, parameters: {} });
    await d.state.putSnapshot({ ...d.state.snapshot(doomed.snapshotId)!, phase: 'deleting' });
    await d.state.putVolume({ ...d.state.volume(gone.volumeId)!, phase: 'deleting' });
    await d.state.putVolume({
      version: RECORD_VERSION,
      volumeId: 'vol-33333333333333333333333333333333',
      name: 'half',
      capacityBytes: 4 * MiB,
      accessTypes: ['block'],
      accessModes: [],
      fsType: '',
      parameters: {},
      contentSource: null,
      origin: { kind: 'empty' },
      createdAt: 1,
      phase: 'creating',
      stage: null,
      publish: {},
    });
    await backend.createVolume('vol-33333333333333333333333333333333', 4 * MiB);
    await d.state.putVolume({
      ...d.state.volume(staged.volumeId)!,
      stage: {
        stagingPath: '/nonexistent/staging',
        accessType: 'mount',
        fsType: 'ext4',
        mountFlags: [],
        device: '/dev/loop99',
        readOnly: false,
      },
    });
    await backend.createSnapshot(a.volumeId, {
      method: 'meta-bitmap',
      tag: `clone-source:vol-44444444444444444444444444444444`,
    });

    // "Restart": reload the state from disk over the same engine volumes.
    await boot();
    const report = await recoverState(d, [...backend.volumes.keys()]);
    expect(report.snapshotsCompleted).toEqual(['snap-11111111111111111111111111111111']);
    expect(report.snapshotsDropped).toEqual(['snap-22222222222222222222222222222222']);
    expect(report.snapshotsDeleted).toEqual([doomed.snapshotId]);
    expect(report.volumesDeleted).toEqual([gone.volumeId]);
    expect(report.volumesRolledBack).toEqual(['vol-33333333333333333333333333333333']);
    expect(report.volumesUnstaged).toEqual([staged.volumeId]);
    expect(report.hiddenSnapshotsDeleted).toBe(1);
    expect(d.state.snapshot('snap-11111111111111111111111111111111')).toMatchObject({
      phase: 'ready',
      readyToUse: true,
      engineSnapshotId: cut.engineSnapshotId,
    });
    expect(d.state.volume(staged.volumeId)?.stage).toBeNull();
    expect([...backend.volumes.keys()].sort()).toEqual([a.volumeId, staged.volumeId].sort());
    expect(backend.listSnapshots(a.volumeId).map((s) => s.tag)).toEqual(['snap-11111111111111111111111111111111']);
    expect(logged.some((l) => l.includes('Recovered driver state after an unclean stop'))).toBe(true);
  });

  it('6-9 ControllerExpandVolume grows, keeps larger sizes and refuses shrinking below via OUT_OF_RANGE limits', async () => {
    const a = await volumes.create(input('a'));
    // Raw block: this call grows the device itself, no NodeExpandVolume needed.
    expect(await volumes.expand(a.volumeId, { required_bytes: String(6 * MiB) })).toEqual({
      capacityBytes: 6 * MiB,
      nodeExpansion: false,
    });
    expect(backend.volumeSizeBytes(a.volumeId)).toBe(6 * MiB);
    expect(d.state.volume(a.volumeId)?.capacityBytes).toBe(6 * MiB);
    expect(await volumes.expand(a.volumeId, { required_bytes: String(2 * MiB) })).toEqual({
      capacityBytes: 6 * MiB,
      nodeExpansion: false,
    });
    // A file system volume needs the node step, also when a retry finds it grown already.
    const f = await volumes.create(input('f', { capabilities: [mountCap] }));
    const grown = { capacityBytes: 6 * MiB + 4096, nodeExpansion: true };
    expect(await volumes.expand(f.volumeId, { required_bytes: String(6 * MiB + 1) })).toEqual(grown);
    expect(await volumes.expand(f.volumeId, { required_bytes: String(6 * MiB + 1) })).toEqual(grown);
    await rejectsWith(volumes.expand(a.volumeId, { required_bytes: String(128 * MiB) }), 'OUT_OF_RANGE');
    await rejectsWith(volumes.expand('vol-00000000000000000000000000000000', { required_bytes: '1' }), 'NOT_FOUND');
  });
  it('6-10 a snapshot invalidated by a full save pool reads as not ready and cannot be restored', async () => {
    const a = await volumes.create(input('a'));
    const v = backend.vol(a.volumeId);
    await v.write(0, new Uint8Array(16384).fill(1));
    const s = await snapshots.create({ name: 's', sourceVolumeId: a.volumeId, parameters: {} });
    expect(snapshots.get(s.snapshotId).readyToUse).toBe(true);
    await v.setSaveQuota(4096);
    await v.write(0, new Uint8Array(16384).fill(2));
    expect(backend.getSnapshot(a.volumeId, s.engineSnapshotId)?.state).toBe('invalid');
    expect(snapshots.get(s.snapshotId).readyToUse).toBe(false);
    const listed = snapshots.list({ snapshotId: s.snapshotId, sourceVolumeId: '', maxEntries: 0, startingToken: '' });
    expect(listed.entries.map((e) => e.readyToUse)).toEqual([false]);
    const restore = volumes.create(input('r', { contentSource: { kind: 'snapshot', snapshotId: s.snapshotId } }));
    await expect(restore).rejects.toMatchObject({ grpcStatus: 'FAILED_PRECONDITION', code: 'CSI_ERR_NOT_READY' });
    expect(d.state.volumeByName('r')).toBeUndefined();
    await snapshots.delete(s.snapshotId);
  });

  it('6-11 operations on a volume in flight make others on it ABORTED, never queued; others proceed', async () => {
    const a = await volumes.create(input('a'));
    const b = await volumes.create(input('b'));
    const { release, reached } = backend.holdNext('createSnapshot');
    const slow = snapshots.create({ name: 'slow', sourceVolumeId: a.volumeId, parameters: {} });
    await reached;
    await rejectsWith(
      snapshots.create({ name: 'other', sourceVolumeId: a.volumeId, parameters: {} }),
      'ABORTED',
      /in progress/,
    );
    await rejectsWith(snapshots.create({ name: 'slow', sourceVolumeId: a.volumeId, parameters: {} }), 'ABORTED');
    await rejectsWith(volumes.delete(a.volumeId), 'ABORTED');
    await rejectsWith(volumes.expand(a.volumeId, { required_bytes: String(8 * MiB) }), 'ABORTED');
    // Another volume is not affected.
    expect((await snapshots.create({ name: 'fine', sourceVolumeId: b.volumeId, parameters: {} })).phase).toBe('ready');
    release();
    expect((await slow).phase).toBe('ready');
    expect((await snapshots.create({ name: 'other', sourceVolumeId: a.volumeId, parameters: {} })).phase).toBe('ready');
  });
});
