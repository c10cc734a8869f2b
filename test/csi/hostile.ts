// SPDX-License-Identifier: Apache-2.0
// Helpers of the hostile-path tests (paths.test.ts, test/abuse/): decoy directories with a file-tree digest
// (did anything outside the plugin's dirs change?), a FUSE mount that never answers (a hung path), and the
// loopsnap error code of a failed call.
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, openSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type * as grpc from '@grpc/grpc-js';

const execFileP = promisify(execFile);

/** A digest of every entry below `dir` (path, type, mode, size, content or link target), no link followed. */
export async function treeDigest(dir: string): Promise<string> {
  const h = createHash('sha256');
  const walk = async (d: string, rel: string): Promise<void> => {
    const names = (await readdir(d)).sort();
    for (const n of names) {
      const p = join(d, n);
      const s = await lstat(p);
      h.update(`${rel}/${n}\0${s.mode}\0${s.size}\0${s.nlink}\0`);
      if (s.isSymbolicLink()) h.update(await readlink(p));
      else if (s.isFile()) h.update(await readFile(p));
      else if (s.isDirectory()) await walk(p, `${rel}/${n}`);
    }
  };
  await walk(dir, '');
  const mounts = (await readFile('/proc/self/mountinfo', 'utf8'))
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((m) => m === dir || m.startsWith(`${dir}/`));
  h.update(`mounts:${mounts.sort().join(',')}`);
  return h.digest('hex');
}

export interface Decoys {
  readonly dir: string;
  /** A directory with files, a non-empty file and an empty one. */
  readonly tree: string;
  readonly file: string;
  readonly emptyFile: string;
  readonly emptyDir: string;
  digest(): Promise<string>;
  cleanup(): Promise<void>;
}

/** Decoys outside every directory of the plugin: whatever a call does, they must not change. */
export async function makeDecoys(): Promise<Decoys> {
  const dir = await mkdtemp(join(tmpdir(), 'loopsnap-decoy-'));
  const tree = join(dir, 'tree');
  await mkdir(join(tree, 'sub'), { recursive: true });
  await writeFile(join(tree, 'precious.txt'), 'do not touch\n');
  await writeFile(join(tree, 'sub', 'deep.bin'), Buffer.alloc(4096, 7));
  const file = join(dir, 'file.txt');
  await writeFile(file, 'a file with content\n');
  const emptyFile = join(dir, 'empty-file');
  await writeFile(emptyFile, '');
  const emptyDir = join(dir, 'empty-dir');
  await mkdir(emptyDir);
  return {
    dir,
    tree,
    file,
    emptyFile,
    emptyDir,
    digest: () => treeDigest(dir),
    cleanup: async () => {
      // A mount that got through would show in the digest; remove it before the directory.
      const info = await readFile('/proc/self/mountinfo', 'utf8');
      for (const m of info
        .split('\n')
        .map((l) => l.split(' ')[4] ?? '')
        .filter((x) => x.startsWith(`${dir}/`))
        .sort((a, b) => b.length - a.length)) {
        await execFileP('umount', ['-l', m]).catch(() => undefined);
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A FUSE file system at `dir` whose server never reads /dev/fuse: every lookup below it waits for ever
 * (killably). close() ends the connection (closing the descriptor aborts it) and unmounts it.
 */
export async function hungFuse(dir: string): Promise<{ close(): Promise<void> }> {
  await mkdir(dir, { recursive: true });
  const fd = openSync('/dev/fuse', 'r+');
  try {
    await new Promise<void>((resolve, reject) => {
      const c = spawn(
        'mount',
        ['-i', '-n', '-t', 'fuse.hung', '-o', 'fd=3,rootmode=40000,user_id=0,group_id=0', 'hung', dir],
        { stdio: ['ignore', 'ignore', 'pipe', fd] },
      );
      let err = '';
      c.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      c.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`mount fuse.hung on ${dir}: ${err}`))));
    });
  } catch (err) {
    closeSync(fd);
    throw err;
  }
  return {
    close: async () => {
      closeSync(fd);
      await execFileP('umount', ['-l', dir]).catch(() => undefined);
    },
  };
}

/** The gRPC code and the loopsnap error code (metadata loopsnap-error-code) of a failed call. */
export function codesOf(err: unknown): { code: number | undefined; errorCode: string | undefined; details: string } {
  const e = err as grpc.ServiceError;
  const ec = e.metadata?.get?.('loopsnap-error-code')?.[0];
  return { code: e.code, errorCode: typeof ec === 'string' ? ec : undefined, details: e.details ?? e.message };
}

/** Awaits a call that must fail; returns its codes. */
export async function failure(p: Promise<unknown>): Promise<ReturnType<typeof codesOf>> {
  const r = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (r === undefined) throw new Error('expected the call to fail, it succeeded');
  return codesOf(r);
}
