// SPDX-License-Identifier: Apache-2.0
// Journal frame codec (the frame and record formats are described at the top of layout.ts).

import { corrupt, Reader, Writer } from './codec-io.js';
import { crc32 } from './crc32.js';
import { engineError } from './errors.js';
import {
  decodeMethod,
  decodeOrder,
  decodeSourceKind,
  decodeTag,
  FORMAT_VERSION,
  FRAME_HEADER_BYTES,
  JOURNAL_MAGIC,
  type JournalRecord,
  METHOD_CODES,
  MIN_READ_VERSION,
  ORDER_CODES,
  SOURCE_CODES,
} from './layout.js';

const utf8 = new TextEncoder();

function recordBytes(r: JournalRecord): number {
  switch (r.type) {
    case 'cow':
      return 21;
    case 'meta-set':
    case 'meta-clear':
      return 17;
    case 'snap-create':
      return 16 + utf8.encode(r.tag).length;
    case 'snap-delete':
    case 'snap-invalid':
    case 'snap-release':
      return 5;
    case 'resize':
    case 'quota':
      return 9;
    case 'snap-flags':
      return 6;
    case 'rw-create':
      return 27 + utf8.encode(r.tag).length;
    case 'rw-map':
      return 17;
    case 'rw-meta-set':
    case 'rw-discard':
      return 21;
    case 'rw-delete':
      return 5;
    case 'rw-refresh':
      return 9;
    case 'rw-resize':
      return 13;
    case 'restore-start':
      return 22 + utf8.encode(r.tag).length;
    case 'restore-done':
    case 'restore-first':
      return 17;
    case 'restore-end':
      return 1;
    case 'attr':
      return 7 + utf8.encode(r.key).length + utf8.encode(r.value).length;
  }
}

/** Encodes one journal frame holding `records`. */
export function encodeFrame(gen: number, seq: number, records: readonly JournalRecord[]): Uint8Array {
  let payload = 0;
  for (const r of records) payload += recordBytes(r);
  const bytes = new Uint8Array(FRAME_HEADER_BYTES + payload);
  const w = new Writer(bytes);
  w.u32(JOURNAL_MAGIC);
  w.u16(FORMAT_VERSION);
  w.u16(0);
  w.u32(gen);
  w.u32(seq);
  w.u32(payload);
  w.u32(0);
  for (const r of records) encodeRecord(w, r);
  const crc = crc32(bytes.subarray(FRAME_HEADER_BYTES), crc32(bytes.subarray(0, 20)));
  w.view.setUint32(20, crc, true);
  return bytes;
}

function encodeRecord(w: Writer, r: JournalRecord): void {
  switch (r.type) {
    case 'cow':
      w.u8(1);
      w.u32(r.snapId);
      w.u64(r.block);
      w.u32(r.slot);
      w.u32(r.sum);
      return;
    case 'meta-set':
    case 'meta-clear':
      w.u8(r.type === 'meta-set' ? 2 : 3);
      w.u64(r.granule);
      w.u64(r.count);
      return;
    case 'snap-create': {
      const tag = utf8.encode(r.tag);
      w.u8(4);
      w.u32(r.snapId);
      w.u8(METHOD_CODES[r.method]);
      w.f64(r.createdAt);
      w.u16(tag.length);
      w.raw(tag);
      return;
    }
    case 'snap-delete':
    case 'snap-invalid':
      w.u8(r.type === 'snap-delete' ? 5 : 6);
      w.u32(r.snapId);
      return;
    case 'snap-release':
      w.u8(22);
      w.u32(r.snapId);
      return;
    case 'resize':
      w.u8(7);
      w.u64(r.blockCount);
      return;
    case 'quota':
      w.u8(8);
      w.f64(r.quotaSlots ?? -1);
      return;
    case 'snap-flags':
      w.u8(9);
      w.u32(r.snapId);
      w.u8(r.flags);
      return;
    case 'rw-create': {
      const tag = utf8.encode(r.tag);
      w.u8(10);
      w.u32(r.rwId);
      w.u32(r.baseId);
      w.u64(r.blockCount);
      w.f64(r.createdAt);
      w.u16(tag.length);
      w.raw(tag);
      return;
    }
    case 'rw-map':
      w.u8(11);
      w.u32(r.rwId);
      w.u64(r.block);
      w.u32(r.slot);
      return;
    case 'rw-meta-set':
    case 'rw-discard':
      w.u8(r.type === 'rw-meta-set' ? 12 : 13);
      w.u32(r.rwId);
      w.u64(r.granule);
      w.u64(r.count);
      return;
    case 'rw-delete':
      w.u8(14);
      w.u32(r.rwId);
      return;
    case 'rw-refresh':
      w.u8(15);
      w.u32(r.rwId);
      w.u32(r.baseId);
      return;
    case 'rw-resize':
      w.u8(16);
      w.u32(r.rwId);
      w.u64(r.blockCount);
      return;
    case 'restore-start': {
      const tag = utf8.encode(r.tag);
      w.u8(17);
      w.u8(SOURCE_CODES[r.sourceKind]);
      w.u32(r.sourceId);
      w.u8(ORDER_CODES[r.order]);
      w.u32(r.rpId);
      w.f64(r.createdAt);
      w.u8(r.keep ? 1 : 0);
      w.u16(tag.length);
      w.raw(tag);
      return;
    }
    case 'restore-done':
    case 'restore-first':
      w.u8(r.type === 'restore-done' ? 18 : 19);
      w.u64(r.block);
      w.u64(r.count);
      return;
    case 'restore-end':
      w.u8(20);
      return;
    case 'attr': {
      const key = utf8.encode(r.key);
      const value = utf8.encode(r.value);
      w.u8(21);
      w.u16(key.length);
      w.raw(key);
      w.u32(value.length);
      w.raw(value);
      return;
    }
  }
}

export interface DecodedJournal {
  frames: JournalRecord[][];
  /** Byte length of the valid prefix. */
  validBytes: number;
}

/** Decodes the frames of generation `gen` from the start of `journal`, stopping at the first bad frame. */
export function decodeJournal(journal: Uint8Array, gen: number): DecodedJournal {
  const frames: JournalRecord[][] = [];
  const view = new DataView(journal.buffer, journal.byteOffset, journal.byteLength);
  let pos = 0;
  for (;;) {
    if (pos + FRAME_HEADER_BYTES > journal.length) break;
    if (view.getUint32(pos, true) !== JOURNAL_MAGIC) break;
    const version = view.getUint16(pos + 4, true);
    if (view.getUint32(pos + 8, true) !== gen || view.getUint32(pos + 12, true) !== frames.length) break;
    const length = view.getUint32(pos + 16, true);
    const end = pos + FRAME_HEADER_BYTES + length;
    if (end > journal.length) break;
    const crc = crc32(journal.subarray(pos + FRAME_HEADER_BYTES, end), crc32(journal.subarray(pos, pos + 20)));
    if (crc !== view.getUint32(pos + 20, true)) break;
    if (version < MIN_READ_VERSION || version > FORMAT_VERSION) {
      throw engineError('ENGINE_BAD_VERSION', `journal frame has format version ${version}`, {
        version,
        supported: FORMAT_VERSION,
      });
    }
    frames.push(decodeRecords(new Reader(journal, pos + FRAME_HEADER_BYTES, end, 'journal frame')));
    pos = end;
  }
  return { frames, validBytes: pos };
}

function decodeRecords(r: Reader): JournalRecord[] {
  const out: JournalRecord[] = [];
  while (!r.done()) {
    const type = r.u8();
    switch (type) {
      case 1:
        out.push({ type: 'cow', snapId: r.u32(), block: r.u64(), slot: r.u32(), sum: r.u32() });
        break;
      case 2:
      case 3:
        out.push({ type: type === 2 ? 'meta-set' : 'meta-clear', granule: r.u64(), count: r.u64() });
        break;
      case 4: {
        const snapId = r.u32();
        const method = decodeMethod(r.u8());
        const createdAt = r.f64();
        const tag = decodeTag(r.raw(r.u16()));
        out.push({ type: 'snap-create', snapId, method, createdAt, tag });
        break;
      }
      case 5:
      case 6:
        out.push({ type: type === 5 ? 'snap-delete' : 'snap-invalid', snapId: r.u32() });
        break;
      case 7:
        out.push({ type: 'resize', blockCount: r.u64() });
        break;
      case 8: {
        const q = r.f64();
        out.push({ type: 'quota', quotaSlots: q < 0 ? null : q });
        break;
      }
      case 9:
        out.push({ type: 'snap-flags', snapId: r.u32(), flags: r.u8() });
        break;
      case 10: {
        const rwId = r.u32();
        const baseId = r.u32();
        const blockCount = r.u64();
        const createdAt = r.f64();
        out.push({ type: 'rw-create', rwId, baseId, blockCount, createdAt, tag: decodeTag(r.raw(r.u16())) });
        break;
      }
      case 11:
        out.push({ type: 'rw-map', rwId: r.u32(), block: r.u64(), slot: r.u32() });
        break;
      case 12:
      case 13:
        out.push({ type: type === 12 ? 'rw-meta-set' : 'rw-discard', rwId: r.u32(), granule: r.u64(), count: r.u64() });
        break;
      case 14:
        out.push({ type: 'rw-delete', rwId: r.u32() });
        break;
      case 15:
        out.push({ type: 'rw-refresh', rwId: r.u32(), baseId: r.u32() });
        break;
      case 16:
        out.push({ type: 'rw-resize', rwId: r.u32(), blockCount: r.u64() });
        break;
      case 17: {
        const sourceKind = decodeSourceKind(r.u8());
        const sourceId = r.u32();
        const order = decodeOrder(r.u8());
        const rpId = r.u32();
        const createdAt = r.f64();
        const keep = r.u8() === 1;
        const tag = decodeTag(r.raw(r.u16()));
        out.push({ type: 'restore-start', sourceKind, sourceId, order, rpId, createdAt, keep, tag });
        break;
      }
      case 18:
      case 19:
        out.push({ type: type === 18 ? 'restore-done' : 'restore-first', block: r.u64(), count: r.u64() });
        break;
      case 20:
        out.push({ type: 'restore-end' });
        break;
      case 21: {
        const key = decodeTag(r.raw(r.u16()));
        out.push({ type: 'attr', key, value: decodeTag(r.raw(r.u32())) });
        break;
      }
      case 22:
        out.push({ type: 'snap-release', snapId: r.u32() });
        break;
      default:
        throw corrupt(`unknown journal record type ${type}`);
    }
  }
  return out;
}
