// SPDX-License-Identifier: Apache-2.0
// On-disk format of a volume's metadata (meta/), encoded and validated here; the stores only place bytes.
//
// Files of a volume directory (see store/volume-store.ts):
//   clone.img        the live blocks; block b at byte b * blockSize (sparse)
//   save.img         the save pool; slot s at byte s * blockSize
//   meta/checkpoint-0, meta/checkpoint-1   two checkpoint slots; generation g is written to slot g % 2
//   meta/journal     frames appended after the checkpoint of the same generation
//
// Byte order is little-endian everywhere. A u64 holds a non-negative integer below 2^53 as (lo u32, hi u32).
//
// Checkpoint (whole file):
//   0   u8[8]  magic "LSNPCKPT"
//   8   u16    version (FORMAT_VERSION)            10  u16  reserved, 0
//   12  u32    gen: generation of this checkpoint
//   16  u64    body length in bytes
//   24  u32    CRC-32 of the body                  28  u32  CRC-32 of bytes 0..27
//   32  body:
//       u32 blockSize, u64 blockCount, u8 granuleShift, u8[3] reserved, u32 nextSnapId,
//       u32 poolSlots (save-pool size), f64 quotaSlots (-1 = unlimited), f64 createdAt (ms since epoch),
//       u32 reserved
//       u32 P = meta pages in the pool, then P x 4096 bytes (1024 u32 words each)
//       page list of MBM_P: u32 n, then n x u32 page ref
//       u32 S = snapshots, then S x:
//         u32 id, u8 method (1 save-volume, 2 meta-bitmap), u8 state (1 valid, 2 invalid), u16 tag length,
//         tag (UTF-8), u64 blockCount, f64 createdAt, u64 meta granules, page list of MBM_i,
//         u64 E = block-map entries, then E x (u64 block, u32 slot) in ascending block order
//   A page ref is an index into the meta page pool, 0xFFFFFFFF = all zero (absent), 0xFFFFFFFE = all one.
//   Pages shared between bit maps are stored once.
//
// Journal: a sequence of frames, each
//   0   u32  magic 0x464A534C ("LSJF")   4  u16 version   6  u16 reserved
//   8   u32  gen (= the checkpoint generation it follows)   12 u32 seq (0, 1, 2, ... within the generation)
//   16  u32  payload length              20  u32  CRC-32 of bytes 0..19 and the payload
//   24  payload: records, each a u8 type then fixed fields:
//       1 cow           u32 snapId, u64 block, u32 slot, u32 sum   MAP_snap[block] = slot, BM_snap[block] = 1;
//                       sum = blockChecksum(before-image) lets replay reject an entry of the last frame
//                       whose save data did not reach the disk (save and journal are synced in parallel)
//       2 meta-set      u64 granule, u64 count                 MBM_P bits [granule, granule + count) := 1
//       3 meta-clear    u64 granule, u64 count                 MBM_P bits := 0
//       4 snap-create   u32 snapId, u8 method, f64 createdAt, u16 tag length, tag
//                       (MBM_snap := MBM_P as replayed up to this record; the new entry becomes the tail)
//       5 snap-delete   u32 snapId                              OP-11 merge into the next older entry
//       6 snap-invalid  u32 snapId                              EC-5: the snapshot lost a before-image
//       7 resize        u64 blockCount
//       8 quota         f64 quotaSlots (-1 = unlimited)
// The journal file may be longer than its valid frames (it is preallocated and reused after checkpoints).
// Replay applies frames of the checkpoint's generation with consecutive seq from 0 and stops at the first
// frame that is short, fails its CRC, or carries another generation: that frame was never acknowledged.
//
// Version policy: readers accept exactly FORMAT_VERSION and fail with ENGINE_BAD_VERSION otherwise; a
// format change bumps the version and adds an upgrade step here.

import { crc32 } from './crc32.js';
import { engineError } from './errors.js';
import { FULL_META_PAGE, META_PAGE_WORDS } from './meta-bitmap.js';

export const FORMAT_VERSION = 1;
export const CHECKPOINT_MAGIC = 'LSNPCKPT';
export const JOURNAL_MAGIC = 0x464a534c;
export const CHECKPOINT_HEADER_BYTES = 32;
export const FRAME_HEADER_BYTES = 24;
const PAGE_BYTES = META_PAGE_WORDS * 4;
const REF_ABSENT = 0xffffffff;
const REF_FULL = 0xfffffffe;
const TWO32 = 2 ** 32;

export type SnapshotMethod = 'save-volume' | 'meta-bitmap';
export type SnapshotState = 'valid' | 'invalid';

export type JournalRecord =
  | { type: 'cow'; snapId: number; block: number; slot: number; sum: number }
  | { type: 'meta-set'; granule: number; count: number }
  | { type: 'meta-clear'; granule: number; count: number }
  | { type: 'snap-create'; snapId: number; method: SnapshotMethod; createdAt: number; tag: string }
  | { type: 'snap-delete'; snapId: number }
  | { type: 'snap-invalid'; snapId: number }
  | { type: 'resize'; blockCount: number }
  | { type: 'quota'; quotaSlots: number | null };

export type MetaPages = readonly (Uint32Array | undefined)[];

export interface CheckpointSnapshot {
  id: number;
  method: SnapshotMethod;
  state: SnapshotState;
  tag: string;
  blockCount: number;
  createdAt: number;
  metaGranules: number;
  metaPages: MetaPages;
  /** Encoding: iterate entries in ascending block order. Decoding fills `entries` instead. */
  forEachEntry?: (fn: (block: number, slot: number) => void) => void;
  entryCount: number;
  /** Decoded entries: (block lo, block hi, slot) triples. */
  entries?: Uint32Array;
}

export interface CheckpointState {
  gen: number;
  blockSize: number;
  blockCount: number;
  granuleShift: number;
  nextSnapId: number;
  poolSlots: number;
  quotaSlots: number | null;
  createdAt: number;
  productionPages: MetaPages;
  snapshots: CheckpointSnapshot[];
}

const METHOD_CODES: Record<SnapshotMethod, number> = { 'save-volume': 1, 'meta-bitmap': 2 };
const STATE_CODES: Record<SnapshotState, number> = { valid: 1, invalid: 2 };
const utf8 = new TextEncoder();
const utf8d = new TextDecoder('utf-8', { fatal: true });

class Writer {
  readonly view: DataView;
  pos = 0;
  constructor(readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  u8(v: number): void {
    this.view.setUint8(this.pos, v);
    this.pos += 1;
  }
  u16(v: number): void {
    this.view.setUint16(this.pos, v, true);
    this.pos += 2;
  }
  u32(v: number): void {
    this.view.setUint32(this.pos, v >>> 0, true);
    this.pos += 4;
  }
  u64(v: number): void {
    this.u32(v % TWO32);
    this.u32(Math.floor(v / TWO32));
  }
  f64(v: number): void {
    this.view.setFloat64(this.pos, v, true);
    this.pos += 8;
  }
  raw(b: Uint8Array): void {
    this.bytes.set(b, this.pos);
    this.pos += b.length;
  }
  words(w: Uint32Array): void {
    for (let i = 0; i < w.length; i++) this.u32(w[i]!);
  }
}

class Reader {
  readonly view: DataView;
  pos: number;
  constructor(
    readonly bytes: Uint8Array,
    start: number,
    private readonly end: number,
    private readonly what: string,
  ) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.pos = start;
  }
  need(n: number): void {
    if (this.pos + n > this.end) throw corrupt(`${this.what} is truncated`, { at: this.pos });
  }
  u8(): number {
    this.need(1);
    return this.view.getUint8(this.pos++);
  }
  u16(): number {
    this.need(2);
    const v = this.view.getUint16(this.pos, true);
    this.pos += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.view.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }
  u64(): number {
    const lo = this.u32();
    const hi = this.u32();
    if (hi >= 2 ** 21) throw corrupt(`${this.what} holds an integer above 2^53`, { at: this.pos });
    return hi * TWO32 + lo;
  }
  f64(): number {
    this.need(8);
    const v = this.view.getFloat64(this.pos, true);
    this.pos += 8;
    return v;
  }
  raw(n: number): Uint8Array {
    this.need(n);
    const b = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
  done(): boolean {
    return this.pos >= this.end;
  }
}

function corrupt(message: string, details: Record<string, unknown> = {}) {
  return engineError('ENGINE_CORRUPT_METADATA', message, details);
}

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
      return 5;
    case 'resize':
    case 'quota':
      return 9;
  }
}

/**
 * Checksum of a saved before-image (cow record `sum`): a 32-bit multiply-xor hash over the bytes. It detects
 * a save slot whose data never reached the disk; it is not a cryptographic or error-correcting code.
 */
export function blockChecksum(data: Uint8Array): number {
  let h = 0x811c9dc5 ^ data.length;
  const words = data.byteOffset % 4 === 0 ? Math.floor(data.length / 4) : 0;
  if (words > 0) {
    const w = new Uint32Array(data.buffer, data.byteOffset, words);
    for (let i = 0; i < words; i++) h = Math.imul(h ^ w[i]!, 0x01000193) ^ (h >>> 15);
  }
  for (let i = words * 4; i < data.length; i++) h = Math.imul(h ^ data[i]!, 0x01000193) ^ (h >>> 15);
  return h >>> 0;
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
    case 'resize':
      w.u8(7);
      w.u64(r.blockCount);
      return;
    case 'quota':
      w.u8(8);
      w.f64(r.quotaSlots ?? -1);
      return;
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
    if (version !== FORMAT_VERSION) {
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
      default:
        throw corrupt(`unknown journal record type ${type}`);
    }
  }
  return out;
}

function decodeMethod(code: number): SnapshotMethod {
  if (code === 1) return 'save-volume';
  if (code === 2) return 'meta-bitmap';
  throw corrupt(`unknown snapshot method code ${code}`);
}

function decodeTag(bytes: Uint8Array): string {
  try {
    return utf8d.decode(bytes);
  } catch (err) {
    throw engineError('ENGINE_CORRUPT_METADATA', 'snapshot tag is not UTF-8', {}, err);
  }
}

/** Encodes a checkpoint. Meta pages are interned by identity, so shared pages are written once. */
export function encodeCheckpoint(s: CheckpointState): Uint8Array {
  const pool: Uint32Array[] = [];
  const index = new Map<Uint32Array, number>();
  const ref = (p: Uint32Array | undefined): number => {
    if (p === undefined) return REF_ABSENT;
    if (p === FULL_META_PAGE) return REF_FULL;
    let i = index.get(p);
    if (i === undefined) {
      i = pool.length;
      pool.push(p);
      index.set(p, i);
    }
    return i;
  };
  const prodRefs = s.productionPages.map(ref);
  const snapRefs = s.snapshots.map((snap) => snap.metaPages.map(ref));
  const tags = s.snapshots.map((snap) => utf8.encode(snap.tag));
  let body = 44 + 4 + pool.length * PAGE_BYTES + 4 + prodRefs.length * 4 + 4;
  s.snapshots.forEach((snap, i) => {
    body += 4 + 1 + 1 + 2 + tags[i]!.length + 8 + 8 + 8 + 4 + snapRefs[i]!.length * 4 + 8 + snap.entryCount * 12;
  });
  const bytes = new Uint8Array(CHECKPOINT_HEADER_BYTES + body);
  const w = new Writer(bytes);
  w.raw(utf8.encode(CHECKPOINT_MAGIC));
  w.u16(FORMAT_VERSION);
  w.u16(0);
  w.u32(s.gen);
  w.u64(body);
  w.u32(0);
  w.u32(0);
  w.u32(s.blockSize);
  w.u64(s.blockCount);
  w.u8(s.granuleShift);
  w.u8(0);
  w.u16(0);
  w.u32(s.nextSnapId);
  w.u32(s.poolSlots);
  w.f64(s.quotaSlots ?? -1);
  w.f64(s.createdAt);
  w.u32(0); // reserved
  w.u32(pool.length);
  for (const p of pool) w.words(p);
  w.u32(prodRefs.length);
  for (const r of prodRefs) w.u32(r);
  w.u32(s.snapshots.length);
  s.snapshots.forEach((snap, i) => {
    w.u32(snap.id);
    w.u8(METHOD_CODES[snap.method]);
    w.u8(STATE_CODES[snap.state]);
    w.u16(tags[i]!.length);
    w.raw(tags[i]!);
    w.u64(snap.blockCount);
    w.f64(snap.createdAt);
    w.u64(snap.metaGranules);
    const refs = snapRefs[i]!;
    w.u32(refs.length);
    for (const r of refs) w.u32(r);
    w.u64(snap.entryCount);
    let written = 0;
    snap.forEachEntry?.((block, slot) => {
      w.u64(block);
      w.u32(slot);
      written++;
    });
    if (written !== snap.entryCount)
      throw new Error(`snapshot ${snap.id}: ${written} entries, expected ${snap.entryCount}`);
  });
  if (w.pos !== bytes.length) throw new Error(`checkpoint size mismatch: ${w.pos} != ${bytes.length}`);
  const view = w.view;
  view.setUint32(24, crc32(bytes.subarray(CHECKPOINT_HEADER_BYTES)), true);
  view.setUint32(28, crc32(bytes.subarray(0, 28)), true);
  return bytes;
}

/** Reads only the header: returns the generation, or throws (BAD_MAGIC, BAD_VERSION, CORRUPT_METADATA). */
export function checkpointGeneration(bytes: Uint8Array): number {
  if (bytes.length < CHECKPOINT_HEADER_BYTES) throw corrupt('checkpoint is shorter than its header');
  const magic = new TextDecoder().decode(bytes.subarray(0, 8));
  if (magic !== CHECKPOINT_MAGIC) throw engineError('ENGINE_BAD_MAGIC', 'checkpoint magic mismatch', { magic });
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (crc32(bytes.subarray(0, 28)) !== view.getUint32(28, true)) throw corrupt('checkpoint header checksum mismatch');
  const version = view.getUint16(8, true);
  if (version !== FORMAT_VERSION) {
    throw engineError('ENGINE_BAD_VERSION', `checkpoint has format version ${version}`, {
      version,
      supported: FORMAT_VERSION,
    });
  }
  const bodyLength = view.getUint32(16, true) + view.getUint32(20, true) * TWO32;
  if (CHECKPOINT_HEADER_BYTES + bodyLength > bytes.length) throw corrupt('checkpoint body is truncated');
  const body = bytes.subarray(CHECKPOINT_HEADER_BYTES, CHECKPOINT_HEADER_BYTES + bodyLength);
  if (crc32(body) !== view.getUint32(24, true)) throw corrupt('checkpoint body checksum mismatch');
  return view.getUint32(12, true);
}

/** Generation and block size of a valid checkpoint (the header and body checksums are verified). */
export function peekCheckpoint(bytes: Uint8Array): { gen: number; blockSize: number } {
  const gen = checkpointGeneration(bytes);
  if (bytes.length < CHECKPOINT_HEADER_BYTES + 4) throw corrupt('checkpoint body is empty');
  const blockSize = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(
    CHECKPOINT_HEADER_BYTES,
    true,
  );
  return { gen, blockSize };
}

export function decodeCheckpoint(bytes: Uint8Array): CheckpointState {
  const gen = checkpointGeneration(bytes);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const bodyLength = view.getUint32(16, true) + view.getUint32(20, true) * TWO32;
  const r = new Reader(bytes, CHECKPOINT_HEADER_BYTES, CHECKPOINT_HEADER_BYTES + bodyLength, 'checkpoint');
  const blockSize = r.u32();
  const blockCount = r.u64();
  const granuleShift = r.u8();
  r.u8();
  r.u16();
  const nextSnapId = r.u32();
  const poolSlots = r.u32();
  const quota = r.f64();
  const createdAt = r.f64();
  r.u32();
  const poolCount = r.u32();
  const pool: Uint32Array[] = [];
  for (let i = 0; i < poolCount; i++) {
    const raw = r.raw(PAGE_BYTES);
    const page = new Uint32Array(META_PAGE_WORDS);
    const pv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    for (let j = 0; j < META_PAGE_WORDS; j++) page[j] = pv.getUint32(j * 4, true);
    pool.push(page);
  }
  const pages = (): (Uint32Array | undefined)[] => {
    const n = r.u32();
    const out: (Uint32Array | undefined)[] = [];
    for (let i = 0; i < n; i++) {
      const ref = r.u32();
      if (ref === REF_ABSENT) out.push(undefined);
      else if (ref === REF_FULL) out.push(FULL_META_PAGE);
      else {
        const p = pool[ref];
        if (p === undefined) throw corrupt(`meta page ref ${ref} outside the pool of ${poolCount}`);
        out.push(p);
      }
    }
    return out;
  };
  const productionPages = pages();
  const snapCount = r.u32();
  const snapshots: CheckpointSnapshot[] = [];
  for (let i = 0; i < snapCount; i++) {
    const id = r.u32();
    const method = decodeMethod(r.u8());
    const stateCode = r.u8();
    if (stateCode !== 1 && stateCode !== 2) throw corrupt(`unknown snapshot state code ${stateCode}`);
    const tag = decodeTag(r.raw(r.u16()));
    const snapBlocks = r.u64();
    const snapCreated = r.f64();
    const metaGranules = r.u64();
    const metaPages = pages();
    const entryCount = r.u64();
    r.need(entryCount * 12);
    const entries = new Uint32Array(entryCount * 3);
    for (let e = 0; e < entryCount; e++) {
      entries[e * 3] = r.u32();
      entries[e * 3 + 1] = r.u32();
      entries[e * 3 + 2] = r.u32();
    }
    snapshots.push({
      id,
      method,
      state: stateCode === 1 ? 'valid' : 'invalid',
      tag,
      blockCount: snapBlocks,
      createdAt: snapCreated,
      metaGranules,
      metaPages,
      entryCount,
      entries,
    });
  }
  if (!r.done()) throw corrupt('checkpoint has trailing bytes');
  return {
    gen,
    blockSize,
    blockCount,
    granuleShift,
    nextSnapId,
    poolSlots,
    quotaSlots: quota < 0 ? null : quota,
    createdAt,
    productionPages,
    snapshots,
  };
}
