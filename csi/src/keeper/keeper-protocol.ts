// SPDX-License-Identifier: Apache-2.0
// Messages between the keeper, its server and a successor keeper (see docs/adr/0011-volumes-outlive-the-node-plugin.md).
//
// keeper <-> its server: Node IPC (JSON) plus a SEQPACKET socket the server inherits as fd
// $LOOPSNAP_KEEPER_CHANNEL_FD for descriptors.
//   server -> keeper  waiting                  ready for `start` (modules loaded, nothing of the state dir read)
//   keeper -> server  start {mode: fresh}      no live connection: clean up, mount afresh
//                     start {mode: adopt}      the connection's /dev/fuse descriptor is on the channel
//   server -> keeper  connection {id}          after a fresh mount; the descriptor is on the channel
//                     serving {pid}            the data path and CSI serve
//   keeper -> server  release                  hand the data path over (a successor takes it)
//                     stop                     SIGTERM with no successor: stop for good (unpublish, unstage,
//                                              engine closed, FUSE unmounted), as without a keeper
//   server -> keeper  released                 engine flushed and closed (after release: requests wait in
//                                              the kernel for the successor)
//
// keeper <-> successor keeper: SEQPACKET socket `<stateDir>/keeper.sock`, JSON payloads.
//   successor -> active  handover {pid}
//   active -> successor  connection {id} + the descriptor   (the active server has released)
//                        refused {reason}
//   successor -> active  done                   its server serves; the old keeper retires
// The active keeper owns the connection until it has sent the descriptor; from then on the successor does.
import { join } from 'node:path';

export const KEEPER_CHANNEL_ENV = 'LOOPSNAP_KEEPER_CHANNEL_FD';

export function keeperSocketPath(stateDir: string): string {
  return join(stateDir, 'keeper.sock');
}

export type KeeperToServer = { t: 'start'; mode: 'fresh' | 'adopt' } | { t: 'release' } | { t: 'stop' };

export type ServerToKeeper =
  { t: 'waiting' } | { t: 'connection'; connectionId: number } | { t: 'serving'; pid: number } | { t: 'released' };

export type SuccessorToActive = { t: 'handover'; pid: number } | { t: 'done' };

export type ActiveToSuccessor = { t: 'connection'; connectionId: number } | { t: 'refused'; reason: string };

export function encodeMessage(m: SuccessorToActive | ActiveToSuccessor): Buffer {
  return Buffer.from(JSON.stringify(m));
}

export function decodeMessage<T extends { t: string }>(payload: Buffer): T {
  const m = JSON.parse(payload.toString('utf8')) as T;
  if (typeof m?.t !== 'string') throw new Error('keeper message without a type');
  return m;
}

/** Restart delay after the server's n-th consecutive failure (0 for the first: a crash restarts at once). */
export function restartDelayMs(consecutiveFailures: number): number {
  if (consecutiveFailures <= 1) return 0;
  return Math.min(30_000, 250 * 2 ** (consecutiveFailures - 2));
}
