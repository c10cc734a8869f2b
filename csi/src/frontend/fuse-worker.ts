// SPDX-License-Identifier: Apache-2.0
// Entry point of a data-path worker thread: blocking reads of /dev/fuse, synchronous pread/pwrite on the view
// files, replies with blocking writes. Loaded from compiled JS (dist/) by fuse-server.ts.
import { fdatasyncSync, readSync, writeSync } from 'node:fs';
import { type MessagePort, parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';
import { errnoOf, FuseSession } from './fuse-session.js';
import { CALL_RESULT, CALL_STATE, type WorkerControl, type WorkerInit, type WorkerMessage } from './view-protocol.js';

function main(): void {
  const init = workerData as WorkerInit & { port: MessagePort };
  const port = init.port;
  const parent = parentPort;
  if (!parent) throw new Error('fuse-worker must run in a worker thread');
  const post = (m: WorkerMessage): void => parent.postMessage(m);
  const call = new Int32Array(init.call);
  const fuseFd = init.fuseFd;

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
    call(msg) {
      Atomics.store(call, CALL_STATE, 0);
      post(msg);
      while (Atomics.load(call, CALL_STATE) === 0) Atomics.wait(call, CALL_STATE, 0, 5000);
      return Atomics.load(call, CALL_RESULT);
    },
    control() {
      const m = receiveMessageOnPort(port);
      return m ? (m.message as WorkerControl) : undefined;
    },
    emit: post,
    inBuf: Buffer.from(init.inBuf),
    outBuf: Buffer.from(init.outBuf),
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

main();
