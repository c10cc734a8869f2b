// SPDX-License-Identifier: Apache-2.0
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  decodeSessionRecord,
  readSessionRecord,
  type SessionRecord,
  sessionRecordPath,
  writeSessionRecord,
} from './session-record.js';

const good: SessionRecord = {
  format: 1,
  connectionId: 41,
  mountpoint: '/var/lib/loopsnap/fuse',
  nextNodeId: 5,
  views: { 'vol-a': { nodeId: 2, kind: 'live' }, 'vol-b': { nodeId: 4, kind: 'file' } },
};

describe('FUSE session record', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
  const dir = (): string => {
    const d = mkdtempSync(join(tmpdir(), 'loopsnap-record-'));
    dirs.push(d);
    return d;
  };

  it('round-trips through the file and leaves no temporary file', () => {
    const d = dir();
    const path = sessionRecordPath(d);
    writeSessionRecord(path, good);
    expect(readSessionRecord(path)).toEqual({ record: good });
    expect(() => readFileSync(`${path}.tmp`)).toThrow(/ENOENT/);
    writeSessionRecord(path, { ...good, nextNodeId: 9 });
    expect(readSessionRecord(path).record?.nextNodeId).toBe(9);
  });

  it('reports a missing or corrupt record as a problem, not an exception', () => {
    const d = dir();
    const path = sessionRecordPath(d);
    expect(readSessionRecord(path).problem).toMatch(/no session record \(ENOENT\)/);
    writeFileSync(path, '{"format":1,"connectionId":4');
    expect(readSessionRecord(path).problem).toMatch(/unusable session record/);
  });

  it.each([
    ['an unknown format', { ...good, format: 2 }, /unknown session record format 2/],
    ['a negative connection id', { ...good, connectionId: -1 }, /bad connectionId/],
    ['a relative mount point', { ...good, mountpoint: 'fuse' }, /bad mountpoint/],
    ['the root node id', { ...good, views: { a: { nodeId: 1, kind: 'live' } } }, /bad node id of view a/],
    ['a node id not below nextNodeId', { ...good, views: { a: { nodeId: 5, kind: 'live' } } }, /bad node id/],
    [
      'two views with one node id',
      {
        ...good,
        views: { a: { nodeId: 2, kind: 'live' }, b: { nodeId: 2, kind: 'live' } },
      },
      /bad node id of view b/,
    ],
    ['an unknown kind', { ...good, views: { a: { nodeId: 2, kind: 'disk' } } }, /bad kind of view a/],
  ])('rejects %s', (_name, record, reason) => {
    expect(() => decodeSessionRecord(JSON.stringify(record))).toThrow(reason);
  });
});
