// SPDX-License-Identifier: Apache-2.0
// Builders of FUSE request frames as the kernel would send them, for codec and session tests.
import { IN_HEADER_BYTES, Opcode } from './fuse-abi.js';

export interface FrameHeader {
  readonly opcode: number;
  readonly unique: number;
  readonly nodeId?: number;
}

export function frame(h: FrameHeader, body: Uint8Array = new Uint8Array(0), lenOverride?: number): Uint8Array {
  const buf = new Uint8Array(IN_HEADER_BYTES + body.length);
  const dv = new DataView(buf.buffer);
  dv.setUint32(0, lenOverride ?? buf.length, true);
  dv.setUint32(4, h.opcode, true);
  dv.setBigUint64(8, BigInt(h.unique), true);
  dv.setBigUint64(16, BigInt(h.nodeId ?? 1), true);
  buf.set(body, IN_HEADER_BYTES);
  return buf;
}

export function body(fields: ReadonlyArray<readonly ['u32' | 'u64', number | bigint]>, tail?: Uint8Array): Uint8Array {
  const size = fields.reduce((n, [t]) => n + (t === 'u32' ? 4 : 8), 0) + (tail?.length ?? 0);
  const buf = new Uint8Array(size);
  const dv = new DataView(buf.buffer);
  let at = 0;
  for (const [t, v] of fields) {
    if (t === 'u32') {
      dv.setUint32(at, Number(v), true);
      at += 4;
    } else {
      dv.setBigUint64(at, BigInt(v), true);
      at += 8;
    }
  }
  if (tail) buf.set(tail, at);
  return buf;
}

export const frames = {
  init: (unique: number, flags = 0xffffffff, minor = 45) =>
    frame(
      { opcode: Opcode.INIT, unique },
      body([
        ['u32', 7],
        ['u32', minor],
        ['u32', 131072],
        ['u32', flags],
        ['u32', 0],
        ...Array.from({ length: 11 }, () => ['u32', 0] as const),
      ]),
    ),
  lookup: (unique: number, name: string) =>
    frame({ opcode: Opcode.LOOKUP, unique }, new Uint8Array([...Buffer.from(name, 'latin1'), 0])),
  getattr: (unique: number, nodeId: number) =>
    frame(
      { opcode: Opcode.GETATTR, unique, nodeId },
      body([
        ['u32', 0],
        ['u32', 0],
        ['u64', 0],
      ]),
    ),
  open: (unique: number, nodeId: number, flags: number) =>
    frame(
      { opcode: Opcode.OPEN, unique, nodeId },
      body([
        ['u32', flags],
        ['u32', 0],
      ]),
    ),
  read: (unique: number, nodeId: number, offset: number, size: number, opcode: number = Opcode.READ) =>
    frame(
      { opcode, unique, nodeId },
      body([
        ['u64', nodeId],
        ['u64', offset],
        ['u32', size],
        ['u32', 0],
        ['u64', 0],
        ['u32', 0],
        ['u32', 0],
      ]),
    ),
  write: (unique: number, nodeId: number, offset: number, data: Uint8Array, sizeOverride?: number) =>
    frame(
      { opcode: Opcode.WRITE, unique, nodeId },
      body(
        [
          ['u64', nodeId],
          ['u64', offset],
          ['u32', sizeOverride ?? data.length],
          ['u32', 0],
          ['u64', 0],
          ['u32', 0],
          ['u32', 0],
        ],
        data,
      ),
    ),
  fsync: (unique: number, nodeId: number) =>
    frame(
      { opcode: Opcode.FSYNC, unique, nodeId },
      body([
        ['u64', nodeId],
        ['u32', 1],
        ['u32', 0],
      ]),
    ),
  release: (unique: number, nodeId: number) =>
    frame(
      { opcode: Opcode.RELEASE, unique, nodeId },
      body([
        ['u64', nodeId],
        ['u32', 0],
        ['u32', 0],
        ['u64', 0],
      ]),
    ),
  fallocate: (unique: number, nodeId: number, offset: number, length: number, mode: number) =>
    frame(
      { opcode: Opcode.FALLOCATE, unique, nodeId },
      body([
        ['u64', nodeId],
        ['u64', offset],
        ['u64', length],
        ['u32', mode],
        ['u32', 0],
      ]),
    ),
  statfs: (unique: number) => frame({ opcode: Opcode.STATFS, unique }),
  interrupt: (unique: number, target: number) => frame({ opcode: Opcode.INTERRUPT, unique }, body([['u64', target]])),
  forget: (unique: number, nodeId: number) => frame({ opcode: Opcode.FORGET, unique, nodeId }, body([['u64', 1]])),
};
