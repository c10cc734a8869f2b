// SPDX-License-Identifier: Apache-2.0
// Requests handed off by the workers: run them on the main thread (the engine lives here) and write the
// reply to /dev/fuse. ENOENT from the device means the kernel gave up on the request (interrupted).
import { writeSync } from 'node:fs';
import { Errno, OUT_HEADER_BYTES, WRITE_OUT_BYTES } from './fuse-abi.js';
import { encodeOutHeader, encodeWriteOut } from './fuse-reply.js';
import type { WorkerRequest } from './view-protocol.js';
import { errnoOf } from './worker-io.js';

/** Main-thread side of a `live` view: the engine work the fast path cannot do alone. */
export interface LiveViewHandler {
  /** A production read while the engine routes reads to itself (e.g. during an online restore). */
  read(offset: number, dst: Uint8Array): Promise<void>;
  /** A production write the fast path could not do alone (some block needs engine work). */
  write(offset: number, src: Uint8Array): Promise<void>;
  /** Makes [offset, offset+length) read as zeros (meta bit map granules cleared, partial blocks zeroed). */
  discard(offset: number, length: number): Promise<void>;
  /** Durability barrier: every acknowledged write of the view, fast-path ones included, and its metadata. */
  flush(): Promise<void>;
}

/** Main-thread side of a `remote` view: every data operation. */
export interface RemoteViewHandler {
  read(offset: number, dst: Uint8Array): Promise<number>;
  write(offset: number, src: Uint8Array): Promise<void>;
  discard(offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
}

export type HandlerOf = { kind: 'live'; handler: LiveViewHandler } | { kind: 'remote'; handler: RemoteViewHandler };

/** Runs `m` against the view's handler; the reply (header space included), or undefined for an empty body. */
export async function runHandoff(view: HandlerOf, m: WorkerRequest): Promise<Uint8Array | undefined> {
  switch (m.t) {
    case 'read': {
      const out = Buffer.allocUnsafe(OUT_HEADER_BYTES + m.length);
      const dst = out.subarray(OUT_HEADER_BYTES);
      if (view.kind === 'live') {
        await view.handler.read(m.offset, dst);
        return out;
      }
      const n = await view.handler.read(m.offset, dst);
      return out.subarray(0, OUT_HEADER_BYTES + Math.min(n, m.length));
    }
    case 'write': {
      await view.handler.write(m.offset, m.data);
      const out = Buffer.alloc(OUT_HEADER_BYTES + WRITE_OUT_BYTES);
      encodeWriteOut(new DataView(out.buffer, out.byteOffset, out.byteLength), OUT_HEADER_BYTES, m.data.length);
      return out;
    }
    case 'discard':
      await view.handler.discard(m.offset, m.length);
      return undefined;
    case 'flush':
      await view.handler.flush();
      return undefined;
  }
}

/** Writes the reply of a handed-off request; returns false when the write failed for another reason. */
export function replyHandoff(fuseFd: number, m: WorkerRequest, errno: number, body?: Uint8Array): boolean {
  const buf = errno === 0 && body ? body : Buffer.alloc(OUT_HEADER_BYTES);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  encodeOutHeader(dv, buf.byteLength, errno, m.uniqueLo, m.uniqueHi);
  try {
    writeSync(fuseFd, buf, 0, buf.byteLength);
    return true;
  } catch (err) {
    return errnoOf(err) === Errno.ENOENT;
  }
}
