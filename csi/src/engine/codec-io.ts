// SPDX-License-Identifier: Apache-2.0
// Little-endian byte writer and bounds-checked reader shared by the journal and checkpoint codecs.

import { engineError } from './errors.js';

export const TWO32 = 2 ** 32;

export class Writer {
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

export class Reader {
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

export function corrupt(message: string, details: Record<string, unknown> = {}) {
  return engineError('ENGINE_CORRUPT_METADATA', message, details);
}
