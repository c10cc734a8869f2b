// SPDX-License-Identifier: Apache-2.0
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../../common/src/log.js';
import { DriverState } from './driver-state.js';
import { newSnapshotId, newVolumeId } from './ids.js';
import { RECORD_VERSION, type SnapshotRecord, type VolumeRecord } from './records.js';

const log = createLogger({ component: 'test', level: 'silent' });

function volume(name: string, extra: Partial<VolumeRecord> = {}): VolumeRecord {
  return {
    version: RECORD_VERSION,
    volumeId: newVolumeId(),
    name,
    capacityBytes: 4096,
    accessTypes: ['block'],
    accessModes: ['SINGLE_NODE_WRITER'],
    fsType: '',
    parameters: {},
    contentSource: null,
    origin: { kind: 'empty' },
    createdAt: 1,
    phase: 'ready',
    stage: null,
    publish: {},
    ...extra,
  };
}

function snapshot(name: string, sourceVolumeId: string): SnapshotRecord {
  return {
    version: RECORD_VERSION,
    snapshotId: newSnapshotId(),
    name,
    sourceVolumeId,
    method: 'save-volume',
    engineSnapshotId: 1,
    sizeBytes: 4096,
    createdAt: 2,
    readyToUse: true,
    parameters: { method: 'save-volume' },
    phase: 'ready',
  };
}

describe('DriverState', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'loopsnap-state-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('10-1 records survive a reload with their name indexes; removes are durable too', async () => {
    const s = await DriverState.load(dir, log);
    const v = volume('pvc-1');
    const w = volume('pvc-2');
    await s.putVolume(v);
    await s.putVolume(w);
    const snap = snapshot('vs-1', v.volumeId);
    await s.putSnapshot(snap);
    await s.removeVolume(w.volumeId);
    const t = await DriverState.load(dir, log);
    expect(t.volumeByName('pvc-1')).toEqual(v);
    expect(t.volumeByName('pvc-2')).toBeUndefined();
    expect(t.snapshotByName('vs-1')).toEqual(snap);
    expect(t.snapshotsOf(v.volumeId)).toEqual([snap]);
    expect(await readdir(join(dir, 'csi', 'volumes'))).toEqual([`${v.volumeId}.json`]);
  });

  it('10-2 concurrent puts of one record serialise; the last one wins on disk and in memory', async () => {
    const s = await DriverState.load(dir, log);
    const v = volume('pvc');
    await Promise.all([1, 2, 3, 4, 5].map((n) => s.putVolume({ ...v, capacityBytes: n * 4096 })));
    expect(s.volume(v.volumeId)?.capacityBytes).toBe(5 * 4096);
    const onDisk = JSON.parse(await readFile(join(dir, 'csi', 'volumes', `${v.volumeId}.json`), 'utf8'));
    expect(onDisk.capacityBytes).toBe(5 * 4096);
  });

  it('10-3 a name cannot be taken by a second object', async () => {
    const s = await DriverState.load(dir, log);
    await s.putVolume(volume('same'));
    await expect(s.putVolume(volume('same'))).rejects.toMatchObject({ grpcStatus: 'ALREADY_EXISTS' });
  });

  it('10-4 temp files of an interrupted write are removed; corrupt records stop the load with DATA_LOSS', async () => {
    const s = await DriverState.load(dir, log);
    const v = volume('ok');
    await s.putVolume(v);
    await writeFile(join(dir, 'csi', 'volumes', `${v.volumeId}.json.tmp-123`), '{"half');
    await DriverState.load(dir, log);
    expect(await readdir(join(dir, 'csi', 'volumes'))).toEqual([`${v.volumeId}.json`]);
    await writeFile(join(dir, 'csi', 'volumes', `${v.volumeId}.json`), '{"half');
    await expect(DriverState.load(dir, log)).rejects.toMatchObject({ grpcStatus: 'DATA_LOSS' });
    await writeFile(join(dir, 'csi', 'volumes', `${v.volumeId}.json`), JSON.stringify({ ...v, version: 99 }));
    await expect(DriverState.load(dir, log)).rejects.toThrow(/unsupported record version 99/);
    const other = volume('other');
    await writeFile(join(dir, 'csi', 'volumes', `${v.volumeId}.json`), JSON.stringify(other));
    await expect(DriverState.load(dir, log)).rejects.toThrow(/holds the record of/);
  });

  it('10-5 files that are not ours are ignored; ids that are not ours are never written', async () => {
    await DriverState.load(dir, log);
    await writeFile(join(dir, 'csi', 'volumes', 'README'), 'hello');
    const s = await DriverState.load(dir, log);
    expect(s.volumes()).toEqual([]);
    await expect(s.putVolume({ ...volume('x'), volumeId: '../../etc/passwd' })).rejects.toThrow(/refusing/);
  });

  it('10-6 parentVolumeId: kept across a reload; records written before the field existed still load; a bad one is refused', async () => {
    const s = await DriverState.load(dir, log);
    const parent = volume('parent');
    const child = volume('child', { parentVolumeId: parent.volumeId });
    const old = volume('old');
    await s.putVolume(parent);
    await s.putVolume(child);
    // An old file: exactly the fields of a version 1 record before parentVolumeId.
    expect(Object.keys(old)).not.toContain('parentVolumeId');
    await writeFile(join(dir, 'csi', 'volumes', `${old.volumeId}.json`), JSON.stringify(old));
    const again = await DriverState.load(dir, log);
    expect(again.volume(child.volumeId)?.parentVolumeId).toBe(parent.volumeId);
    expect(again.volume(old.volumeId)).toEqual(old);
    expect('parentVolumeId' in (again.volume(old.volumeId) as object)).toBe(false);
    await writeFile(
      join(dir, 'csi', 'volumes', `${child.volumeId}.json`),
      JSON.stringify({ ...child, parentVolumeId: 'not-a-volume' }),
    );
    await expect(DriverState.load(dir, log)).rejects.toThrow(/bad parentVolumeId/);
  });
});
