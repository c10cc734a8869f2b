#!/usr/bin/env node
// SPDX-License-Identifier: Apache-2.0
// A writer process for restart tests and the restart benchmark: writes numbered 4 KiB records round-robin
// over `slots` slots of TARGET (a file on a mounted volume, or a raw block device) with O_DIRECT|O_DSYNC,
// and prints one line per acknowledged record to stdout: `<seq> <slot> <sha256-hex-16> <ms since start>`.
// Any error ends it: a line `error <code> <message>` on stdout, exit 1. SIGTERM stops it after the record in
// flight (exit 0). The log is the ground truth of acknowledged writes: record <seq> must read back intact at
// slot <seq % slots> unless a later record overwrote that slot.
//
// Record format (4096 bytes): "LSREC1\0\0", u64 seq (LE), u64 slot (LE), then bytes filled from seq.
//
// Usage: record-writer.mjs TARGET SLOTS [--create BYTES]   (--create: make TARGET a file of BYTES first)
import { closeSync, constants, openSync, writeSync, ftruncateSync } from 'node:fs';
import { createHash } from 'node:crypto';

const RECORD = 4096;
const [target, slotsArg, ...rest] = process.argv.slice(2);
const slots = Number(slotsArg);
if (!target || !Number.isSafeInteger(slots) || slots < 1) {
  process.stdout.write('error EINVAL usage: record-writer.mjs TARGET SLOTS [--create BYTES]\n');
  process.exit(2);
}
const createAt = rest.indexOf('--create');
const createBytes = createAt >= 0 ? Number(rest[createAt + 1]) : 0;

export function recordBytes(seq, slot) {
  const b = Buffer.alloc(RECORD);
  b.write('LSREC1', 0, 'latin1');
  b.writeBigUInt64LE(BigInt(seq), 8);
  b.writeBigUInt64LE(BigInt(slot), 16);
  let x = (seq * 2654435761) >>> 0;
  for (let i = 24; i < RECORD; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

function fail(err) {
  process.stdout.write(`error ${err.code ?? 'EIO'} ${String(err.message).split('\n')[0]}\n`);
  process.exit(1);
}

let fd;
try {
  if (createBytes > 0) {
    const f = openSync(target, 'w');
    ftruncateSync(f, createBytes);
    closeSync(f);
  }
  fd = openSync(target, constants.O_RDWR | constants.O_DIRECT | constants.O_DSYNC);
} catch (err) {
  fail(err);
}

// O_DIRECT needs a buffer aligned to the device's logical block size (up to 4096) and Node cannot tell
// addresses: find the aligned phase of a larger buffer by writing record 0 at each 16-byte phase until the
// kernel stops answering EINVAL.
const pool = Buffer.allocUnsafeSlow(RECORD * 2);
let phase = -1;
const first = recordBytes(0, 0);
for (let k = 0; k < RECORD && phase < 0; k += 16) {
  first.copy(pool, k);
  try {
    writeSync(fd, pool, k, RECORD, 0);
    phase = k;
  } catch (err) {
    if (err.code !== 'EINVAL') fail(err);
  }
}
if (phase < 0) fail({ code: 'EINVAL', message: 'no O_DIRECT-aligned phase found' });

const t0 = performance.now();
let stopping = false;
process.on('SIGTERM', () => {
  stopping = true;
});
const out = [];
// The reader going away (a test that already failed) ends the writer quietly.
process.stdout.on('error', () => process.exit(3));
const flushOut = () => {
  if (out.length > 0) process.stdout.write(out.splice(0).join(''));
};
const digest = (b) => createHash('sha256').update(b).digest('hex').slice(0, 16);
out.push(`0 0 ${digest(first)} ${(performance.now() - t0).toFixed(1)}\n`);
let seq = 1;
const step = () => {
  // A batch of synchronous writes, then yield so that SIGTERM and stdout get their turn.
  for (let i = 0; i < 16 && !stopping; i++, seq++) {
    const slot = seq % slots;
    const rec = recordBytes(seq, slot);
    rec.copy(pool, phase);
    try {
      writeSync(fd, pool, phase, RECORD, slot * RECORD);
    } catch (err) {
      flushOut();
      fail(err);
    }
    out.push(`${seq} ${slot} ${digest(rec)} ${(performance.now() - t0).toFixed(1)}\n`);
  }
  flushOut();
  if (stopping) {
    closeSync(fd);
    process.exit(0);
  }
  setImmediate(step);
};
step();
