// SPDX-License-Identifier: Apache-2.0
// The node agent over real engine volumes in memory (MemoryBackend: the engine-volumes.ts of the real backend)
// and real state files: which operations run online (engine OP-13 / OP-10) and which in copy mode, the locks
// an online restore holds only until its switch, block-staged volumes restored while attached, restarts after
// the switch, and the refusals. The whole stack (controller, FUSE, loop) is covered by test/controller/.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../../common/src/log.js';
import type { DriverContext } from '../driver/context.js';
import {
  thinVolumeInput as input,
  MiB,
  rejectsWithCode as rejectsWith,
  sameBytes as same,
  testDriverContext,
  until,
} from '../driver/driver-harness.testing.js';
import { volumeKey } from '../driver/locks.js';
import { MemoryBackend, MemoryFactory } from '../driver/memory-backend.testing.js';
import { recoverState } from '../driver/recovery.js';
import { RestoreService } from '../driver/restore-service.js';
import { SnapshotService } from '../driver/snapshot-service.js';
import { VolumeService } from '../driver/volume-service.js';
import { pattern } from '../engine/testing/model.js';
import { DriverState } from '../state/driver-state.js';
import type { StageRecord } from '../state/records.js';
import type { ContentPort } from './content-port.js';
import { NodeAgent, type OperationView } from './node-agent.js';

/** The agent's content port over the memory backend's engine (EngineBackend implements it for real). */
function contentPort(b: () => MemoryBackend): ContentPort {
  return {
    blockSize: (id) => b().content(id).blockSize,
    volumeSizeBytes: (id) => b().volumeSizeBytes(id),
    liveAllocatedExtents: (id, q) => b().content(id).allocatedExtents(q.startingOffset, q.maxResults),
    allocatedExtents: (id, s, q) => b().allocatedExtents(id, s, q),
    readSnapshot: (id, s, o, into) => b().readSnapshot(id, s, o, into),
    readLive: (id, o, into) => b().content(id).read(o, into),
    writeLive: (id, o, d) => b().content(id).write(o, d),
    discardLive: (id, o, n) => b().content(id).discard(o, n),
    flushLive: (id) => b().content(id).flush(),
  };
}

describe('node agent: online and copy mode', () => {
  let dir: string;
  let factory: MemoryFactory;
  let backend: MemoryBackend;
  let d: DriverContext;
  let volumes: VolumeService;
  let snapshots: SnapshotService;
  let agent: NodeAgent;

  async function boot(opts: { paused?: boolean } = {}): Promise<void> {
    const log = createLogger({ component: 'test', level: 'silent' });
    backend = await MemoryBackend.start(factory);
    // Paused: the background copy of a restore stays pending, to observe the online phase.
    if (opts.paused === true) await backend.engine.scheduler.close();
    const state = await DriverState.load(dir, log);
    d = testDriverContext(state, backend, log);
    await recoverState(d, backend.engine.storedVolumeIds());
    volumes = new VolumeService(d);
    snapshots = new SnapshotService(d);
    agent = await NodeAgent.start({
      driver: d,
      snapshots,
      content: contentPort(() => backend),
      restores: new RestoreService(d, snapshots),
      stateDir: dir,
      log,
      retryMs: 5,
    });
    agent.resumeAll();
  }

  async function restart(opts: { paused?: boolean } = {}): Promise<void> {
    await agent.stop();
    await backend.close();
    await boot(opts);
  }

  const read = async (id: string, off: number, n: number) => {
    const buf = new Uint8Array(n);
    await backend.content(id).read(off, buf);
    return buf;
  };
  const write = (id: string, off: number, data: Uint8Array) => backend.content(id).write(off, data);
  const stage = async (volumeId: string, accessType: StageRecord['accessType']) => {
    const rec = d.state.volume(volumeId)!;
    await d.state.putVolume({
      ...rec,
      stage: {
        stagingPath: '/staging',
        accessType,
        fsType: '',
        mountFlags: [],
        device: '/dev/loop99',
        readOnly: false,
      },
    });
  };
  const done = (id: string) => () => ['completed', 'failed'].includes(agent.get(id).state);

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'loopsnap-agent-'));
    factory = new MemoryFactory();
    await boot();
  });

  afterEach(async () => {
    await agent.stop();
    await backend.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('10-1 online restore: reads see the snapshot at the switch, the lock goes, the copy finishes after a restart', async () => {
    await restart({ paused: true });
    const v = await volumes.create(input('v'));
    await write(v.volumeId, 0, pattern(1, 4 * MiB));
    const snap = await snapshots.create({ name: 's', sourceVolumeId: v.volumeId, parameters: {} });
    await write(v.volumeId, 0, pattern(2, 2 * MiB));
    const op = await agent.startRestore({
      operationId: 'restore-1',
      volumeId: v.volumeId,
      snapshotId: snap.snapshotId,
      keepRestorePoint: true,
      restorePointName: 'undo',
    });
    expect(op).toMatchObject({ mode: 'online', state: 'pending' });
    await until('the switch', () => (agent.get('restore-1').switchedAtMs ?? 0) > 0);
    const running: OperationView = agent.get('restore-1');
    expect(running).toMatchObject({ state: 'running', mustFinish: true, blocksTotal: 512, blockSizeBytes: 4096 });
    // Online: the volume reads the snapshot before the copy ran, and is free for stage, publish, delete.
    expect(same(await read(v.volumeId, 0, 4 * MiB), pattern(1, 4 * MiB))).toBe(true);
    expect(d.locks.isHeld(volumeKey(v.volumeId))).toBe(false);
    await write(v.volumeId, 8192, pattern(3, 100));
    // No cut while the engine copies: ABORTED, so that callers retry.
    await rejectsWith(
      snapshots.create({ name: 'during', sourceVolumeId: v.volumeId, parameters: {} }),
      'CSI_ERR_BUSY',
      /in-place restore/,
    );
    // The restore point holds the content before the restore.
    const undo = d.state.snapshot(running.restorePointSnapshotId)!;
    const got = new Uint8Array(4 * MiB);
    await backend.readSnapshot(v.volumeId, undo.engineSnapshotId, 0, got);
    const before = pattern(1, 4 * MiB);
    before.set(pattern(2, 2 * MiB), 0);
    expect(same(got, before)).toBe(true);
    // A restart after the switch takes no lock and follows the engine's resumed copy to the end.
    await restart();
    expect(d.locks.isHeld(volumeKey(v.volumeId))).toBe(false);
    await until('completion', done('restore-1'));
    expect(agent.get('restore-1')).toMatchObject({ state: 'completed', blocksDone: 512, blocksTotal: 512 });
    const want = pattern(1, 4 * MiB);
    want.set(pattern(3, 100), 8192);
    expect(same(await read(v.volumeId, 0, 4 * MiB), want)).toBe(true);
    await snapshots.create({ name: 'after', sourceVolumeId: v.volumeId, parameters: {} });
  });

  it('10-2 a block-staged volume is restored online while staged; one staged with a file system is refused', async () => {
    const v = await volumes.create(input('v'));
    await write(v.volumeId, 0, pattern(4, MiB));
    const snap = await snapshots.create({ name: 's', sourceVolumeId: v.volumeId, parameters: {} });
    await write(v.volumeId, 0, pattern(5, MiB));
    await stage(v.volumeId, 'mount');
    await rejectsWith(
      agent.startRestore({
        operationId: 'restore-fs',
        volumeId: v.volumeId,
        snapshotId: snap.snapshotId,
        keepRestorePoint: true,
        restorePointName: 'undo-fs',
      }),
      'AGENT_ERR_IN_USE',
      /mounted file system/,
    );
    // Nothing was left behind by the refusal: no operation, no restore point.
    await rejectsWith(
      Promise.resolve().then(() => agent.get('restore-fs')),
      'AGENT_ERR_NOT_FOUND',
    );
    expect(d.state.snapshotByName('undo-fs')).toBeUndefined();
    expect(same(await read(v.volumeId, 0, MiB), pattern(5, MiB))).toBe(true);
    await stage(v.volumeId, 'block');
    const op = await agent.startRestore({
      operationId: 'restore-blk',
      volumeId: v.volumeId,
      snapshotId: snap.snapshotId,
      keepRestorePoint: false,
      restorePointName: '',
    });
    expect(op.mode).toBe('online');
    await until('completion', done('restore-blk'));
    expect(agent.get('restore-blk')).toMatchObject({ state: 'completed', errorCode: '' });
    expect(same(await read(v.volumeId, 0, MiB), pattern(4, MiB))).toBe(true);
    expect(d.state.volume(v.volumeId)?.stage?.accessType).toBe('block');
  });

  it('10-3 refresh of a thin clone runs online: onto a newer snapshot and onto the source, same id, own changes dropped', async () => {
    const src = await volumes.create(input('src'));
    await write(src.volumeId, 0, pattern(1, MiB));
    const s1 = await snapshots.create({ name: 's1', sourceVolumeId: src.volumeId, parameters: {} });
    const clone = await volumes.create(input('c', { contentSource: { kind: 'snapshot', snapshotId: s1.snapshotId } }));
    await write(clone.volumeId, 0, pattern(9, 4096));
    await write(src.volumeId, 0, pattern(2, MiB));
    const s2 = await snapshots.create({ name: 's2', sourceVolumeId: src.volumeId, parameters: {} });
    await write(src.volumeId, 0, pattern(3, MiB));
    const op = await agent.startRefresh({
      operationId: 'refresh-1',
      volumeId: clone.volumeId,
      snapshotId: s2.snapshotId,
      fromSource: false,
    });
    expect(op.mode).toBe('online');
    await until('refresh', done('refresh-1'));
    expect(agent.get('refresh-1')).toMatchObject({ state: 'completed', blocksDone: 1024, blocksTotal: 1024 });
    expect(same(await read(clone.volumeId, 0, MiB), pattern(2, MiB))).toBe(true);
    expect(d.state.volume(clone.volumeId)?.origin).toMatchObject({ kind: 'rw-clone', baseVolumeId: src.volumeId });
    const fromSource = await agent.startRefresh({
      operationId: 'refresh-2',
      volumeId: clone.volumeId,
      snapshotId: '',
      fromSource: true,
    });
    expect(fromSource.mode).toBe('online');
    await until('refresh from the source', done('refresh-2'));
    expect(agent.get('refresh-2').state).toBe('completed');
    expect(same(await read(clone.volumeId, 0, MiB), pattern(3, MiB))).toBe(true);
    // The cut made for it is gone as a CSI snapshot (the engine keeps it hidden while the clone reads it).
    await until('the source cut deleted', () => d.state.snapshotByName('refresh-source-refresh-2') === undefined);
    // A staged clone is not refreshed under its reader.
    await stage(clone.volumeId, 'block');
    await rejectsWith(
      agent.startRefresh({
        operationId: 'refresh-3',
        volumeId: clone.volumeId,
        snapshotId: s1.snapshotId,
        fromSource: false,
      }),
      'AGENT_ERR_IN_USE',
    );
  });

  it('10-4 copy mode for what the engine cannot do in place: restoring a thin clone from a snapshot of its source', async () => {
    const src = await volumes.create(input('src'));
    await write(src.volumeId, 0, pattern(1, MiB));
    const s1 = await snapshots.create({ name: 's1', sourceVolumeId: src.volumeId, parameters: {} });
    await write(src.volumeId, 0, pattern(2, MiB));
    const s2 = await snapshots.create({ name: 's2', sourceVolumeId: src.volumeId, parameters: {} });
    const clone = await volumes.create(input('c', { contentSource: { kind: 'snapshot', snapshotId: s2.snapshotId } }));
    await write(clone.volumeId, 4096, pattern(7, 8192));
    const op = await agent.startRestore({
      operationId: 'restore-lineage',
      volumeId: clone.volumeId,
      snapshotId: s1.snapshotId,
      keepRestorePoint: false,
      restorePointName: '',
    });
    expect(op.mode).toBe('copy');
    await until('the copy', done('restore-lineage'));
    expect(agent.get('restore-lineage')).toMatchObject({ state: 'completed', switchedAtMs: 0 });
    expect(same(await read(clone.volumeId, 0, MiB), pattern(1, MiB))).toBe(true);
    // The source volume and its snapshots are untouched.
    expect(same(await read(src.volumeId, 0, MiB), pattern(2, MiB))).toBe(true);
    const got = new Uint8Array(MiB);
    await backend.readSnapshot(src.volumeId, s2.engineSnapshotId, 0, got);
    expect(same(got, pattern(2, MiB))).toBe(true);
    // Copy mode needs the clone unstaged.
    await stage(clone.volumeId, 'block');
    await rejectsWith(
      agent.startRestore({
        operationId: 'restore-lineage-2',
        volumeId: clone.volumeId,
        snapshotId: s1.snapshotId,
        keepRestorePoint: false,
        restorePointName: '',
      }),
      'AGENT_ERR_IN_USE',
    );
  });

  it('10-6 the lineage outlives the snapshot a clone was made from; a snapshot outside it is refused', async () => {
    const src = await volumes.create(input('src'));
    const other = await volumes.create(input('other'));
    await write(src.volumeId, 0, pattern(1, MiB));
    const s1 = await snapshots.create({ name: 's1', sourceVolumeId: src.volumeId, parameters: {} });
    const clone = await volumes.create(input('c', { contentSource: { kind: 'snapshot', snapshotId: s1.snapshotId } }));
    await snapshots.delete(s1.snapshotId);
    await write(src.volumeId, 0, pattern(2, MiB));
    const s2 = await snapshots.create({ name: 's2', sourceVolumeId: src.volumeId, parameters: {} });
    const foreign = await snapshots.create({ name: 'f', sourceVolumeId: other.volumeId, parameters: {} });
    await rejectsWith(
      agent.startRestore({
        operationId: 'restore-foreign',
        volumeId: clone.volumeId,
        snapshotId: foreign.snapshotId,
        keepRestorePoint: false,
        restorePointName: '',
      }),
      'AGENT_ERR_NOT_IN_LINEAGE',
      new RegExp(`${clone.volumeId} <- ${src.volumeId}`),
    );
    await agent.startRefresh({
      operationId: 'refresh-after',
      volumeId: clone.volumeId,
      snapshotId: '',
      fromSource: true,
    });
    await until('refresh from the source', done('refresh-after'));
    expect(agent.get('refresh-after')).toMatchObject({ state: 'completed', mode: 'online' });
    expect(same(await read(clone.volumeId, 0, MiB), pattern(2, MiB))).toBe(true);
    await agent.startRestore({
      operationId: 'restore-lineage',
      volumeId: clone.volumeId,
      snapshotId: s2.snapshotId,
      keepRestorePoint: false,
      restorePointName: '',
    });
    await until('the copy', done('restore-lineage'));
    expect(agent.get('restore-lineage')).toMatchObject({ state: 'completed', mode: 'copy' });
  });

  it('10-5 an online restore whose volume is deleted during the copy fails with a clear message', async () => {
    await restart({ paused: true });
    const v = await volumes.create(input('v'));
    await write(v.volumeId, 0, pattern(1, MiB));
    const snap = await snapshots.create({ name: 's', sourceVolumeId: v.volumeId, parameters: {} });
    await write(v.volumeId, 0, pattern(2, MiB));
    await agent.startRestore({
      operationId: 'restore-gone',
      volumeId: v.volumeId,
      snapshotId: snap.snapshotId,
      keepRestorePoint: false,
      restorePointName: '',
    });
    await until('the switch', () => (agent.get('restore-gone').switchedAtMs ?? 0) > 0);
    await snapshots.delete(snap.snapshotId); // deferred in the engine while the restore reads it
    await volumes.delete(v.volumeId);
    await until('the failure', done('restore-gone'));
    expect(agent.get('restore-gone')).toMatchObject({ state: 'failed', errorCode: 'AGENT_ERR_NOT_FOUND' });
    expect(agent.get('restore-gone').message).toMatch(/deleted while its restore copied/);
  });
});
