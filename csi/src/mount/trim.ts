// SPDX-License-Identifier: Apache-2.0
// Hands the file system's free space to the volume below it (FITRIM through fstrim): each free extent becomes
// a discard on the loop device, a FUSE punch-hole on the view, and an engine discard, so the blocks are no
// longer live and a meta-bitmap snapshot neither reports nor copies them (ADR 0013). ext4 remembers trimmed
// groups, so a repeat only sends what was freed since; xfs sends all free space each time, which costs the
// engine a bit-map update per extent. Never fails its caller: the result says what happened.
import { run } from './exec.js';

export interface TrimResult {
  readonly ok: boolean;
  /** Bytes fstrim reports as trimmed (0 when it failed). */
  readonly trimmedBytes: number;
  readonly durationMs: number;
  readonly error?: string;
}

const TRIMMED = /\(([0-9]+) bytes\) trimmed/;

export async function trimFs(mountpoint: string, timeoutMs = 60_000): Promise<TrimResult> {
  const started = performance.now();
  try {
    // Blocks of files deleted since the last journal commit are not free yet (ext4 and xfs free extents when
    // the transaction commits): commit first, or the trim skips exactly what was just freed.
    await run('sync', ['-f', mountpoint], { timeoutMs });
    const r = await run('fstrim', ['--verbose', mountpoint], { timeoutMs });
    const m = TRIMMED.exec(r.stdout);
    return { ok: true, trimmedBytes: m ? Number(m[1]) : 0, durationMs: performance.now() - started };
  } catch (err) {
    return { ok: false, trimmedBytes: 0, durationMs: performance.now() - started, error: (err as Error).message };
  }
}
