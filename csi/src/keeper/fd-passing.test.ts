// SPDX-License-Identifier: Apache-2.0
import { spawn } from 'node:child_process';
import { mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LoopsnapError } from '../../../common/src/errors.js';
import { FD_PASSING_ERRORS, FdPassingError } from './errors.js';
import {
  acceptUnix,
  closeFd,
  connectUnix,
  flock,
  listenUnix,
  MAX_FDS,
  MAX_PAYLOAD_BYTES,
  peerCredentials,
  recvFds,
  recvFdsAsync,
  sendFds,
  setRecvTimeout,
  socketPair,
  waitReadable,
} from './fd-passing.js';

const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;

/** f_flags of an open descriptor as /proc shows them (O_CLOEXEC included when FD_CLOEXEC is set). */
function fdFlags(fd: number): number {
  const line = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('flags:'));
  return parseInt(line!.split(/\s+/)[1]!, 8);
}

const openCount = (): number => readdirSync('/proc/self/fd').length;

function expectFdError(fn: () => unknown, code: string, errno?: number): FdPassingError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(FdPassingError);
  const err = caught as FdPassingError;
  expect(err.code).toBe(code);
  if (errno !== undefined) expect(err.errno).toBe(errno);
  return err;
}

let dir: string;
const open = new Set<number>();
/** Records a descriptor the test owns; afterEach closes what is still recorded. */
const own = (fd: number): number => (open.add(fd), fd);
const release = (fd: number): void => {
  open.delete(fd);
  closeFd(fd);
};

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'loopsnap-fdpass-'));
});

afterEach(() => {
  for (const fd of open) closeFd(fd);
  open.clear();
  rmSync(dir, { recursive: true, force: true });
});

describe('fd-passing error catalogue', () => {
  const doc = readFileSync(new URL('../../../docs/errors.md', import.meta.url), 'utf8');

  it.each(Object.entries(FD_PASSING_ERRORS))('%s is documented in docs/errors.md with its gRPC status', (code, e) => {
    const row = doc.split('\n').find((l) => l.startsWith(`| \`${code}\` |`));
    expect(row, `docs/errors.md has no row for ${code}`).toBeDefined();
    expect(row).toContain(`| ${e.grpc} |`);
  });

  it('FdPassingError carries code, gRPC status, errno and syscall', () => {
    const err = new FdPassingError('FD_ERR_SYSCALL', 'connect: ENOENT', { errno: 2, syscall: 'connect' });
    expect(err).toBeInstanceOf(LoopsnapError);
    expect(err.grpcStatus).toBe('INTERNAL');
    expect(err.errno).toBe(2);
    expect(err.syscall).toBe('connect');
  });
});

describe('SCM_RIGHTS over a socketpair', () => {
  it('1-1 passes an open file within the process; the copy is close-on-exec and writes to the same file', () => {
    const [a, b] = socketPair().map(own) as [number, number];
    expect(fdFlags(a) & O_CLOEXEC).toBe(O_CLOEXEC);
    expect(fdFlags(b) & O_CLOEXEC).toBe(O_CLOEXEC);
    const file = join(dir, 'f');
    const fd = own(openSync(file, 'w+'));
    sendFds(a, Buffer.from('file'), [fd]);
    const got = recvFds(b)!;
    expect(got.payload.toString()).toBe('file');
    expect(got.fds).toHaveLength(1);
    const copy = own(got.fds[0]!);
    expect(copy).not.toBe(fd);
    expect(fdFlags(copy) & O_CLOEXEC).toBe(O_CLOEXEC);
    writeSync(copy, 'through the passed fd');
    expect(readFileSync(file, 'utf8')).toBe('through the passed fd');
  });

  it('1-2 passes three descriptors and a payload in one message, in order', () => {
    const [a, b] = socketPair().map(own) as [number, number];
    const files = ['x', 'y', 'z'].map((n) => join(dir, n));
    const fds = files.map((f) => own(openSync(f, 'w')));
    sendFds(a, Buffer.from('three'), fds);
    const got = recvFds(b)!;
    expect(got.payload.toString()).toBe('three');
    expect(got.fds).toHaveLength(3);
    got.fds.forEach((fd, i) => writeSync(own(fd), `file ${i}`));
    expect(files.map((f) => readFileSync(f, 'utf8'))).toEqual(['file 0', 'file 1', 'file 2']);
  });

  it('1-3 passes MAX_FDS descriptors with an empty payload; rejects more, oversize and empty messages', () => {
    const [a, b] = socketPair().map(own) as [number, number];
    const fd = own(openSync(join(dir, 'f'), 'w'));
    sendFds(a, Buffer.alloc(0), Array<number>(MAX_FDS).fill(fd));
    const got = recvFds(b)!;
    expect(got.payload.length).toBe(0);
    expect(got.fds).toHaveLength(MAX_FDS);
    got.fds.forEach(own);
    expectFdError(() => sendFds(a, Buffer.from('x'), Array<number>(MAX_FDS + 1).fill(fd)), 'FD_ERR_BAD_ARGUMENT');
    expectFdError(() => sendFds(a, Buffer.alloc(MAX_PAYLOAD_BYTES + 1), []), 'FD_ERR_BAD_ARGUMENT');
    expectFdError(() => sendFds(a, Buffer.alloc(0), []), 'FD_ERR_BAD_ARGUMENT');
    sendFds(a, Buffer.alloc(MAX_PAYLOAD_BYTES, 7), []);
    expect(recvFds(b)!.payload.equals(Buffer.alloc(MAX_PAYLOAD_BYTES, 7))).toBe(true);
  });

  it('1-4 a message larger than maxBytes is FD_ERR_TRUNCATED and its descriptors are closed', () => {
    const [a, b] = socketPair().map(own) as [number, number];
    const fd = own(openSync(join(dir, 'f'), 'w'));
    const before = openCount();
    sendFds(a, Buffer.alloc(100), [fd, fd]);
    expectFdError(() => recvFds(b, 10), 'FD_ERR_TRUNCATED');
    expect(openCount()).toBe(before);
  });

  it('1-5 returns null on orderly end of stream, after the messages still queued', () => {
    const [a, b] = socketPair().map(own) as [number, number];
    sendFds(a, Buffer.from('last'), []);
    release(a);
    expect(recvFds(b)?.payload.toString()).toBe('last');
    expect(recvFds(b)).toBeNull();
  });

  it('1-6 SO_RCVTIMEO turns a wait without a message into FD_ERR_TIMEOUT, and later messages still arrive', () => {
    const [a, b] = socketPair().map(own) as [number, number];
    setRecvTimeout(b, 50);
    const t0 = performance.now();
    expectFdError(() => recvFds(b), 'FD_ERR_TIMEOUT', 11);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(40);
    sendFds(a, Buffer.from('after'), []);
    expect(recvFds(b)?.payload.toString()).toBe('after');
  });

  it('1-7 peerCredentials of a socketpair end is this process', () => {
    const [a] = socketPair().map(own) as [number, number];
    expect(peerCredentials(a)).toEqual({ pid: process.pid, uid: process.getuid!(), gid: process.getgid!() });
  });

  it('1-8 closeFd tolerates a descriptor that is not open', () => {
    expect(() => closeFd(1_000_000)).not.toThrow();
  });
});

describe('async waits keep the event loop running', () => {
  it('2-1 recvFdsAsync resolves with a message a timer sends while it waits', async () => {
    const [a, b] = socketPair().map(own) as [number, number];
    const fd = own(openSync(join(dir, 'f'), 'w'));
    let ticks = 0;
    // The message is sent from the third tick: it only arrives if timers run while recvFdsAsync waits.
    const timer = setInterval(() => {
      if (++ticks === 3) sendFds(a, Buffer.from('late'), [fd]);
    }, 5);
    try {
      const got = await recvFdsAsync(b, undefined, { timeoutMs: 10_000 });
      expect(got?.payload.toString()).toBe('late');
      expect(got?.fds).toHaveLength(1);
      got!.fds.forEach(own);
      expect(ticks).toBeGreaterThanOrEqual(3);
    } finally {
      clearInterval(timer);
    }
  });

  it('2-2 recvFdsAsync: null at end of stream, FD_ERR_TIMEOUT, abort, one waiter per socket', async () => {
    const [a, b] = socketPair().map(own) as [number, number];
    await expect(recvFdsAsync(b, undefined, { timeoutMs: 20 })).rejects.toMatchObject({ code: 'FD_ERR_TIMEOUT' });
    const ac = new AbortController();
    const aborted = recvFdsAsync(b, undefined, { signal: ac.signal });
    await expect(recvFdsAsync(b)).rejects.toMatchObject({ code: 'FD_ERR_BAD_ARGUMENT' });
    ac.abort(new Error('stop'));
    await expect(aborted).rejects.toThrow('stop');
    const eof = recvFdsAsync(b, undefined, { timeoutMs: 10_000 });
    setImmediate(() => release(a));
    await expect(eof).resolves.toBeNull();
  });

  it('2-3 waitReadable: false after its timeout, true once a timer has sent a message', async () => {
    const [a, b] = socketPair().map(own) as [number, number];
    expect(await waitReadable(b, 20)).toBe(false);
    let ticks = 0;
    const timer = setInterval(() => {
      if (++ticks === 3) sendFds(a, Buffer.from('x'), []);
    }, 5);
    try {
      expect(await waitReadable(b, 10_000)).toBe(true);
      expect(ticks).toBeGreaterThanOrEqual(3);
      expect(recvFds(b)?.payload.toString()).toBe('x');
    } finally {
      clearInterval(timer);
    }
  });
});

// A module-resolution hook for the child: the repository's .ts sources, transpiled by the typescript package
// on import (relative `.js` specifiers resolve to the `.ts` beside them, as tsc's NodeNext does).
const LOADER = `
import { existsSync, readFileSync } from 'node:fs';
import ts from ${JSON.stringify(pathToFileURL(createRequire(import.meta.url).resolve('typescript')).href)};
export async function resolve(specifier, context, next) {
  if (context.parentURL?.endsWith('.ts') && /^\\.\\.?\\//.test(specifier) && specifier.endsWith('.js')) {
    const url = new URL(specifier.replace(/\\.js$/, '.ts'), context.parentURL);
    if (existsSync(url)) return { url: url.href, shortCircuit: true };
  }
  return next(specifier, context);
}
export async function load(url, context, next) {
  if (!url.endsWith('.ts')) return next(url, context);
  const { outputText } = ts.transpileModule(readFileSync(new URL(url), 'utf8'), {
    fileName: url,
    compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, verbatimModuleSyntax: true },
  });
  return { format: 'module', source: outputText, shortCircuit: true };
}
`;

// The child: its fd 3 is one end of our socketpair. It receives a file descriptor, writes through it, answers.
const CHILD = (loader: string): string => `
import { register } from 'node:module';
import { writeSync } from 'node:fs';
register(${JSON.stringify(pathToFileURL(loader).href)});
const fp = await import(${JSON.stringify(pathToFileURL(fileURLToPath(new URL('./fd-passing.ts', import.meta.url))).href)});
const got = fp.recvFds(3);
writeSync(got.fds[0], 'written by pid ' + process.pid);
fp.sendFds(3, Buffer.from(got.payload.toString() + ' done'), []);
`;

describe('SCM_RIGHTS across processes', () => {
  it('3-1 a child given one end as its fd 3 receives a file descriptor and writes through it', async () => {
    const loader = join(dir, 'loader.mjs');
    const script = join(dir, 'child.mjs');
    writeFileSync(loader, LOADER);
    writeFileSync(script, CHILD(loader));
    const [ours, theirs] = socketPair().map(own) as [number, number];
    const child = spawn(process.execPath, [script], { stdio: ['ignore', 'inherit', 'inherit', theirs] });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    // spawn has returned: the child holds its dup2() copy (fd 3), ours can go.
    release(theirs);
    const file = join(dir, 'f');
    const fd = own(openSync(file, 'w+'));
    sendFds(ours, Buffer.from('job'), [fd]);
    const reply = await recvFdsAsync(ours, undefined, { timeoutMs: 30_000 });
    expect(reply?.payload.toString()).toBe('job done');
    expect(readFileSync(file, 'utf8')).toBe(`written by pid ${child.pid}`);
    expect(await exited).toBe(0);
    // The child's copy was the only other one: its exit ends the stream.
    expect(await recvFdsAsync(ours, undefined, { timeoutMs: 10_000 })).toBeNull();
  });
});

describe('listening sockets', () => {
  it('4-1 listen, connect and accept on a temp path; mode 0600; accepted socket blocking and close-on-exec', async () => {
    const path = join(dir, 'k.sock');
    const l = own(listenUnix(path));
    const st = statSync(path);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o600);
    expect(fdFlags(l) & (O_NONBLOCK | O_CLOEXEC)).toBe(O_NONBLOCK | O_CLOEXEC);
    expect(acceptUnix(l)).toBeUndefined();
    const c = own(connectUnix(path));
    expect(fdFlags(c) & (O_NONBLOCK | O_CLOEXEC)).toBe(O_CLOEXEC);
    expect(await waitReadable(l, 10_000)).toBe(true);
    const s = own(acceptUnix(l)!);
    expect(fdFlags(s) & (O_NONBLOCK | O_CLOEXEC)).toBe(O_CLOEXEC);
    sendFds(c, Buffer.from('hello'), []);
    expect(recvFds(s)?.payload.toString()).toBe('hello');
    sendFds(s, Buffer.from('back'), []);
    expect(recvFds(c)?.payload.toString()).toBe('back');
    expect(peerCredentials(s).pid).toBe(process.pid);
  });

  it('4-2 connectUnix errors carry errno: ENOENT without a socket file, ECONNREFUSED when no one listens', () => {
    const path = join(dir, 'k.sock');
    expectFdError(() => connectUnix(path), 'FD_ERR_SYSCALL', 2);
    release(listenUnix(path)); // the socket file stays, no one listens on it
    expectFdError(() => connectUnix(path), 'FD_ERR_SYSCALL', 111);
    expectFdError(() => connectUnix(join(dir, 'x'.repeat(120))), 'FD_ERR_BAD_ARGUMENT');
  });

  it('4-3 a second listenUnix on a live path fails FD_ERR_IN_USE and leaves the first listening', async () => {
    const path = join(dir, 'k.sock');
    const l = own(listenUnix(path));
    expectFdError(() => listenUnix(path), 'FD_ERR_IN_USE');
    // The probe connection of the second attempt is queued on the first listener; take it off.
    expect(await waitReadable(l, 10_000)).toBe(true);
    release(own(acceptUnix(l)!));
    const c = own(connectUnix(path));
    expect(await waitReadable(l, 10_000)).toBe(true);
    const s = own(acceptUnix(l)!);
    sendFds(c, Buffer.from('still'), []);
    expect(recvFds(s)?.payload.toString()).toBe('still');
  });

  it('4-4 listenUnix replaces a stale socket file (no listener) and refuses to replace a regular file', async () => {
    const path = join(dir, 'k.sock');
    release(listenUnix(path));
    expectFdError(() => connectUnix(path), 'FD_ERR_SYSCALL', 111); // stale: the file stays, no one listens
    const l = own(listenUnix(path));
    expect(statSync(path).isSocket()).toBe(true);
    const c = own(connectUnix(path));
    expect(await waitReadable(l, 10_000)).toBe(true);
    expect(own(acceptUnix(l)!)).toBeGreaterThanOrEqual(0);
    expect(c).toBeGreaterThanOrEqual(0);
    const plain = join(dir, 'plain');
    writeFileSync(plain, 'keep');
    expectFdError(() => listenUnix(plain), 'FD_ERR_IN_USE');
    expect(readFileSync(plain, 'utf8')).toBe('keep');
  });
});

describe('flock', () => {
  it('5-1 exclusive locks of two open file descriptions conflict until the holder unlocks', () => {
    const file = join(dir, 'lock');
    writeFileSync(file, '');
    const first = own(openSync(file, 'r'));
    const second = own(openSync(file, 'r'));
    expect(flock(first, 'exclusive', { wait: false })).toBe(true);
    expect(flock(second, 'exclusive', { wait: false })).toBe(false);
    expect(flock(second, 'shared', { wait: false })).toBe(false);
    expect(flock(first, 'unlock', { wait: false })).toBe(true);
    expect(flock(second, 'exclusive', { wait: false })).toBe(true);
    expect(flock(first, 'shared', { wait: false })).toBe(false);
    expect(flock(second, 'shared', { wait: true })).toBe(true); // converts the exclusive lock
    expect(flock(first, 'shared', { wait: false })).toBe(true);
  });

  it('5-2 a descriptor passed over a socket shares the open file description, and so the lock', () => {
    const file = join(dir, 'lock');
    writeFileSync(file, '');
    const holder = own(openSync(file, 'r'));
    const other = own(openSync(file, 'r'));
    expect(flock(holder, 'exclusive', { wait: false })).toBe(true);
    const [a, b] = socketPair().map(own) as [number, number];
    sendFds(a, Buffer.from('lock'), [holder]);
    const passed = own(recvFds(b)!.fds[0]!);
    release(holder);
    expect(flock(other, 'exclusive', { wait: false })).toBe(false); // still held through the passed copy
    release(passed);
    expect(flock(other, 'exclusive', { wait: false })).toBe(true);
  });
});
