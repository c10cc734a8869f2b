// SPDX-License-Identifier: Apache-2.0
// Checkpoint encoding (format described at the top of layout.ts).

import { corrupt, Reader, TWO32, Writer } from './codec-io.js';
import { crc32 } from './crc32.js';
import { engineError } from './errors.js';
import {
  type BitPages,
  CHECKPOINT_HEADER_BYTES,
  CHECKPOINT_MAGIC,
  type CheckpointRestore,
  type CheckpointRw,
  type CheckpointSnapshot,
  type CheckpointState,
  decodeMethod,
  decodeOrder,
  decodeSourceKind,
  decodeTag,
  FORMAT_VERSION,
  METHOD_CODES,
  MIN_READ_VERSION,
  ORDER_CODES,
  SOURCE_CODES,
  STATE_CODES,
} from './layout.js';
import { FULL_META_PAGE, META_PAGE_WORDS } from './meta-bitmap.js';

const PAGE_BYTES = META_PAGE_WORDS * 4;
const REF_ABSENT = 0xffffffff;
const REF_FULL = 0xfffffffe;
const utf8 = new TextEncoder();

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
  const rwRefs = s.rws.map((rw) => rw.metaPages.map(ref));
  const rwTags = s.rws.map((rw) => utf8.encode(rw.tag));
  const attrs = s.attributes.map(([k, v]) => [utf8.encode(k), utf8.encode(v)] as const);
  const restoreTag = utf8.encode(s.restore?.tag ?? '');
  let body = 44 + 4 + pool.length * PAGE_BYTES + 4 + prodRefs.length * 4 + 4;
  s.snapshots.forEach((snap, i) => {
    body += 4 + 1 + 1 + 1 + 2 + tags[i]!.length + 8 + 8 + 8 + 4 + snapRefs[i]!.length * 4 + 8 + snap.entryCount * 12;
  });
  body += 8;
  s.rws.forEach((rw, i) => {
    body += 4 + 4 + 8 + 8 + 2 + rwTags[i]!.length + 8 + 4 + rwRefs[i]!.length * 4 + 8 + rw.entryCount * 12;
  });
  body += 4;
  for (const [k, v] of attrs) body += 2 + k.length + 4 + v.length;
  body += 1;
  if (s.restore !== null) {
    body += 1 + 4 + 1 + 4 + 8 + 1 + 2 + restoreTag.length + 8;
    body += bitPagesBytes(s.restore.pending) + bitPagesBytes(s.restore.first);
  }
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
    w.u8(snap.flags);
    w.u16(tags[i]!.length);
    w.raw(tags[i]!);
    w.u64(snap.blockCount);
    w.f64(snap.createdAt);
    w.u64(snap.metaGranules);
    const refs = snapRefs[i]!;
    w.u32(refs.length);
    for (const r of refs) w.u32(r);
    writeEntries(w, `snapshot ${snap.id}`, snap);
  });
  w.u32(s.nextRwId);
  w.u32(s.rws.length);
  s.rws.forEach((rw, i) => {
    w.u32(rw.id);
    w.u32(rw.base);
    w.u64(rw.blockCount);
    w.f64(rw.createdAt);
    w.u16(rwTags[i]!.length);
    w.raw(rwTags[i]!);
    w.u64(rw.metaGranules);
    const refs = rwRefs[i]!;
    w.u32(refs.length);
    for (const r of refs) w.u32(r);
    writeEntries(w, `RW snapshot ${rw.id}`, rw);
  });
  w.u32(attrs.length);
  for (const [k, v] of attrs) {
    w.u16(k.length);
    w.raw(k);
    w.u32(v.length);
    w.raw(v);
  }
  const rs = s.restore;
  w.u8(rs === null ? 0 : 1);
  if (rs !== null) {
    w.u8(SOURCE_CODES[rs.sourceKind]);
    w.u32(rs.sourceId);
    w.u8(ORDER_CODES[rs.order]);
    w.u32(rs.rpId);
    w.f64(rs.createdAt);
    w.u8(rs.keep ? 1 : 0);
    w.u16(restoreTag.length);
    w.raw(restoreTag);
    w.u64(rs.totalBlocks);
    writeBitPages(w, rs.pending);
    writeBitPages(w, rs.first);
  }
  if (w.pos !== bytes.length) throw new Error(`checkpoint size mismatch: ${w.pos} != ${bytes.length}`);
  const view = w.view;
  view.setUint32(24, crc32(bytes.subarray(CHECKPOINT_HEADER_BYTES)), true);
  view.setUint32(28, crc32(bytes.subarray(0, 28)), true);
  return bytes;
}

function writeEntries(
  w: Writer,
  what: string,
  e: { entryCount: number; forEachEntry?: (fn: (block: number, slot: number) => void) => void },
): void {
  w.u64(e.entryCount);
  let written = 0;
  e.forEachEntry?.((block, slot) => {
    w.u64(block);
    w.u32(slot);
    written++;
  });
  if (written !== e.entryCount) throw new Error(`${what}: ${written} entries, expected ${e.entryCount}`);
}

function bitPagesBytes(pages: BitPages): number {
  return 4 + pages.length * (4 + PAGE_BYTES);
}

function writeBitPages(w: Writer, pages: BitPages): void {
  w.u32(pages.length);
  for (const p of pages) {
    if (p.words.length !== META_PAGE_WORDS) throw new Error(`bit page ${p.index} has ${p.words.length} words`);
    w.u32(p.index);
    w.words(p.words);
  }
}

function readBitPages(r: Reader): BitPages {
  const n = r.u32();
  const out: { index: number; words: Uint32Array }[] = [];
  let last = -1;
  for (let i = 0; i < n; i++) {
    const index = r.u32();
    if (index <= last) throw corrupt('bit pages are not ascending');
    last = index;
    out.push({ index, words: readWords(r) });
  }
  return out;
}

function readWords(r: Reader): Uint32Array {
  const raw = r.raw(PAGE_BYTES);
  const page = new Uint32Array(META_PAGE_WORDS);
  const pv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  for (let j = 0; j < META_PAGE_WORDS; j++) page[j] = pv.getUint32(j * 4, true);
  return page;
}

function readEntries(r: Reader): { entryCount: number; entries: Uint32Array } {
  const entryCount = r.u64();
  r.need(entryCount * 12);
  const entries = new Uint32Array(entryCount * 3);
  for (let e = 0; e < entryCount; e++) {
    entries[e * 3] = r.u32();
    entries[e * 3 + 1] = r.u32();
    entries[e * 3 + 2] = r.u32();
  }
  return { entryCount, entries };
}

/** Version of a checkpoint whose header checksum is valid (called after checkpointGeneration). */
function checkpointVersion(bytes: Uint8Array): number {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint16(8, true);
}

/** Reads only the header: returns the generation, or throws (BAD_MAGIC, BAD_VERSION, CORRUPT_METADATA). */
export function checkpointGeneration(bytes: Uint8Array): number {
  if (bytes.length < CHECKPOINT_HEADER_BYTES) throw corrupt('checkpoint is shorter than its header');
  const magic = new TextDecoder().decode(bytes.subarray(0, 8));
  if (magic !== CHECKPOINT_MAGIC) throw engineError('ENGINE_BAD_MAGIC', 'checkpoint magic mismatch', { magic });
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (crc32(bytes.subarray(0, 28)) !== view.getUint32(28, true)) throw corrupt('checkpoint header checksum mismatch');
  const version = view.getUint16(8, true);
  if (version < MIN_READ_VERSION || version > FORMAT_VERSION) {
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
  const version = checkpointVersion(bytes);
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
  for (let i = 0; i < poolCount; i++) pool.push(readWords(r));
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
    const flags = version >= 2 ? r.u8() : 0;
    const tag = decodeTag(r.raw(r.u16()));
    const snapBlocks = r.u64();
    const snapCreated = r.f64();
    const metaGranules = r.u64();
    const metaPages = pages();
    const { entryCount, entries } = readEntries(r);
    snapshots.push({
      id,
      method,
      state: stateCode === 1 ? 'valid' : 'invalid',
      flags,
      tag,
      blockCount: snapBlocks,
      createdAt: snapCreated,
      metaGranules,
      metaPages,
      entryCount,
      entries,
    });
  }
  let nextRwId = 1;
  const rws: CheckpointRw[] = [];
  const attributes: [string, string][] = [];
  let restore: CheckpointRestore | null = null;
  if (version >= 2) {
    nextRwId = r.u32();
    const rwCount = r.u32();
    for (let i = 0; i < rwCount; i++) {
      const id = r.u32();
      const base = r.u32();
      const rwBlocks = r.u64();
      const rwCreated = r.f64();
      const tag = decodeTag(r.raw(r.u16()));
      const metaGranules = r.u64();
      const metaPages = pages();
      const { entryCount, entries } = readEntries(r);
      rws.push({
        id,
        base,
        blockCount: rwBlocks,
        createdAt: rwCreated,
        tag,
        metaGranules,
        metaPages,
        entryCount,
        entries,
      });
    }
    const attrCount = r.u32();
    for (let i = 0; i < attrCount; i++) {
      const key = decodeTag(r.raw(r.u16()));
      attributes.push([key, decodeTag(r.raw(r.u32()))]);
    }
    if (r.u8() === 1) {
      const sourceKind = decodeSourceKind(r.u8());
      const sourceId = r.u32();
      const order = decodeOrder(r.u8());
      const rpId = r.u32();
      const rsCreated = r.f64();
      const keep = r.u8() === 1;
      const tag = decodeTag(r.raw(r.u16()));
      const totalBlocks = r.u64();
      const pending = readBitPages(r);
      const first = readBitPages(r);
      restore = { sourceKind, sourceId, order, rpId, createdAt: rsCreated, keep, tag, totalBlocks, pending, first };
    }
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
    nextRwId,
    rws,
    attributes,
    restore,
  };
}
