// SPDX-License-Identifier: Apache-2.0
// The server's side of the keeper protocol (keeper-protocol.ts): a Node IPC channel for messages and a
// SEQPACKET socket (fd LOOPSNAP_KEEPER_CHANNEL_FD) for descriptors. A descriptor always travels on the socket
// before the IPC message that announces it, so the receiver's recvmsg never waits.
import type { Logger } from '../../../common/src/log.js';
import { recvFds, sendFds } from './fd-passing.js';
import { type KeeperToServer, KEEPER_CHANNEL_ENV, type ServerToKeeper } from './keeper-protocol.js';

export class KeeperLink {
  private releaseHandler: ((final: boolean) => void) | undefined;
  private releaseAsked: boolean | undefined;
  private readonly started: Promise<KeeperToServer & { t: 'start' }>;

  private constructor(
    private readonly channelFd: number,
    private readonly log: Logger,
  ) {
    this.started = new Promise((resolve, reject) => {
      process.on('message', (m: KeeperToServer) => {
        if (m?.t === 'start') resolve(m);
        else if (m?.t === 'release') this.askRelease(false);
        else if (m?.t === 'stop') this.askRelease(true);
      });
      // Without its keeper a server is an orphan nobody can hand over from or stop: it releases the data
      // path (engine flushed, mounts and loop devices left as they are) and exits. In a pod the keeper is
      // PID 1, so this only happens when the whole container goes.
      process.on('disconnect', () => {
        this.log.warn('Lost the keeper process; releasing the data path');
        reject(new Error('the keeper process went away before it said start'));
        this.askRelease(false);
      });
    });
    this.started.catch(() => undefined);
  }

  private askRelease(final: boolean): void {
    if (this.releaseAsked !== undefined) return;
    this.releaseAsked = final;
    this.releaseHandler?.(final);
  }

  /** The link when this process runs under a keeper (the channel variable is set and IPC is open). */
  static fromEnv(env: NodeJS.ProcessEnv, log: Logger): KeeperLink | undefined {
    const raw = env[KEEPER_CHANNEL_ENV];
    if (raw === undefined || raw === '') return undefined;
    const fd = Number(raw);
    if (!Number.isSafeInteger(fd) || fd < 3 || typeof process.send !== 'function') {
      throw new Error(`${KEEPER_CHANNEL_ENV}=${raw}: not a descriptor inherited from a keeper with an IPC channel`);
    }
    return new KeeperLink(fd, log.child({ component: 'keeper-link' }));
  }

  /** Waits for the keeper's go; `fuseFd` is the predecessor's live connection when there is one. */
  async startup(): Promise<{ fuseFd?: number }> {
    this.send({ t: 'waiting' });
    const m = await this.started;
    if (m.mode === 'fresh') return {};
    const got = recvFds(this.channelFd);
    const fd = got?.fds[0];
    if (fd === undefined) throw new Error('the keeper announced a /dev/fuse descriptor but sent none');
    for (const extra of got!.fds.slice(1)) this.log.warn({ fd: extra }, 'Ignoring an extra descriptor');
    return { fuseFd: fd };
  }

  /** Hands the descriptor of a freshly mounted connection to the keeper (it keeps the connection alive). */
  storeConnection(c: { fd: number; connectionId: number }): void {
    sendFds(this.channelFd, Buffer.from(JSON.stringify({ connectionId: c.connectionId })), [c.fd]);
    this.send({ t: 'connection', connectionId: c.connectionId });
  }

  serving(): void {
    this.send({ t: 'serving', pid: process.pid });
  }

  /** Reports the handover done; resolves once the message is out (the process exits right after). */
  released(): Promise<void> {
    return new Promise((resolve) => {
      if (!process.connected) return resolve();
      const m: ServerToKeeper = { t: 'released' };
      process.send?.(m, undefined, {}, () => resolve());
    });
  }

  /**
   * Calls `fn` when the keeper asks for the data path: `final` false when a successor takes it over (or the
   * keeper is gone), true when the pod stops with no successor.
   */
  onRelease(fn: (final: boolean) => void): void {
    this.releaseHandler = fn;
    if (this.releaseAsked !== undefined) fn(this.releaseAsked);
  }

  private send(m: ServerToKeeper): void {
    if (process.connected) process.send?.(m);
  }
}
