// SPDX-License-Identifier: Apache-2.0
// Descriptor passing over Unix SEQPACKET sockets (SCM_RIGHTS) and flock(2) on raw fds, which Node.js lacks,
// through koffi (FFI to libc). Linux x86_64 with glibc only: the constants and struct layouts below are that
// ABI's, and the layouts are checked against koffi's once, when libc is first needed.
//
// Invariants:
// - Every descriptor this module creates is close-on-exec: sockets (SOCK_CLOEXEC), accepted sockets (accept4
//   SOCK_CLOEXEC) and received descriptors (MSG_CMSG_CLOEXEC). child_process.spawn's stdio array still hands one
//   to a child: it dup2()s the fd to the child's number, and the copy dup2 makes has FD_CLOEXEC clear.
// - Sockets returned are in blocking mode, except the listener. The synchronous calls block the event loop
//   while the kernel makes them wait (recvFds without setRecvTimeout, sendFds on a full peer queue, flock with
//   wait); recvFdsAsync and waitReadable never do.
// - errno is read right after the call it belongs to, on the main thread. koffi's `fn.async` runs a call on a
//   libuv threadpool thread whose errno the main thread never sees, so the one async call here is poll(2),
//   whose result needs no errno; recvFdsAsync waits for readiness on the event loop (uv_poll) and then makes a
//   non-blocking recvmsg on the main thread.
// - Received descriptors never leak: on MSG_CTRUNC/MSG_TRUNC the ones that arrived are closed before throwing.
import { chmodSync, lstatSync, rmSync, unlinkSync } from 'node:fs';
import koffi, { type IKoffiLib } from 'koffi';
import { FdPassingError } from './errors.js';

export { FdPassingError, type FdPassingErrorCode } from './errors.js';

/** Upper bound of one message's payload (sendFds rejects more; recvFds' default buffer). */
export const MAX_PAYLOAD_BYTES = 64 * 1024;
/** Upper bound of descriptors in one message. */
export const MAX_FDS = 8;
const LISTEN_BACKLOG = 8;
const SOCKET_MODE = 0o600;

// <sys/socket.h>, <fcntl.h>, <poll.h>, <sys/file.h> on Linux x86_64.
const AF_UNIX = 1;
const SOCK_SEQPACKET = 5;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_PEERCRED = 17;
const SO_RCVTIMEO = 20;
const SCM_RIGHTS = 1;
const MSG_CTRUNC = 0x8;
const MSG_TRUNC = 0x20;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const MSG_CMSG_CLOEXEC = 0x40000000;
const F_GETFL = 3;
const F_SETFL = 4;
const O_NONBLOCK = 0o4000;
const POLLIN = 0x1;
const POLLNVAL = 0x20;
const LOCK_SH = 1;
const LOCK_EX = 2;
const LOCK_NB = 4;
const LOCK_UN = 8;
// <errno.h> (EWOULDBLOCK is EAGAIN).
const ENOENT = 2;
const EINTR = 4;
const EBADF = 9;
const EAGAIN = 11;
const EMSGSIZE = 90;
const EPROTOTYPE = 91;
const EADDRINUSE = 98;
const ECONNREFUSED = 111;

// sockaddr_un: sa_family_t sun_family (2 bytes), char sun_path[108] (NUL-terminated here: no abstract names).
const SUN_PATH_BYTES = 108;
const SOCKADDR_UN_BYTES = 2 + SUN_PATH_BYTES;

// cmsghdr is { size_t cmsg_len; int cmsg_level; int cmsg_type; } followed by its data at CMSG_ALIGN(16).
// glibc's macros for x86_64, by hand: CMSG_ALIGN(n) = (n + 7) & ~7, CMSG_LEN(n) = CMSG_ALIGN(16) + n,
// CMSG_SPACE(n) = CMSG_ALIGN(16) + CMSG_ALIGN(n). A cmsg_len counts the header and data, not the padding.
const CMSG_HDR_BYTES = 16;
const cmsgAlign = (n: number): number => (n + 7) & ~7;
const cmsgLen = (n: number): number => cmsgAlign(CMSG_HDR_BYTES) + n;
const cmsgSpace = (n: number): number => cmsgAlign(CMSG_HDR_BYTES) + cmsgAlign(n);
const FD_BYTES = 4;

// One native scratch block serves every sendmsg/recvmsg. JS runs on one thread and each of those calls
// completes before it returns, so no two uses overlap:
//
//   0          56   64            80                          128                          128 + 64 KiB
//   | msghdr   |pad | iovec       | control: CMSG_SPACE(8 * 4) | data: MAX_PAYLOAD_BYTES     |
//   | 56 bytes |    | base, len   | 48 bytes                   |                             |
//
// msghdr.msg_iov -> iovec, iovec.iov_base -> data, msghdr.msg_control -> control (NULL when no fds are sent).
const MSGHDR_OFFSET = 0;
const IOVEC_OFFSET = 64;
const CONTROL_OFFSET = 80;
const CONTROL_BYTES = cmsgSpace(MAX_FDS * FD_BYTES);
const DATA_OFFSET = CONTROL_OFFSET + CONTROL_BYTES;
const SCRATCH_BYTES = DATA_OFFSET + MAX_PAYLOAD_BYTES;

type TypeSpec = Parameters<typeof koffi.sizeof>[0];
type PollWatcher = ReturnType<typeof koffi.node.poll>;

type SysFn<A extends unknown[]> = ((...args: A) => number) & {
  async: (...args: [...A, (err: unknown, result: number) => void]) => void;
};

interface PollFd {
  fd: number;
  events: number;
  revents: number;
}

interface Libc {
  socket: SysFn<[number, number, number]>;
  socketpair: SysFn<[number, number, number, Int32Array]>;
  bind: SysFn<[number, Buffer, number]>;
  connect: SysFn<[number, Buffer, number]>;
  listen: SysFn<[number, number]>;
  accept4: SysFn<[number, null, null, number]>;
  sendmsg: SysFn<[number, unknown, number]>;
  recvmsg: SysFn<[number, unknown, number]>;
  setsockoptTimeval: SysFn<[number, number, number, { tv_sec: number; tv_usec: number }, number]>;
  getsockoptUcred: SysFn<[number, number, number, Partial<PeerCredentials>, number[]]>;
  fcntl: (fd: number, cmd: number, ...variadic: unknown[]) => number;
  poll: SysFn<[PollFd, number, number]>;
  flock: SysFn<[number, number]>;
  close: SysFn<[number]>;
  /** The scratch block (see above) and a DataView over it. */
  scratch: unknown;
  scratchAddress: bigint;
  view: DataView;
}

let libc: Libc | undefined;

function lib(): Libc {
  return (libc ??= loadLibc());
}

function loadLibc(): Libc {
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    throw new FdPassingError(
      'FD_ERR_UNSUPPORTED',
      `fd passing needs Linux x86_64, not ${process.platform} ${process.arch}`,
    );
  }
  let c: IKoffiLib;
  try {
    c = koffi.load('libc.so.6');
  } catch (cause) {
    throw new FdPassingError('FD_ERR_UNSUPPORTED', 'cannot load glibc (libc.so.6)', { cause });
  }
  // Anonymous structs: koffi's type names are process-wide, and a second copy of this module (or another
  // library) declaring 'timeval' would fail with "Duplicate type name".
  const iovec = koffi.struct({ iov_base: 'void *', iov_len: 'size_t' });
  const msghdr = koffi.struct({
    msg_name: 'void *',
    msg_namelen: 'uint32_t',
    msg_iov: 'void *',
    msg_iovlen: 'size_t',
    msg_control: 'void *',
    msg_controllen: 'size_t',
    msg_flags: 'int',
  });
  const cmsghdr = koffi.struct({ cmsg_len: 'size_t', cmsg_level: 'int', cmsg_type: 'int' });
  const ucred = koffi.struct({ pid: 'int32_t', uid: 'uint32_t', gid: 'uint32_t' });
  const pollfd = koffi.struct({ fd: 'int', events: 'int16_t', revents: 'int16_t' });
  const timeval = koffi.struct({ tv_sec: 'long', tv_usec: 'long' });
  const abi: Array<[string, number, number]> = [
    ['sizeof iovec', koffi.sizeof(iovec), 16],
    ['sizeof msghdr', koffi.sizeof(msghdr), 56],
    ['msghdr.msg_iov', koffi.offsetof(msghdr, 'msg_iov'), 16],
    ['msghdr.msg_iovlen', koffi.offsetof(msghdr, 'msg_iovlen'), 24],
    ['msghdr.msg_control', koffi.offsetof(msghdr, 'msg_control'), 32],
    ['msghdr.msg_controllen', koffi.offsetof(msghdr, 'msg_controllen'), 40],
    ['msghdr.msg_flags', koffi.offsetof(msghdr, 'msg_flags'), 48],
    ['sizeof cmsghdr', koffi.sizeof(cmsghdr), CMSG_HDR_BYTES],
    ['sizeof ucred', koffi.sizeof(ucred), 12],
    ['sizeof pollfd', koffi.sizeof(pollfd), 8],
    ['sizeof timeval', koffi.sizeof(timeval), 16],
  ];
  for (const [what, got, want] of abi) {
    if (got !== want) throw new FdPassingError('FD_ERR_UNSUPPORTED', `${what} is ${got} bytes, x86_64 has ${want}`);
  }
  const f = <A extends unknown[]>(name: string, result: TypeSpec, args: TypeSpec[]): SysFn<A> =>
    c.func(name, result, args) as unknown as SysFn<A>;
  const scratch: unknown = koffi.alloc('uint8_t', SCRATCH_BYTES); // lives as long as the process
  return {
    socket: f('socket', 'int', ['int', 'int', 'int']),
    socketpair: f('socketpair', 'int', ['int', 'int', 'int', koffi.out(koffi.pointer('int'))]),
    bind: f('bind', 'int', ['int', 'void *', 'uint32_t']),
    connect: f('connect', 'int', ['int', 'void *', 'uint32_t']),
    listen: f('listen', 'int', ['int', 'int']),
    accept4: f('accept4', 'int', ['int', 'void *', 'void *', 'int']),
    sendmsg: f('sendmsg', 'intptr_t', ['int', 'void *', 'int']),
    recvmsg: f('recvmsg', 'intptr_t', ['int', 'void *', 'int']),
    setsockoptTimeval: f('setsockopt', 'int', ['int', 'int', 'int', koffi.pointer(timeval), 'uint32_t']),
    getsockoptUcred: f('getsockopt', 'int', [
      'int',
      'int',
      'int',
      koffi.out(koffi.pointer(ucred)),
      koffi.inout(koffi.pointer('uint32_t')),
    ]),
    fcntl: c.func('int fcntl(int fd, int cmd, ...)') as unknown as Libc['fcntl'],
    poll: f('poll', 'int', [koffi.inout(koffi.pointer(pollfd)), 'unsigned long', 'int']),
    flock: f('flock', 'int', ['int', 'int']),
    close: f('close', 'int', ['int']),
    scratch,
    scratchAddress: koffi.address(scratch),
    view: new DataView(koffi.view(scratch, SCRATCH_BYTES)),
  };
}

const ERRNO_NAMES = new Map<number, string>();
for (const [name, value] of Object.entries(koffi.os.errno)) if (!ERRNO_NAMES.has(value)) ERRNO_NAMES.set(value, name);

function errnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `errno ${errno}`;
}

function syscallError(syscall: string, errno: number, details: Record<string, unknown> = {}): FdPassingError {
  const where = typeof details.path === 'string' ? ` ${details.path}` : '';
  return new FdPassingError('FD_ERR_SYSCALL', `${syscall}${where}: ${errnoName(errno)} (errno ${errno})`, {
    errno,
    syscall,
    details: { ...details, errnoName: errnoName(errno) },
  });
}

function badArgument(message: string): FdPassingError {
  return new FdPassingError('FD_ERR_BAD_ARGUMENT', message);
}

/** Throws the errno of the call that just returned -1; call it before anything else can touch errno. */
function fail(syscall: string, details?: Record<string, unknown>): never {
  throw syscallError(syscall, koffi.errno(), details);
}

/** An AF_UNIX SOCK_SEQPACKET pair, both ends close-on-exec and blocking. */
export function socketPair(): [number, number] {
  const c = lib();
  const sv = new Int32Array(2);
  if (c.socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) fail('socketpair');
  return [sv[0]!, sv[1]!];
}

function sockaddrUn(path: string): Buffer {
  const bytes = Buffer.from(path);
  if (bytes.length === 0 || bytes.length >= SUN_PATH_BYTES || bytes.includes(0)) {
    throw badArgument(`socket path must be 1..${SUN_PATH_BYTES - 1} bytes without NUL: ${JSON.stringify(path)}`);
  }
  const addr = Buffer.alloc(SOCKADDR_UN_BYTES);
  addr.writeUInt16LE(AF_UNIX, 0);
  bytes.copy(addr, 2);
  return addr;
}

/**
 * A connected SEQPACKET socket to the listener at `path`, close-on-exec, in blocking mode. The connect itself
 * never blocks: a listener whose backlog is full answers EAGAIN. Throws FD_ERR_SYSCALL with `errno` (ENOENT: no
 * socket file; ECONNREFUSED: a socket file no one listens on).
 */
export function connectUnix(path: string): number {
  const c = lib();
  const addr = sockaddrUn(path);
  const fd = c.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) fail('socket');
  try {
    // AF_UNIX connect completes or fails at once, also on a non-blocking socket (never EINPROGRESS).
    if (c.connect(fd, addr, addr.length) < 0) fail('connect', { path });
    setBlocking(fd);
    return fd;
  } catch (err) {
    closeFd(fd);
    throw err;
  }
}

function setBlocking(fd: number): void {
  const c = lib();
  const flags = c.fcntl(fd, F_GETFL);
  if (flags < 0) fail('fcntl(F_GETFL)');
  if (c.fcntl(fd, F_SETFL, 'int', flags & ~O_NONBLOCK) < 0) fail('fcntl(F_SETFL)');
}

function inUse(path: string, errno: number, why: string): FdPassingError {
  return new FdPassingError('FD_ERR_IN_USE', `${path}: ${why}`, { errno, syscall: 'connect', details: { path } });
}

/**
 * Removes the socket file at `path` when no one answers connect on it. Nothing at `path`, or something that is
 * not a socket, is left for bind to judge.
 */
function removeStaleSocket(path: string): void {
  try {
    if (!lstatSync(path).isSocket()) return;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  let probe: number;
  try {
    probe = connectUnix(path);
  } catch (err) {
    if (!(err instanceof FdPassingError) || err.errno === undefined) throw err;
    if (err.errno === ENOENT) return;
    if (err.errno === ECONNREFUSED) {
      try {
        unlinkSync(path);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      }
      return;
    }
    // EAGAIN: a listener with a full backlog; EPROTOTYPE: a listener of another socket type.
    if (err.errno === EAGAIN || err.errno === EPROTOTYPE) throw inUse(path, err.errno, 'a process listens on it');
    throw err;
  }
  closeFd(probe);
  throw inUse(path, 0, 'a process listens on it');
}

/**
 * A listening SEQPACKET socket at `path` (non-blocking, close-on-exec, backlog 8, socket file mode 0600). A
 * socket file left by a dead process is replaced; one that a live process answers on throws FD_ERR_IN_USE, as
 * does any other file at `path`. Processes that may race for the same path serialise with flock on a lock file:
 * between the probe and bind another one could replace the socket this one just bound.
 */
export function listenUnix(path: string): number {
  const c = lib();
  const addr = sockaddrUn(path);
  removeStaleSocket(path);
  const fd = c.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) fail('socket');
  let bound = false;
  try {
    if (c.bind(fd, addr, addr.length) < 0) {
      const errno = koffi.errno();
      if (errno === EADDRINUSE) throw inUse(path, errno, 'the path exists (bind: EADDRINUSE)');
      throw syscallError('bind', errno, { path });
    }
    bound = true;
    // Before listen(2): until then every connect is refused, so the umask-wide mode of bind never admits anyone.
    chmodSync(path, SOCKET_MODE);
    if (c.listen(fd, LISTEN_BACKLOG) < 0) fail('listen', { path });
    return fd;
  } catch (err) {
    closeFd(fd);
    if (bound) rmSync(path, { force: true });
    throw err;
  }
}

/** The next pending connection (close-on-exec, blocking mode), or undefined when none is pending. */
export function acceptUnix(listenFd: number): number | undefined {
  const fd = lib().accept4(listenFd, null, null, SOCK_CLOEXEC);
  if (fd >= 0) return fd;
  const errno = koffi.errno();
  if (errno === EAGAIN) return undefined;
  throw syscallError('accept4', errno);
}

/** msghdr at MSGHDR_OFFSET for one iovec over the data area and `controlBytes` of control (0: none). */
function prepareMsghdr(c: Libc, dataBytes: number, controlBytes: number): void {
  const v = c.view;
  const base = c.scratchAddress;
  v.setBigUint64(MSGHDR_OFFSET + 0, 0n, true); // msg_name
  v.setBigUint64(MSGHDR_OFFSET + 8, 0n, true); // msg_namelen + padding
  v.setBigUint64(MSGHDR_OFFSET + 16, base + BigInt(IOVEC_OFFSET), true); // msg_iov
  v.setBigUint64(MSGHDR_OFFSET + 24, 1n, true); // msg_iovlen
  v.setBigUint64(MSGHDR_OFFSET + 32, controlBytes > 0 ? base + BigInt(CONTROL_OFFSET) : 0n, true); // msg_control
  v.setBigUint64(MSGHDR_OFFSET + 40, BigInt(controlBytes), true); // msg_controllen
  v.setBigUint64(MSGHDR_OFFSET + 48, 0n, true); // msg_flags + padding
  v.setBigUint64(IOVEC_OFFSET + 0, base + BigInt(DATA_OFFSET), true); // iov_base
  v.setBigUint64(IOVEC_OFFSET + 8, BigInt(dataBytes), true); // iov_len
}

/**
 * Sends one message: `payload` (0..64 KiB; empty only with descriptors, since an empty message without any
 * reads as end of stream) and `fds` (0..8) as one SCM_RIGHTS control message. The receiver gets its own
 * descriptions' duplicates; ours stay open. MSG_NOSIGNAL: a closed peer is EPIPE, never SIGPIPE.
 */
export function sendFds(sock: number, payload: Buffer, fds: readonly number[]): void {
  if (payload.length > MAX_PAYLOAD_BYTES) throw badArgument(`payload of ${payload.length} bytes exceeds 64 KiB`);
  if (fds.length > MAX_FDS) throw badArgument(`${fds.length} descriptors exceed ${MAX_FDS}`);
  if (!fds.every((fd) => Number.isInteger(fd) && fd >= 0)) throw badArgument(`bad descriptor in [${fds.join(', ')}]`);
  if (payload.length === 0 && fds.length === 0) throw badArgument('an empty message without descriptors reads as EOF');
  const c = lib();
  const controlBytes = fds.length > 0 ? cmsgSpace(fds.length * FD_BYTES) : 0;
  prepareMsghdr(c, payload.length, controlBytes);
  const v = c.view;
  if (controlBytes > 0) {
    new Uint8Array(v.buffer, CONTROL_OFFSET, CONTROL_BYTES).fill(0);
    v.setBigUint64(CONTROL_OFFSET, BigInt(cmsgLen(fds.length * FD_BYTES)), true); // cmsg_len
    v.setInt32(CONTROL_OFFSET + 8, SOL_SOCKET, true); // cmsg_level
    v.setInt32(CONTROL_OFFSET + 12, SCM_RIGHTS, true); // cmsg_type
    fds.forEach((fd, i) => v.setInt32(CONTROL_OFFSET + CMSG_HDR_BYTES + i * FD_BYTES, fd, true));
  }
  payload.copy(new Uint8Array(v.buffer, DATA_OFFSET, payload.length));
  for (;;) {
    const sent = c.sendmsg(sock, c.scratch, MSG_NOSIGNAL);
    if (sent >= 0) {
      // SEQPACKET sends are atomic: all or an error.
      if (sent !== payload.length) throw syscallError('sendmsg', EMSGSIZE, { sentBytes: sent });
      return;
    }
    const errno = koffi.errno();
    if (errno !== EINTR) throw syscallError('sendmsg', errno);
  }
}

export interface FdMessage {
  payload: Buffer;
  /** Received descriptors, close-on-exec; the caller owns and closes them. */
  fds: number[];
}

/** Descriptors of the SCM_RIGHTS control messages among the first `controlBytes` of the control area. */
function parseControl(v: DataView, controlBytes: number): number[] {
  const fds: number[] = [];
  for (let off = 0; off + CMSG_HDR_BYTES <= controlBytes;) {
    const len = Number(v.getBigUint64(CONTROL_OFFSET + off, true));
    if (len < CMSG_HDR_BYTES || off + len > controlBytes) break;
    const level = v.getInt32(CONTROL_OFFSET + off + 8, true);
    const type = v.getInt32(CONTROL_OFFSET + off + 12, true);
    if (level === SOL_SOCKET && type === SCM_RIGHTS) {
      const count = Math.floor((len - CMSG_HDR_BYTES) / FD_BYTES);
      for (let i = 0; i < count; i++) fds.push(v.getInt32(CONTROL_OFFSET + off + CMSG_HDR_BYTES + i * FD_BYTES, true));
    }
    off += cmsgAlign(len);
  }
  return fds;
}

type RecvResult = { message: FdMessage | null } | { errno: number };

function checkMaxBytes(maxBytes: number): void {
  if (!Number.isInteger(maxBytes) || maxBytes < 1 || maxBytes > MAX_PAYLOAD_BYTES) {
    throw badArgument(`maxBytes must be 1..${MAX_PAYLOAD_BYTES}, not ${maxBytes}`);
  }
}

/** One recvmsg; errno when it failed, the message (null: end of stream) otherwise. */
function recvOnce(sock: number, maxBytes: number, flags: number): RecvResult {
  const c = lib();
  prepareMsghdr(c, maxBytes, CONTROL_BYTES);
  const got = c.recvmsg(sock, c.scratch, MSG_CMSG_CLOEXEC | flags);
  if (got < 0) return { errno: koffi.errno() };
  const v = c.view;
  const msgFlags = v.getInt32(MSGHDR_OFFSET + 48, true);
  const fds = parseControl(v, Number(v.getBigUint64(MSGHDR_OFFSET + 40, true)));
  if ((msgFlags & (MSG_TRUNC | MSG_CTRUNC)) !== 0) {
    for (const fd of fds) closeFd(fd);
    const what = (msgFlags & MSG_TRUNC) !== 0 ? `payload over ${maxBytes} bytes` : `more than ${MAX_FDS} descriptors`;
    throw new FdPassingError('FD_ERR_TRUNCATED', `recvmsg: message truncated (${what}); received fds closed`, {
      syscall: 'recvmsg',
      details: { msgFlags, closedFds: fds.length },
    });
  }
  if (got === 0 && fds.length === 0) return { message: null };
  return { message: { payload: Buffer.from(new Uint8Array(v.buffer, DATA_OFFSET, got)), fds } };
}

function timeoutError(syscall: string, errno: number): FdPassingError {
  return new FdPassingError('FD_ERR_TIMEOUT', `${syscall}: no message within the receive timeout`, { errno, syscall });
}

/**
 * Receives one message (blocking, unless a receive timeout is set), or null on orderly end of stream (the peer
 * closed: 0 bytes and no descriptors). FD_ERR_TIMEOUT when SO_RCVTIMEO expires; FD_ERR_TRUNCATED when the
 * payload exceeded `maxBytes` or more than 8 descriptors came.
 */
export function recvFds(sock: number, maxBytes = MAX_PAYLOAD_BYTES): FdMessage | null {
  checkMaxBytes(maxBytes);
  for (;;) {
    const r = recvOnce(sock, maxBytes, 0);
    if ('message' in r) return r.message;
    if (r.errno === EINTR) continue;
    if (r.errno === EAGAIN) throw timeoutError('recvmsg', r.errno);
    throw syscallError('recvmsg', r.errno);
  }
}

/** Sockets with a recvFdsAsync waiting: libuv allows one poll watcher per descriptor. */
const awaited = new Set<number>();

/**
 * recvFds without blocking the event loop: waits for readiness with a libuv poll watcher (koffi.node.poll, no
 * thread held), then makes one non-blocking recvmsg. Rejects with FD_ERR_TIMEOUT after `timeoutMs`, with the
 * signal's reason on abort, and with FD_ERR_BAD_ARGUMENT while another recvFdsAsync waits on the same socket.
 * SO_RCVTIMEO does not apply here.
 */
export function recvFdsAsync(
  sock: number,
  maxBytes = MAX_PAYLOAD_BYTES,
  opts: { timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<FdMessage | null> {
  return new Promise((resolve, reject) => {
    checkMaxBytes(maxBytes);
    if (awaited.has(sock)) throw badArgument(`a recvFdsAsync already waits on fd ${sock}`);
    opts.signal?.throwIfAborted();
    let watcher: PollWatcher | undefined;
    let timer: NodeJS.Timeout | undefined;
    const onAbort = (): void => settle(() => reject(opts.signal!.reason));
    const settle = (then: () => void): void => {
      watcher?.close();
      if (timer !== undefined) clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      awaited.delete(sock);
      then();
    };
    /** True when the promise is settled. Runs from libuv's poll callback too, so it never throws. */
    const attempt = (): boolean => {
      let r: RecvResult;
      try {
        r = recvOnce(sock, maxBytes, MSG_DONTWAIT);
      } catch (err) {
        settle(() => reject(err));
        return true;
      }
      if ('message' in r) {
        const message = r.message;
        settle(() => resolve(message));
        return true;
      }
      if (r.errno === EAGAIN || r.errno === EINTR) return false;
      const errno = r.errno;
      settle(() => reject(syscallError('recvmsg', errno)));
      return true;
    };
    if (attempt()) return;
    awaited.add(sock);
    try {
      watcher = koffi.node.poll(sock, { readable: true, disconnect: true }, () => void attempt());
    } catch (cause) {
      settle(() => reject(new FdPassingError('FD_ERR_SYSCALL', `uv_poll on fd ${sock} failed`, { cause })));
      return;
    }
    if (opts.timeoutMs !== undefined) {
      timer = setTimeout(() => settle(() => reject(timeoutError('poll', EAGAIN))), opts.timeoutMs);
    }
    opts.signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Resolves true once `fd` is readable (a read will not block: data, end of stream or a pending error), false
 * after `timeoutMs`. poll(2) runs on a libuv threadpool thread (koffi `fn.async`) and holds it while it waits,
 * so the timeout must be finite.
 */
export async function waitReadable(fd: number, timeoutMs: number): Promise<boolean> {
  if (!Number.isFinite(timeoutMs) || timeoutMs < 0 || timeoutMs > 0x7fffffff) {
    throw badArgument(`timeoutMs must be 0..${0x7fffffff}, not ${timeoutMs}`);
  }
  const c = lib();
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const remainingMs = Math.max(0, Math.ceil(deadline - performance.now()));
    const pfd: PollFd = { fd, events: POLLIN, revents: 0 };
    const ready = await new Promise<number>((resolve, reject) =>
      c.poll.async(pfd, 1, remainingMs, (err, result) => (err ? reject(err) : resolve(result))),
    );
    if (ready > 0) {
      if ((pfd.revents & POLLNVAL) !== 0) throw syscallError('poll', EBADF);
      return true;
    }
    if (ready === 0) return false;
    // -1: the worker thread's errno is lost, but with one valid pollfd only EINTR (or ENOMEM) is possible.
    if (performance.now() >= deadline) return false;
  }
}

/** SO_RCVTIMEO: a blocking recvFds waits at most `ms` and then throws FD_ERR_TIMEOUT; 0 waits forever. */
export function setRecvTimeout(sock: number, ms: number): void {
  if (!Number.isFinite(ms) || ms < 0) throw badArgument(`receive timeout must be >= 0 ms, not ${ms}`);
  const tvSec = Math.floor(ms / 1000);
  // A positive timeout that rounds to 0 µs would mean "forever".
  const tvUsec = ms > 0 && tvSec === 0 ? Math.max(1, Math.floor(ms * 1000)) : Math.floor((ms % 1000) * 1000);
  if (lib().setsockoptTimeval(sock, SOL_SOCKET, SO_RCVTIMEO, { tv_sec: tvSec, tv_usec: tvUsec }, 16) < 0) {
    fail('setsockopt(SO_RCVTIMEO)');
  }
}

/**
 * flock(2) on the open file description of `fd` (locks of two open()s of one file conflict; dup'd fds share
 * one). True when held (or released); false only without `wait` when another description holds a conflicting
 * lock. With `wait` it blocks the event loop until the lock is granted.
 */
export function flock(fd: number, mode: 'exclusive' | 'shared' | 'unlock', opts: { wait: boolean }): boolean {
  const op = { exclusive: LOCK_EX, shared: LOCK_SH, unlock: LOCK_UN }[mode] | (opts.wait ? 0 : LOCK_NB);
  for (;;) {
    if (lib().flock(fd, op) === 0) return true;
    const errno = koffi.errno();
    if (errno === EINTR) continue;
    if (errno === EAGAIN && !opts.wait) return false;
    throw syscallError('flock', errno);
  }
}

/**
 * close(2). An fd that is not open (EBADF) is not an error, and neither is EINTR: Linux releases the number
 * before it reports EINTR, so a retry could close a descriptor opened meanwhile.
 */
export function closeFd(fd: number): void {
  if (lib().close(fd) === 0) return;
  const errno = koffi.errno();
  if (errno === EBADF || errno === EINTR) return;
  throw syscallError('close', errno);
}

export interface PeerCredentials {
  pid: number;
  uid: number;
  gid: number;
}

/** SO_PEERCRED: the peer's credentials at connect (or socketpair) time. */
export function peerCredentials(sock: number): PeerCredentials {
  const cred: Partial<PeerCredentials> = {};
  const len = [12];
  if (lib().getsockoptUcred(sock, SOL_SOCKET, SO_PEERCRED, cred, len) < 0) fail('getsockopt(SO_PEERCRED)');
  return { pid: cred.pid!, uid: cred.uid!, gid: cred.gid! };
}
