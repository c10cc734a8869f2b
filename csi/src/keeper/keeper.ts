// SPDX-License-Identifier: Apache-2.0
// The keeper: the node plugin container's first process. It holds a descriptor of the data path's /dev/fuse
// file and runs the server (csi/src/main.ts) as its child; it does nothing else, so it never needs a change.
// While it holds the descriptor the FUSE connection lives: when the server dies the kernel queues the pods'
// I/O instead of failing it, and the next server takes the connection over (FUSE_NOTIFY_RESEND gets back
// what the dead one had read). Protocol and ownership rules: keeper-protocol.ts.
//
//   crash of the server   -> the spare (a second server started once the first serves, waiting with its
//                            modules loaded) adopts the connection at once; without one a new server starts;
//                            backoff only for repeated failures
//   successor keeper      -> (new pod of a rollout, via <stateDir>/keeper.sock) the server releases, the
//                            descriptor goes over, the old keeper retires once the successor serves; a
//                            successor that vanishes before `done` hands the connection back (adopt again)
//   SIGTERM               -> retired: exit. Active (no successor): the server stops for good (unpublish,
//                            unstage, engine closed, FUSE unmounted: nothing left on the node), then exit
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import type { Logger } from '../../../common/src/log.js';
import {
  acceptUnix,
  closeFd,
  connectUnix,
  FdPassingError,
  listenUnix,
  recvFds,
  recvFdsAsync,
  sendFds,
  socketPair,
  waitReadable,
} from './fd-passing.js';
import {
  type ActiveToSuccessor,
  decodeMessage,
  encodeMessage,
  KEEPER_CHANNEL_ENV,
  type KeeperToServer,
  keeperSocketPath,
  restartDelayMs,
  type ServerToKeeper,
  type SuccessorToActive,
} from './keeper-protocol.js';

export interface KeeperOptions {
  readonly stateDir: string;
  /** The server's command line (node and script first). */
  readonly command: readonly string[];
  readonly log: Logger;
  /** How long a release may take before the server is killed (below the pod's grace period). */
  readonly releaseTimeoutMs?: number;
  /**
   * A file that exists while this keeper's server serves the data path (the pod's readiness probe): on the
   * host network an HTTP probe would reach whichever pod's server holds the port, the old one during a
   * rollout, and mark the new pod ready before it took over.
   */
  readonly readyFile?: string;
  /** How long a successor waits for the active keeper to hand over before it asks again. */
  readonly handoverTimeoutMs?: number;
}

type Phase = 'standby' | 'active' | 'retired' | 'stopping';

interface Server {
  readonly child: ChildProcess;
  readonly channel: number;
  serving: boolean;
  released: boolean;
  /** Sent `waiting`: ready for `start`. */
  waiting: boolean;
  readonly exited: Promise<void>;
}

export class Keeper {
  private phase: Phase = 'standby';
  private fuse: { fd: number; connectionId: number } | undefined;
  private server: Server | undefined;
  /** A started server idling before `start`, promoted when the active one dies. */
  private spare: Server | undefined;
  private listenFd = -1;
  private failures = 0;
  private stopped: (() => void) | undefined;
  private releaseWaiters: Array<() => void> = [];
  /** The handover being served to a successor, if any (a SIGTERM waits for it). */
  private handingOver: Promise<void> | undefined;
  private stopAsked = false;
  private servingWaiters: Array<() => void> = [];
  private readonly log: Logger;

  constructor(private readonly opts: KeeperOptions) {
    this.log = opts.log.child({ component: 'keeper' });
  }

  /** Runs until SIGTERM (or retirement and SIGTERM); resolves with the exit code. */
  async run(): Promise<number> {
    // Signal listeners do not keep Node's loop alive: a retired keeper would drift into exit. It stays
    // until its pod is stopped.
    const alive = setInterval(() => undefined, 1 << 30);
    const done = new Promise<void>((resolve) => (this.stopped = resolve)).finally(() => clearInterval(alive));
    process.on('SIGTERM', () => void this.stop('SIGTERM'));
    process.on('SIGINT', () => void this.stop('SIGINT'));
    mkdirSync(this.opts.stateDir, { recursive: true, mode: 0o700 });
    // A predecessor that closes the handover before answering is stopping or dying: ask again until its
    // socket is gone (then start fresh) or it answers.
    for (let attempt = 0; ; attempt++) {
      const predecessor = this.connectPredecessor();
      if (predecessor === undefined) {
        this.becomeActive();
        this.startServer();
        break;
      }
      if ((await this.takeOver(predecessor)) === 'done') break;
      if (attempt >= 40) throw new Error('the predecessor keeper closed the handover 40 times without answering');
      this.log.warn({ attempt }, 'The predecessor closed the handover without answering; asking again');
      await new Promise((r) => setTimeout(r, 250));
    }
    await done;
    return 0;
  }

  // ----- the server --------------------------------------------------------------------------------------

  /** Starts a server as the active one (`spare`: as the spare). */
  private startServer(spare = false): Server {
    const [channel, childEnd] = socketPair();
    const [cmd, ...args] = this.opts.command;
    const child = spawn(cmd!, args, {
      stdio: ['inherit', 'inherit', 'inherit', childEnd, 'ipc'],
      env: { ...process.env, [KEEPER_CHANNEL_ENV]: '3' },
    });
    closeFd(childEnd);
    let exited!: () => void;
    const s: Server = {
      child,
      channel,
      serving: false,
      released: false,
      waiting: false,
      exited: new Promise<void>((r) => (exited = r)),
    };
    if (spare) this.spare = s;
    else this.server = s;
    child.on('message', (m: ServerToKeeper) => this.onServerMessage(s, m));
    child.on('exit', (code, signal) => {
      exited();
      closeFd(channel);
      if (this.spare === s) {
        this.spare = undefined;
        return;
      }
      if (this.server === s) this.server = undefined;
      this.onServerExit(s, code, signal);
    });
    this.log.info({ pid: child.pid }, 'Started the node plugin server');
    return s;
  }

  private onServerMessage(s: Server, m: ServerToKeeper): void {
    switch (m.t) {
      case 'waiting':
        s.waiting = true;
        if (this.phase === 'active' && this.server === s) this.sendStart(s);
        return; // a spare waits; a standby successor starts its server once it holds the connection
      case 'connection': {
        const got = recvFds(s.channel);
        const fd = got?.fds[0];
        if (fd === undefined) {
          this.log.error('The server announced a connection but sent no descriptor');
          return;
        }
        if (this.fuse) closeFd(this.fuse.fd);
        this.fuse = { fd, connectionId: m.connectionId };
        this.log.info({ connection: m.connectionId }, 'Holding the FUSE connection');
        return;
      }
      case 'serving':
        s.serving = true;
        this.failures = 0;
        if (this.phase === 'active' && this.server === s) this.markReady(true);
        for (const w of this.servingWaiters.splice(0)) w();
        if (this.phase === 'active' && this.spare === undefined) this.startServer(true);
        return;
      case 'released':
        s.released = true;
        for (const w of this.releaseWaiters.splice(0)) w();
        return;
    }
  }

  private sendStart(s: Server): void {
    if (this.fuse) {
      sendFds(s.channel, Buffer.from('fuse'), [this.fuse.fd]);
      s.child.send({ t: 'start', mode: 'adopt' } satisfies KeeperToServer);
    } else {
      s.child.send({ t: 'start', mode: 'fresh' } satisfies KeeperToServer);
    }
  }

  private onServerExit(s: Server, code: number | null, signal: NodeJS.Signals | null): void {
    for (const w of this.releaseWaiters.splice(0)) w();
    if (this.phase !== 'active') return;
    this.markReady(false);
    if (s.released) return; // released, then ended itself (SIGKILL): a handover sends the connection on
    this.failures++;
    const delay = restartDelayMs(this.failures);
    this.log.error({ code, signal, failures: this.failures, restartInMs: delay }, 'The node plugin server died');
    setTimeout(() => this.startServerIfActive(), delay);
  }

  /**
   * Asks the server to release the data path (`stop`: to stop for good, no successor) and waits until it
   * did (or died, or the timeout passed).
   */
  private async releaseServer(how: 'release' | 'stop' = 'release'): Promise<void> {
    const s = this.server;
    if (!s) return;
    const released = new Promise<void>((r) => this.releaseWaiters.push(r));
    s.child.send({ t: how } satisfies KeeperToServer);
    const timeoutMs = this.opts.releaseTimeoutMs ?? 20_000;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), timeoutMs)));
    if ((await Promise.race([released, timedOut])) === 'timeout') {
      this.log.error({ timeoutMs }, 'The server did not release in time; killing it');
      s.child.kill('SIGKILL');
    }
    clearTimeout(timer);
    await s.exited;
  }

  // ----- being the active keeper -------------------------------------------------------------------------

  private becomeActive(): void {
    this.phase = 'active';
    const path = keeperSocketPath(this.opts.stateDir);
    for (let attempt = 0; ; attempt++) {
      try {
        this.listenFd = listenUnix(path);
        break;
      } catch (err) {
        // The predecessor closes its listener when it retires; it may not have yet.
        if (!(err instanceof FdPassingError) || err.code !== 'FD_ERR_IN_USE' || attempt >= 50) throw err;
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
      }
    }
    void this.acceptLoop();
  }

  /** Serves successors one at a time until the keeper retires or stops (which close the listener). */
  private async acceptLoop(): Promise<void> {
    const fd = this.listenFd;
    while (this.phase === 'active' && this.listenFd === fd) {
      let conn: number | undefined;
      try {
        if (!(await waitReadable(fd, 1000))) continue;
        if (this.phase !== 'active' || this.listenFd !== fd) return;
        conn = acceptUnix(fd);
      } catch (err) {
        if (this.phase === 'active' && this.listenFd === fd) this.log.error({ err }, 'Failed to accept a successor');
        return;
      }
      if (conn === undefined) continue;
      this.handingOver = this.serveSuccessor(conn).catch((err: unknown) => this.log.error({ err }, 'Handover failed'));
      await this.handingOver;
      this.handingOver = undefined;
    }
  }

  /** Gives the connection to a successor keeper; takes it back when the successor vanishes before `done`. */
  private async serveSuccessor(conn: number): Promise<void> {
    try {
      const first = await recvFdsAsync(conn);
      if (first === null) return;
      const m = decodeMessage<SuccessorToActive>(first.payload);
      if (m.t !== 'handover') return;
      this.log.info({ successorPid: m.pid }, 'A successor asks for the data path');
      if (this.server && !this.server.serving) {
        await new Promise<void>((r) => this.servingWaiters.push(r));
      }
      if (!this.fuse) {
        sendFds(
          conn,
          encodeMessage({ t: 'refused', reason: 'no connection held yet' } satisfies ActiveToSuccessor),
          [],
        );
        return;
      }
      await this.dropSpare(); // the successor brings its own
      await this.releaseServer();
      sendFds(conn, encodeMessage({ t: 'connection', connectionId: this.fuse.connectionId }), [this.fuse.fd]);
      const reply = await recvFdsAsync(conn);
      const ok = reply !== null && decodeMessage<SuccessorToActive>(reply.payload).t === 'done';
      if (!ok) {
        this.log.error('The successor vanished before it served; taking the data path back');
        this.startServerIfActive();
        return;
      }
      this.retire();
    } finally {
      closeFd(conn);
    }
  }

  /** Makes a server active again (after a crash, or a handover that failed): the spare when it waits. */
  private startServerIfActive(): void {
    if (this.phase !== 'active' || this.server !== undefined) return;
    const spare = this.spare;
    if (spare?.waiting) {
      this.spare = undefined;
      this.server = spare;
      this.sendStart(spare);
      this.log.info({ pid: spare.child.pid }, 'Promoted the spare server');
      return;
    }
    this.startServer();
  }

  private async dropSpare(): Promise<void> {
    const spare = this.spare;
    if (!spare) return;
    spare.child.kill('SIGKILL');
    await spare.exited;
  }

  private markReady(on: boolean): void {
    const f = this.opts.readyFile;
    if (!f) return;
    try {
      if (on) writeFileSync(f, `${process.pid}\n`);
      else rmSync(f, { force: true });
    } catch (err) {
      this.log.warn({ err, readyFile: f }, 'Failed to update the readiness file');
    }
  }

  private retire(): void {
    this.markReady(false);
    this.phase = 'retired';
    closeFd(this.listenFd);
    this.listenFd = -1;
    if (this.fuse) closeFd(this.fuse.fd);
    this.fuse = undefined;
    this.log.info('Handed the data path to the successor; retired until the pod stops');
  }

  // ----- being a successor -------------------------------------------------------------------------------

  private connectPredecessor(): number | undefined {
    try {
      return connectUnix(keeperSocketPath(this.opts.stateDir));
    } catch (err) {
      if (err instanceof FdPassingError) return undefined; // none listens: no live predecessor
      throw err;
    }
  }

  /**
   * Starts the server in standby (modules loaded, waiting for `start`), asks the predecessor for the
   * connection, then lets the server adopt it and tells the predecessor once it serves.
   */
  private async takeOver(conn: number): Promise<'done' | 'gone'> {
    const s = this.startServer();
    const waiting = new Promise<void>((r) => {
      const onMsg = (m: ServerToKeeper): void => {
        if (m.t === 'waiting') {
          s.child.off('message', onMsg);
          r();
        }
      };
      s.child.on('message', onMsg);
    });
    await Promise.race([waiting, s.exited]);
    if (this.server !== s) {
      closeFd(conn);
      throw new Error('the server died before the handover');
    }
    let got: Awaited<ReturnType<typeof recvFdsAsync>>;
    try {
      sendFds(conn, encodeMessage({ t: 'handover', pid: process.pid } satisfies SuccessorToActive), []);
      got = await recvFdsAsync(conn);
    } catch (err) {
      const errno = err instanceof FdPassingError ? (err.details as { errnoName?: string } | undefined)?.errnoName : '';
      if (errno !== 'ECONNRESET' && errno !== 'EPIPE') throw err;
      got = null;
    }
    if (got === null) {
      // Closed before any answer: the predecessor still owns (or has ended) the connection. Nothing was
      // handed over, so nothing is lost; the standby server goes and run() asks again.
      closeFd(conn);
      this.server = undefined;
      s.child.kill('SIGKILL');
      await s.exited;
      return 'gone';
    }
    const m = decodeMessage<ActiveToSuccessor>(got.payload);
    const fd = got?.fds[0];
    if (m?.t !== 'connection' || fd === undefined) {
      // Never clean up under a live predecessor: exit, the container restart asks again.
      closeFd(conn);
      s.child.kill('SIGKILL');
      throw new Error(`the predecessor did not hand over its connection: ${JSON.stringify(m ?? 'closed')}`);
    }
    this.fuse = { fd, connectionId: m.connectionId };
    this.sendStart(s);
    await Promise.race([new Promise<void>((r) => this.servingWaiters.push(r)), s.exited]);
    if (!s.serving) {
      closeFd(conn); // without `done` the predecessor takes the connection back
      closeFd(fd);
      this.fuse = undefined;
      this.phase = 'retired';
      throw new Error('the server died while taking over; the predecessor keeps the data path');
    }
    try {
      sendFds(conn, encodeMessage({ t: 'done' } satisfies SuccessorToActive), []);
    } catch (err) {
      // The predecessor went away after sending the connection: it is ours either way.
      this.log.warn({ err }, 'Could not tell the predecessor the handover is done');
    }
    closeFd(conn);
    this.becomeActive();
    this.markReady(true);
    return 'done';
  }

  // ----- stopping ----------------------------------------------------------------------------------------

  private async stop(signal: string): Promise<void> {
    if (this.stopAsked) return;
    this.stopAsked = true;
    // A handover under way finishes first: a rollout may stop the old pod while its successor takes over.
    if (this.handingOver) await this.handingOver;
    this.markReady(false);
    const was = this.phase;
    this.phase = 'stopping';
    this.log.info({ signal, phase: was }, 'Stopping the keeper');
    if (this.listenFd >= 0) closeFd(this.listenFd);
    this.listenFd = -1;
    await this.dropSpare();
    // Active at SIGTERM means no successor took the connection: it ends with this process, so the server
    // stops for good (nothing left on the node), bounded by the release timeout.
    if (was === 'active') await this.releaseServer('stop');
    else if (this.server) {
      this.server.child.kill('SIGKILL');
      await this.server.exited;
    }
    if (this.fuse) closeFd(this.fuse.fd);
    this.stopped?.();
  }
}
