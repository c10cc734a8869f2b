// SPDX-License-Identifier: Apache-2.0
// Table-driven tests of the driver's pure helpers: capacity, pagination, parameters, capabilities, locks,
// paths and ids.
import { describe, expect, it } from 'vitest';
import { CsiError } from '../errors.js';
import { isSnapshotId, isVolumeId, nameProblem, newSnapshotId, newVolumeId } from '../state/ids.js';
import { accessModeOf, accessTypeOf, capabilityProblem, resolveFsType } from './capabilities.js';
import { capacityFits, resolveCapacity } from './capacity.js';
import { OperationLocks } from './locks.js';
import { paginate } from './pagination.js';
import {
  parseSnapshotParameters,
  parseVolumeParameters,
  persistedParameters,
  persistedVolumeParameters,
  recordHydrates,
} from './parameters.js';
import { checkPath } from './paths.js';

const MiB = 1024 * 1024;
const policy = { defaultBytes: 8 * MiB, alignBytes: 4096, minBytes: MiB, maxBytes: 64 * MiB };

function grpcOf(fn: () => unknown): string {
  try {
    fn();
    return 'OK';
  } catch (err) {
    return err instanceof CsiError ? err.grpcStatus : String(err);
  }
}

describe('resolveCapacity', () => {
  it.each([
    ['9-1a no range: default', null, 8 * MiB],
    ['9-1b required rounded up to the block', { required_bytes: String(MiB + 1) }, MiB + 4096],
    ['9-1c below minimum is raised', { required_bytes: '10' }, MiB],
    ['9-1d only a limit: default capped by it', { limit_bytes: String(2 * MiB) }, 2 * MiB],
    ['9-1e required = limit', { required_bytes: String(4 * MiB), limit_bytes: String(4 * MiB) }, 4 * MiB],
  ])('%s', (_n, range, size) => {
    expect(resolveCapacity(range, policy)).toBe(size);
  });

  it.each([
    ['9-2a required > limit', { required_bytes: String(4 * MiB), limit_bytes: String(2 * MiB) }, 'OUT_OF_RANGE'],
    [
      '9-2b rounding passes the limit',
      { required_bytes: String(MiB + 1), limit_bytes: String(MiB + 2) },
      'OUT_OF_RANGE',
    ],
    ['9-2c above maximum', { required_bytes: String(65 * MiB) }, 'OUT_OF_RANGE'],
    ['9-2d negative', { required_bytes: '-1' }, 'INVALID_ARGUMENT'],
  ])('%s', (_n, range, code) => {
    expect(grpcOf(() => resolveCapacity(range, policy))).toBe(code);
  });

  it('9-3 capacityFits', () => {
    expect(capacityFits(4 * MiB, { required_bytes: String(4 * MiB) })).toBe(true);
    expect(capacityFits(4 * MiB, { required_bytes: String(8 * MiB) })).toBe(false);
    expect(capacityFits(4 * MiB, { required_bytes: '1', limit_bytes: String(2 * MiB) })).toBe(false);
    expect(capacityFits(4 * MiB, null)).toBe(true);
  });
});

describe('paginate', () => {
  const items = ['a', 'b', 'c', 'd', 'e'];
  const page = (max: number, token: string) =>
    paginate(items, (x) => x, { maxEntries: max, startingToken: token, validToken: (t) => /^[a-z]$/.test(t) });

  it('9-4 pages in order with the last id as token', () => {
    expect(page(2, '')).toEqual({ entries: ['a', 'b'], nextToken: 'b' });
    expect(page(2, 'b')).toEqual({ entries: ['c', 'd'], nextToken: 'd' });
    expect(page(2, 'd')).toEqual({ entries: ['e'], nextToken: '' });
    expect(page(0, '')).toEqual({ entries: items, nextToken: '' });
  });

  it('9-5 a token whose item was deleted still continues after it', () => {
    const without = paginate(['a', 'c', 'd'], (x) => x, { maxEntries: 0, startingToken: 'b', validToken: () => true });
    expect(without.entries).toEqual(['c', 'd']);
  });

  it('9-6 foreign tokens are ABORTED, negative max_entries INVALID_ARGUMENT', () => {
    expect(grpcOf(() => page(0, 'invalid-token'))).toBe('ABORTED');
    expect(grpcOf(() => page(-1, ''))).toBe('INVALID_ARGUMENT');
  });
});

describe('parameters', () => {
  it.each([
    ['9-7a default method', {}, 'save-volume'],
    ['9-7b meta-bitmap', { method: 'meta-bitmap' }, 'meta-bitmap'],
    ['9-7c sidecar keys ignored', { 'csi.storage.k8s.io/volumesnapshot/name': 'x', method: 'clone' }, 'clone'],
  ])('%s', (_n, params, method) => {
    expect(parseSnapshotParameters(params).method).toBe(method);
  });

  it('9-8 unknown keys and values are INVALID_ARGUMENT', () => {
    expect(grpcOf(() => parseSnapshotParameters({ method: 'cow' }))).toBe('INVALID_ARGUMENT');
    expect(grpcOf(() => parseSnapshotParameters({ retain: '1' }))).toBe('INVALID_ARGUMENT');
    expect(grpcOf(() => parseVolumeParameters({ hydrate: 'yes' }))).toBe('INVALID_ARGUMENT');
    expect(parseVolumeParameters({ hydrate: 'true' }).hydrate).toBe(true);
    expect(persistedParameters({ hydrate: 'true', 'csi.storage.k8s.io/pv/name': 'p' })).toEqual({ hydrate: 'true' });
  });

  it('9-8b restores and clones hydrate unless the class says hydrate: "false"; records keep the choice', () => {
    expect(parseVolumeParameters({}).hydrate).toBe(true);
    expect(parseVolumeParameters({ hydrate: '' }).hydrate).toBe(true);
    expect(parseVolumeParameters({ hydrate: 'false' }).hydrate).toBe(false);
    expect(persistedVolumeParameters(undefined)).toEqual({ hydrate: 'true' });
    expect(persistedVolumeParameters({ hydrate: 'false', 'csi.storage.k8s.io/pvc/name': 'c' })).toEqual({
      hydrate: 'false',
    });
    expect(recordHydrates(persistedVolumeParameters({}))).toBe(true);
    expect(recordHydrates(persistedVolumeParameters({ hydrate: 'false' }))).toBe(false);
    // Written while thin was the default: stays thin after an upgrade.
    expect(recordHydrates({})).toBe(false);
  });
});

describe('capabilities', () => {
  it.each([
    ['9-9a block writer', { block: {}, access_mode: { mode: 'SINGLE_NODE_WRITER' } }, undefined],
    [
      '9-9b mount xfs reader',
      { mount: { fs_type: 'xfs' }, access_mode: { mode: 'SINGLE_NODE_READER_ONLY' } },
      undefined,
    ],
    ['9-9c numeric mode', { mount: {}, access_mode: { mode: 7 } }, undefined],
    ['9-9d no access type', { access_mode: { mode: 'SINGLE_NODE_WRITER' } }, /access_type/],
    ['9-9e no mode', { block: {} }, /access_mode/],
    ['9-9f multi node', { block: {}, access_mode: { mode: 'MULTI_NODE_READER_ONLY' } }, /not supported/],
    ['9-9g unknown fs', { mount: { fs_type: 'ntfs' }, access_mode: { mode: 'SINGLE_NODE_WRITER' } }, /fs_type/],
  ] as const)('%s', (_n, cap, problem) => {
    const p = capabilityProblem(cap as never);
    if (problem === undefined) expect(p).toBeUndefined();
    else expect(p).toMatch(problem);
  });

  it('9-10 access type, mode and fs resolution', () => {
    expect(accessTypeOf({ block: {}, access_type: 'block' })).toBe('block');
    expect(accessModeOf({ access_mode: { mode: 6 } })).toBe('SINGLE_NODE_SINGLE_WRITER');
    expect(resolveFsType({ mount: { fs_type: '' } }, '', 'ext4')).toBe('ext4');
    expect(resolveFsType({ mount: { fs_type: '' } }, 'xfs', 'ext4')).toBe('xfs');
    expect(resolveFsType({ mount: { fs_type: 'ext4' } }, 'xfs', 'xfs')).toBe('ext4');
  });
});

describe('OperationLocks', () => {
  it('9-11 a second operation on a held key is ABORTED at once; keys are released after errors', async () => {
    const locks = new OperationLocks();
    let release!: () => void;
    const first = locks.run('A', ['volume/x'], () => new Promise<void>((r) => (release = r)));
    await expect(locks.run('B', ['volume/y', 'volume/x'], async () => 1)).rejects.toMatchObject({
      grpcStatus: 'ABORTED',
    });
    expect(locks.isHeld('volume/y')).toBe(false);
    expect(await locks.run('C', ['volume/y'], async () => 2)).toBe(2);
    release();
    await first;
    await expect(locks.run('D', ['volume/x'], async () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    expect(locks.isHeld('volume/x')).toBe(false);
  });

  it('9-11b a call meeting the plugin`s own bookkeeping waits for it instead of failing; the bookkeeping does not wait', async () => {
    const locks = new OperationLocks();
    const order: string[] = [];
    let release!: () => void;
    const internal = locks.run(
      'BackgroundJobDone',
      ['volume/x'],
      () =>
        new Promise<void>((r) => {
          release = () => {
            order.push('internal done');
            r();
          };
        }),
      { internal: true },
    );
    const stage = locks.run('NodeStageVolume', ['volume/x'], async () => order.push('stage'));
    await new Promise((r) => setImmediate(r));
    expect(order).toEqual([]);
    release();
    await Promise.all([internal, stage]);
    expect(order).toEqual(['internal done', 'stage']);
    // A user operation in flight still makes the bookkeeping fail at once (its caller retries later).
    let free!: () => void;
    const user = locks.run('NodeStageVolume', ['volume/x'], () => new Promise<void>((r) => (free = r)));
    await expect(locks.run('BackgroundJobDone', ['volume/x'], async () => 1, { internal: true })).rejects.toMatchObject(
      {
        grpcStatus: 'ABORTED',
      },
    );
    free();
    await user;
  });
});

describe('ids and paths', () => {
  it('9-12 generated ids match their patterns and nothing else does', () => {
    expect(isVolumeId(newVolumeId())).toBe(true);
    expect(isSnapshotId(newSnapshotId())).toBe(true);
    expect(newVolumeId()).not.toBe(newVolumeId());
    for (const bad of [
      'fake-vol-id',
      'vol-../../etc',
      `vol-${'a'.repeat(31)}`,
      `vol-${'A'.repeat(32)}`,
      newSnapshotId(),
    ]) {
      expect(isVolumeId(bad), bad).toBe(false);
    }
  });

  it('9-13 names: 128 bytes, no control characters', () => {
    expect(nameProblem('x'.repeat(128))).toBeUndefined();
    expect(nameProblem('x'.repeat(129))).toMatch(/128/);
    expect(nameProblem('a\u0001b')).toMatch(/control/);
    expect(nameProblem('tab\tok')).toBeUndefined();
  });

  it.each([
    ['9-14a absolute', '/var/lib/kubelet/x/', '/var/lib/kubelet/x'],
    ['9-14b relative', 'some/path', 'INVALID_ARGUMENT'],
    ['9-14c dot-dot', '/a/../etc', 'INVALID_ARGUMENT'],
    ['9-14d NUL', '/a\u0000b', 'INVALID_ARGUMENT'],
  ])('%s', (_n, path, want) => {
    if (want.startsWith('/')) expect(checkPath('target_path', path)).toBe(want);
    else expect(grpcOf(() => checkPath('target_path', path))).toBe(want);
  });
});
