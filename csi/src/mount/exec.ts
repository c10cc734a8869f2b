// SPDX-License-Identifier: Apache-2.0
// Runs system tools (mount, losetup, mkfs, fsfreeze, ...) as child processes, always asynchronously.
//
// Invariant: nothing in the data path may block the main thread of the process that hosts the FUSE server
// while the kernel does I/O on one of its views. mkfs, fsfreeze, umount, losetup -d and sync all send I/O
// through loop -> FUSE -> the workers, and a worker's slow path needs the main thread: a spawnSync there
// deadlocks. Hence no execFileSync anywhere in csi/src/mount or csi/src/frontend.
import { spawn } from 'node:child_process';
import { MountError } from './errors.js';

export interface RunOptions {
  /** Kill the child (SIGKILL) after this many ms and fail with DP_ERR_TIMEOUT. Default 120 s. */
  readonly timeoutMs?: number;
  /** Extra file descriptors for the child: index 3 onwards. */
  readonly extraFds?: readonly number[];
  /** Exit codes that count as success (default [0]). */
  readonly okCodes?: readonly number[];
  readonly input?: string;
}

export interface RunResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

const SBIN_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** Runs `cmd args...`; resolves with its output, rejects with a MountError naming the command and stderr. */
export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const timeoutMs = opts.timeoutMs ?? 120_000;
  const okCodes = opts.okCodes ?? [0];
  return new Promise((resolve, reject) => {
    const stdio: Array<'pipe' | 'ignore' | number> = [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'];
    for (const fd of opts.extraFds ?? []) stdio.push(fd);
    const child = spawn(cmd, [...args], {
      stdio,
      env: { ...process.env, PATH: `${process.env.PATH ?? ''}:${SBIN_PATH}`, LC_ALL: 'C' },
    });
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
    });
    child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
    });
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    let settled = false;
    // A child the kernel holds in an uninterruptible wait (a hung mount) outlives SIGKILL until the wait ends:
    // the timeout settles the call without waiting for its exit.
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      settled = true;
      reject(new MountError('DP_ERR_TIMEOUT', `${cmd} ${args.join(' ')}: timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      if (settled) return;
      settled = true;
      reject(new MountError('DP_ERR_EXEC', `${cmd}: ${err.message}`, { cause: err, details: { cmd, args } }));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (settled) return;
      settled = true;
      const c = code ?? -1;
      if (okCodes.includes(c)) {
        resolve({ code: c, stdout, stderr });
      } else {
        const why = firstLine(stderr) || firstLine(stdout) || (signal ? `killed by ${signal}` : `exit code ${c}`);
        // ENOSPC from a tool (mkfs, mount, resize2fs, ...) is the disk's state, not a fault of the tool.
        const noSpace = /No space left on device|Disk quota exceeded/.test(`${stderr}\n${stdout}`);
        reject(
          new MountError(noSpace ? 'DP_ERR_NO_SPACE' : 'DP_ERR_EXEC', `${cmd} ${args.join(' ')}: ${why}`, {
            details: { cmd, args, code: c, stderr: stderr.slice(0, 2000) },
          }),
        );
      }
    });
  });
}

function firstLine(s: string): string {
  return s.split('\n').find((l) => l.trim() !== '') ?? '';
}
