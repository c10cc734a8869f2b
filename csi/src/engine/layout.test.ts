// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from 'vitest';
import { heapWords } from './bits.js';
import { decodeCheckpoint, encodeCheckpoint } from './checkpoint-codec.js';
import { crc32 } from './crc32.js';
import { BlockMap } from './block-map.js';
import { decodeJournal, encodeFrame } from './journal-codec.js';
import { type CheckpointState, FORMAT_VERSION, FRAME_HEADER_BYTES, type JournalRecord } from './layout.js';
import { FULL_META_PAGE, META_PAGE_WORDS } from './meta-bitmap.js';

const records: JournalRecord[] = [
  { type: 'cow', snapId: 3, block: 2 ** 40 + 7, slot: 99, sum: 0xfeedf00d },
  { type: 'meta-set', granule: 5, count: 9 },
  { type: 'meta-clear', granule: 2 ** 33, count: 1 },
  { type: 'snap-create', snapId: 4, method: 'meta-bitmap', createdAt: 1_700_000_000_123, tag: 'snapshot-é' },
  { type: 'snap-delete', snapId: 3 },
  { type: 'snap-invalid', snapId: 4 },
  { type: 'resize', blockCount: 12345 },
  { type: 'quota', quotaSlots: null },
  { type: 'quota', quotaSlots: 64 },
  { type: 'snap-flags', snapId: 4, flags: 3 },
  { type: 'rw-create', rwId: 2, baseId: 4, blockCount: 2 ** 35, createdAt: 1_700_000_000_456, tag: 'vol-ü' },
  { type: 'rw-map', rwId: 2, block: 2 ** 34 + 1, slot: 77 },
  { type: 'rw-meta-set', rwId: 2, granule: 3, count: 8 },
  { type: 'rw-discard', rwId: 2, granule: 2 ** 33, count: 2 },
  { type: 'rw-refresh', rwId: 2, baseId: 9 },
  { type: 'rw-resize', rwId: 2, blockCount: 2 ** 36 },
  { type: 'rw-delete', rwId: 2 },
  {
    type: 'restore-start',
    sourceKind: 'rw',
    sourceId: 3,
    order: 'old-then-new',
    rpId: 12,
    createdAt: 1_700_000_000_789,
    keep: true,
    tag: 'before-restore',
  },
  { type: 'restore-first', block: 2 ** 40, count: 3 },
  { type: 'restore-done', block: 5, count: 1 },
  { type: 'restore-end' },
  { type: 'attr', key: 'copy.cursor', value: '123456' },
  { type: 'attr', key: 'copy.cursor', value: '' },
];

function checkpoint(): CheckpointState {
  const page = new Uint32Array(META_PAGE_WORDS);
  page[3] = 0xdeadbeef;
  const map = new BlockMap(heapWords);
  map.set(1, 10);
  map.set(70_000, 11);
  return {
    gen: 7,
    blockSize: 4096,
    blockCount: 100_000,
    granuleShift: 1,
    nextSnapId: 9,
    poolSlots: 12,
    quotaSlots: null,
    createdAt: 5,
    productionPages: [page, FULL_META_PAGE],
    snapshots: [
      {
        id: 8,
        method: 'save-volume',
        state: 'invalid',
        flags: 5,
        tag: 'a',
        blockCount: 90_000,
        createdAt: 6,
        metaGranules: 45_000,
        metaPages: [page, undefined],
        entryCount: map.size,
        forEachEntry: (fn) => map.forEach(fn),
      },
    ],
    nextRwId: 4,
    rws: [
      {
        id: 3,
        base: 8,
        blockCount: 95_000,
        createdAt: 7,
        tag: 'rw',
        metaGranules: 47_500,
        metaPages: [FULL_META_PAGE, page],
        entryCount: map.size,
        forEachEntry: (fn) => map.forEach(fn),
      },
    ],
    attributes: [['k', 'v']],
    restore: {
      sourceKind: 'snapshot',
      sourceId: 8,
      order: 'new-then-old',
      rpId: 9,
      createdAt: 8,
      keep: false,
      tag: '',
      totalBlocks: 33,
      pending: [{ index: 2, words: page }],
      first: [],
    },
  };
}

describe('on-disk codec', () => {
  it('round-trips every journal record type', () => {
    const j = new Uint8Array([...encodeFrame(2, 0, records), ...encodeFrame(2, 1, records.slice(0, 2))]);
    const d = decodeJournal(j, 2);
    expect(d.frames).toEqual([records, records.slice(0, 2)]);
    expect(d.validBytes).toBe(j.length);
  });

  it('stops replay at a torn, corrupted, out-of-order or foreign-generation frame', () => {
    const f0 = encodeFrame(2, 0, records);
    const f1 = encodeFrame(2, 1, records);
    const torn = new Uint8Array([...f0, ...f1.subarray(0, f1.length - 3)]);
    expect(decodeJournal(torn, 2).frames).toHaveLength(1);
    const flipped = new Uint8Array([...f0, ...f1]);
    flipped[f0.length + 30]! ^= 1;
    expect(decodeJournal(flipped, 2).frames).toHaveLength(1);
    expect(decodeJournal(new Uint8Array([...f0, ...encodeFrame(2, 5, records)]), 2).frames).toHaveLength(1);
    expect(decodeJournal(f0, 3).frames).toHaveLength(0);
  });

  it('round-trips a checkpoint and stores a shared meta page once', () => {
    const cp = checkpoint();
    const bytes = encodeCheckpoint(cp);
    const back = decodeCheckpoint(bytes);
    expect(back.gen).toBe(7);
    expect(back.productionPages[1]).toBe(FULL_META_PAGE);
    expect(back.productionPages[0]).toBe(back.snapshots[0]!.metaPages[0]);
    expect(back.productionPages[0]![3]).toBe(0xdeadbeef);
    expect(back.snapshots[0]!.state).toBe('invalid');
    expect([...back.snapshots[0]!.entries!]).toEqual([1, 0, 10, 70_000, 0, 11]);
    expect(back.snapshots[0]!.flags).toBe(5);
    expect(back.nextRwId).toBe(4);
    expect(back.rws[0]!.metaPages[1]).toBe(back.productionPages[0]);
    expect(back.rws[0]!.metaPages[0]).toBe(FULL_META_PAGE);
    expect([...back.rws[0]!.entries!]).toEqual([1, 0, 10, 70_000, 0, 11]);
    expect(back.rws[0]).toMatchObject({ id: 3, base: 8, blockCount: 95_000, tag: 'rw', metaGranules: 47_500 });
    expect(back.attributes).toEqual([['k', 'v']]);
    expect(back.restore).toMatchObject({ sourceKind: 'snapshot', sourceId: 8, rpId: 9, totalBlocks: 33, first: [] });
    expect(back.restore!.pending[0]!.index).toBe(2);
    expect(back.restore!.pending[0]!.words[3]).toBe(0xdeadbeef);
    expect(bytes.length).toBeLessThan(3 * 4096 + 600);
  });

  it('reads version 1 checkpoints (no flags, RW snapshots, attributes or restore record)', () => {
    const v2 = encodeCheckpoint({ ...checkpoint(), rws: [], attributes: [], restore: null });
    // A version 1 body is the version 2 body without the flags byte of each snapshot and without the tail.
    const body = v2.subarray(32);
    const flagsAt = 32 + 44 + 4 + 4096 + 4 + 2 * 4 + 4 + 4 + 1 + 1;
    const tailBytes = 4 + 4 + 4 + 1;
    const v1 = new Uint8Array(v2.length - 1 - tailBytes);
    v1.set(v2.subarray(0, flagsAt));
    v1.set(v2.subarray(flagsAt + 1, v2.length - tailBytes), flagsAt);
    const view = new DataView(v1.buffer);
    view.setUint16(8, 1, true);
    view.setUint32(16, v1.length - 32, true);
    view.setUint32(24, crc32(v1.subarray(32)), true);
    view.setUint32(28, crc32(v1.subarray(0, 28)), true);
    void body;
    const back = decodeCheckpoint(v1);
    expect(back.snapshots[0]).toMatchObject({ id: 8, flags: 0, state: 'invalid', tag: 'a' });
    expect(back.rws).toEqual([]);
    expect(back.restore).toBeNull();
  });

  it('rejects bad magic, bad version and corruption with stable codes', () => {
    const bytes = encodeCheckpoint(checkpoint());
    const magic = bytes.slice();
    magic[0] = 0x58;
    expect(() => decodeCheckpoint(magic)).toThrow(expect.objectContaining({ code: 'ENGINE_BAD_MAGIC' }));
    const body = bytes.slice();
    body[100]! ^= 0xff;
    expect(() => decodeCheckpoint(body)).toThrow(expect.objectContaining({ code: 'ENGINE_CORRUPT_METADATA' }));
    const version = bytes.slice();
    const v = new DataView(version.buffer);
    v.setUint16(8, FORMAT_VERSION + 1, true);
    v.setUint32(28, crc32(version.subarray(0, 28)), true);
    expect(() => decodeCheckpoint(version)).toThrow(expect.objectContaining({ code: 'ENGINE_BAD_VERSION' }));
    const frame = encodeFrame(1, 0, records);
    const fv = new DataView(frame.buffer);
    fv.setUint16(4, FORMAT_VERSION + 1, true);
    fv.setUint32(20, crc32(frame.subarray(FRAME_HEADER_BYTES), crc32(frame.subarray(0, 20))), true);
    expect(() => decodeJournal(frame, 1)).toThrow(expect.objectContaining({ code: 'ENGINE_BAD_VERSION' }));
  });
});
