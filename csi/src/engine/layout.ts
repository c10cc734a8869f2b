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
//         u32 id, u8 method (1 save-volume, 2 meta-bitmap), u8 state (1 valid, 2 invalid), [v2: u8 flags],
//         u16 tag length, tag (UTF-8), u64 blockCount, f64 createdAt, u64 meta granules, page list of MBM_i,
//         u64 E = block-map entries, then E x (u64 block, u32 slot) in ascending block order
//       version 2 only, after the snapshots:
//       u32 nextRwId, u32 R = RW snapshots, then R x:
//         u32 id, u32 base snapshot id, u64 blockCount, f64 createdAt, u16 tag length, tag,
//         u64 meta granules, page list of MBMR, u64 E, then E x (u64 block, u32 slot) ascending
//       u32 A = attributes, then A x (u16 key length, key, u32 value length, value) (UTF-8)
//       u8 restoring (0/1); when 1: u8 source kind (1 snapshot, 2 RW), u32 source id, u8 order
//         (1 old-then-new, 2 new-then-old), u32 restore point id, f64 createdAt, u8 keep, u16 tag length, tag,
//         u64 total blocks, bit pages of RP (pending), bit pages of the first pass
//   A page ref is an index into the meta page pool, 0xFFFFFFFF = all zero (absent), 0xFFFFFFFE = all one.
//   Pages shared between bit maps are stored once. Bit pages: u32 n, then n x (u32 page index, 1024 u32
//   words), each page covering 32768 blocks; absent pages are all zero.
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
//   version 2 adds:
//       9 snap-flags    u32 snapId, u8 flags                    SNAP_FLAG_* of snapshot-queue.ts
//      10 rw-create     u32 rwId, u32 baseId, u64 blockCount, f64 createdAt, u16 tag length, tag
//                       (MBMR := MBM_base as replayed up to this record)
//      11 rw-map        u32 rwId, u64 block, u32 slot           MAPR[block] = slot (new data of an RW write)
//      12 rw-meta-set   u32 rwId, u64 granule, u64 count        MBMR bits := 1
//      13 rw-discard    u32 rwId, u64 granule, u64 count        MBMR bits := 0, MAPR entries of those blocks freed
//      14 rw-delete     u32 rwId                                 OP-12
//      15 rw-refresh    u32 rwId, u32 baseId                     OP-10: MAPR emptied, base := baseId, MBMR :=
//                                                                MBM_base, size := max(size, N_base)
//      16 rw-resize     u32 rwId, u64 blockCount
//      17 restore-start u8 source kind, u32 source id, u8 order, u32 restore point id, f64 createdAt,
//                       u8 keep, u16 tag length, tag            OP-13 steps 2-5 (MBM_P := MBM_X, Rp, RP := D)
//      18 restore-done  u64 block, u64 count                    RP and first-pass bits := 0
//      19 restore-first u64 block, u64 count                    first-pass bits := 0 (cl.14 old data placed)
//      20 restore-end                                            the restore record is cleared
//      21 attr          u16 key length, key, u32 value length, value   attribute := value ('' removes it)
//   version 3 adds:
//      22 snap-release  u32 snapId                              the (invalid) snapshot gives up its save slots:
//                                                                its map merges into the next older entry as in
//                                                                snap-delete, or is freed at the head; the entry
//                                                                stays in the queue (space-policy.ts)
// Records of one frame are applied in order. rw-map, rw-meta-set, restore-done and restore-first are
// deferred records (committed by flush() after the data they describe is durable; see committer.ts).
// The journal file may be longer than its valid frames (it is preallocated and reused after checkpoints).
// Replay applies frames of the checkpoint's generation with consecutive seq from 0 and stops at the first
// frame that is short, fails its CRC, or carries another generation: that frame was never acknowledged.
//
// Version policy: writers write FORMAT_VERSION; readers accept MIN_READ_VERSION..FORMAT_VERSION (a version 1
// checkpoint decodes with no flags, RW snapshots, attributes or restore record) and fail with
// ENGINE_BAD_VERSION otherwise. The first checkpoint after opening rewrites the volume in the current format.

import { corrupt } from './codec-io.js';
import { engineError } from './errors.js';

export const FORMAT_VERSION = 3;
export const MIN_READ_VERSION = 1;
export const CHECKPOINT_MAGIC = 'LSNPCKPT';
export const JOURNAL_MAGIC = 0x464a534c;
export const CHECKPOINT_HEADER_BYTES = 32;
export const FRAME_HEADER_BYTES = 24;

export type SnapshotMethod = 'save-volume' | 'meta-bitmap';
export type SnapshotState = 'valid' | 'invalid';
/** OP-13 copy order: cl.14/31 old data then new data, or cl.15/32 new data then old data for the rest. */
export type RestoreOrder = 'old-then-new' | 'new-then-old';
export type RestoreSourceKind = 'snapshot' | 'rw';

export type JournalRecord =
  | { type: 'cow'; snapId: number; block: number; slot: number; sum: number }
  | { type: 'meta-set'; granule: number; count: number }
  | { type: 'meta-clear'; granule: number; count: number }
  | { type: 'snap-create'; snapId: number; method: SnapshotMethod; createdAt: number; tag: string }
  | { type: 'snap-delete'; snapId: number }
  | { type: 'snap-invalid'; snapId: number }
  | { type: 'snap-release'; snapId: number }
  | { type: 'resize'; blockCount: number }
  | { type: 'quota'; quotaSlots: number | null }
  | { type: 'snap-flags'; snapId: number; flags: number }
  | { type: 'rw-create'; rwId: number; baseId: number; blockCount: number; createdAt: number; tag: string }
  | { type: 'rw-map'; rwId: number; block: number; slot: number }
  | { type: 'rw-meta-set'; rwId: number; granule: number; count: number }
  | { type: 'rw-discard'; rwId: number; granule: number; count: number }
  | { type: 'rw-delete'; rwId: number }
  | { type: 'rw-refresh'; rwId: number; baseId: number }
  | { type: 'rw-resize'; rwId: number; blockCount: number }
  | {
      type: 'restore-start';
      sourceKind: RestoreSourceKind;
      sourceId: number;
      order: RestoreOrder;
      rpId: number;
      createdAt: number;
      keep: boolean;
      tag: string;
    }
  | { type: 'restore-done'; block: number; count: number }
  | { type: 'restore-first'; block: number; count: number }
  | { type: 'restore-end' }
  | { type: 'attr'; key: string; value: string };

export type MetaPages = readonly (Uint32Array | undefined)[];

export interface CheckpointSnapshot {
  id: number;
  method: SnapshotMethod;
  state: SnapshotState;
  flags: number;
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

export interface CheckpointRw {
  id: number;
  base: number;
  blockCount: number;
  createdAt: number;
  tag: string;
  metaGranules: number;
  metaPages: MetaPages;
  entryCount: number;
  forEachEntry?: (fn: (block: number, slot: number) => void) => void;
  entries?: Uint32Array;
}

/** A bit map over blocks as its non-zero pages of 1024 words (32768 blocks each). */
export type BitPages = readonly { index: number; words: Uint32Array }[];

export interface CheckpointRestore {
  sourceKind: RestoreSourceKind;
  sourceId: number;
  order: RestoreOrder;
  rpId: number;
  createdAt: number;
  keep: boolean;
  tag: string;
  totalBlocks: number;
  pending: BitPages;
  first: BitPages;
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
  nextRwId: number;
  rws: CheckpointRw[];
  attributes: [string, string][];
  restore: CheckpointRestore | null;
}

export const METHOD_CODES: Record<SnapshotMethod, number> = { 'save-volume': 1, 'meta-bitmap': 2 };
export const STATE_CODES: Record<SnapshotState, number> = { valid: 1, invalid: 2 };
export const ORDER_CODES: Record<RestoreOrder, number> = { 'old-then-new': 1, 'new-then-old': 2 };
export const SOURCE_CODES: Record<RestoreSourceKind, number> = { snapshot: 1, rw: 2 };
const utf8d = new TextDecoder('utf-8', { fatal: true });

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

export function decodeMethod(code: number): SnapshotMethod {
  if (code === 1) return 'save-volume';
  if (code === 2) return 'meta-bitmap';
  throw corrupt(`unknown snapshot method code ${code}`);
}

export function decodeOrder(code: number): RestoreOrder {
  if (code === 1) return 'old-then-new';
  if (code === 2) return 'new-then-old';
  throw corrupt(`unknown restore order code ${code}`);
}

export function decodeSourceKind(code: number): RestoreSourceKind {
  if (code === 1) return 'snapshot';
  if (code === 2) return 'rw';
  throw corrupt(`unknown restore source kind ${code}`);
}

export function decodeTag(bytes: Uint8Array): string {
  try {
    return utf8d.decode(bytes);
  } catch (err) {
    throw engineError('ENGINE_CORRUPT_METADATA', 'snapshot tag is not UTF-8', {}, err);
  }
}
