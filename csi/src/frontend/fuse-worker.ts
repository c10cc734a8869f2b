// SPDX-License-Identifier: Apache-2.0
// Entry point of a data-path worker thread: blocking reads of /dev/fuse, synchronous pread/pwrite on the view
// files, replies with blocking writes. Loaded from compiled JS (dist/) by fuse-server.ts.
import { closeSync, fdatasyncSync, constants as fsConstants, openSync, readSync, writeSync } from 'node:fs';
import { type MessagePort, parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';
import { FuseSession } from './fuse-session.js';
import { errnoOf, probeDirectPosition } from './worker-io.js';
import { FUSE_MAX_IO_BYTES, FUSE_REQUEST_HEADROOM_BYTES, WRITE_PAYLOAD_OFFSET } from './fuse-abi.js';
import { type WorkerControl, type WorkerInit, type WorkerMessage } from './view-protocol.js';

function main(): void {
  const init = workerData as WorkerInit & { port: MessagePort };
  const port = init.port;
  const parent = parentPort;
  if (!parent) throw new Error('fuse-worker must run in a worker thread');
  const post = (m: WorkerMessage, transfer?: ArrayBuffer[]): void => parent.postMessage(m, transfer);
  const fuseFd = init.fuseFd;

  const outBuf = Buffer.allocUnsafeSlow(FUSE_MAX_IO_BYTES + 2 * FUSE_REQUEST_HEADROOM_BYTES);
  // The request buffer starts where a WRITE's payload (at WRITE_PAYLOAD_OFFSET) lands O_DIRECT-aligned.
  const inRaw = Buffer.allocUnsafeSlow(FUSE_MAX_IO_BYTES + 2 * FUSE_REQUEST_HEADROOM_BYTES);
  const inPhase = directPosition(init.dioProbePath, inRaw);
  const inStart = inPhase < 0 ? 0 : (((inPhase - WRITE_PAYLOAD_OFFSET) % 512) + 512) % 512;
  const inBuf = inRaw.subarray(inStart, inStart + FUSE_MAX_IO_BYTES + FUSE_REQUEST_HEADROOM_BYTES);
  const session = new FuseSession({
    index: init.index,
    dev: {
      read(buf) {
        try {
          return readSync(fuseFd, buf, 0, buf.byteLength, null);
        } catch (err) {
          return -errnoOf(err);
        }
      },
      write(buf, length) {
        try {
          writeSync(fuseFd, buf, 0, length);
          return 0;
        } catch (err) {
          return -errnoOf(err);
        }
      },
    },
    file: {
      pread: (fd, buf, offset, length, position) => readSync(fd, buf, offset, length, position),
      pwrite: (fd, buf, offset, length, position) => writeSync(fd, buf, offset, length, position),
      fdatasync: (fd) => fdatasyncSync(fd),
    },
    submit: post,
    control() {
      const m = receiveMessageOnPort(port);
      return m ? (m.message as WorkerControl) : undefined;
    },
    emit: post,
    inBuf,
    directWrites: inPhase >= 0,
    // Room for the largest read at an O_DIRECT-aligned position up to a page into the buffer.
    outBuf,
    directDataPosition: directPosition(init.dioProbePath, outBuf),
    counters: new Float64Array(init.counters),
    maxWrite: init.maxWrite,
    timeouts: { entryValidSec: init.entryValidSec, attrValidSec: init.attrValidSec },
    parallelDirectWrites: init.parallelDirectWrites,
  });
  for (const v of init.views) session.addView(v);
  post({ t: 'ready', worker: init.index });
  let reason: string;
  try {
    reason = session.serve();
  } catch (err) {
    reason = `worker failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`;
  }
  port.close();
  post({ t: 'exit', worker: init.index, reason });
}

function directPosition(probePath: string | null, outBuf: Buffer): number {
  if (probePath === null) return -1;
  let fd = -1;
  try {
    fd = openSync(probePath, fsConstants.O_RDONLY | fsConstants.O_DIRECT);
    return probeDirectPosition(outBuf, fd, { pread: (f, b, o, l, p) => readSync(f, b, o, l, p) });
  } catch {
    return -1;
  } finally {
    if (fd >= 0) closeSync(fd);
  }
}

main();
