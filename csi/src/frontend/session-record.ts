// SPDX-License-Identifier: Apache-2.0
// What a successor server needs to take over a live FUSE connection without the kernel noticing:
// `<stateDir>/fuse-session.json`, written (atomically, fsynced) by the serving process after the handshake
// and before any view's node id can reach the kernel (addView writes it before it returns).
//
// Format 1:
//   { "format": 1, "connectionId": <minor of the mount's st_dev>, "mountpoint": "<abs path>",
//     "nextNodeId": <never reused>, "views": { "<name>": { "nodeId": n, "kind": "file"|"live"|"remote" } } }
// Invariants: node ids are unique and < nextNodeId; a view the kernel may know (looked up, open by a loop
// device) is in `views` with the node id it was looked up under; the record belongs to the connection
// `connectionId` only (a new mount starts a new record).
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { join } from 'node:path';

export const SESSION_RECORD_FILE = 'fuse-session.json';

export type ViewKind = 'file' | 'live' | 'remote';

export interface SessionRecord {
  readonly format: 1;
  readonly connectionId: number;
  readonly mountpoint: string;
  readonly nextNodeId: number;
  readonly views: Readonly<Record<string, { readonly nodeId: number; readonly kind: ViewKind }>>;
}

export function sessionRecordPath(stateDir: string): string {
  return join(stateDir, SESSION_RECORD_FILE);
}

/** Parses and checks a record; throws with the reason when it is not one this code wrote. */
export function decodeSessionRecord(text: string): SessionRecord {
  const r = JSON.parse(text) as Partial<SessionRecord>;
  if (r.format !== 1) throw new Error(`unknown session record format ${String(r.format)}`);
  if (!Number.isSafeInteger(r.connectionId) || (r.connectionId as number) < 0) throw new Error('bad connectionId');
  if (typeof r.mountpoint !== 'string' || !r.mountpoint.startsWith('/')) throw new Error('bad mountpoint');
  if (!Number.isSafeInteger(r.nextNodeId) || (r.nextNodeId as number) < 2) throw new Error('bad nextNodeId');
  const views = r.views ?? {};
  const seen = new Set<number>();
  for (const [name, v] of Object.entries(views)) {
    if (!Number.isSafeInteger(v.nodeId) || v.nodeId < 2 || v.nodeId >= (r.nextNodeId as number) || seen.has(v.nodeId))
      throw new Error(`bad node id of view ${name}`);
    if (v.kind !== 'file' && v.kind !== 'live' && v.kind !== 'remote') throw new Error(`bad kind of view ${name}`);
    seen.add(v.nodeId);
  }
  return { format: 1, connectionId: r.connectionId!, mountpoint: r.mountpoint, nextNodeId: r.nextNodeId!, views };
}

/** The record at `path`, or undefined when there is none or it cannot be used (the reason is returned). */
export function readSessionRecord(path: string): { record?: SessionRecord; problem?: string } {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    return { problem: `no session record (${(err as NodeJS.ErrnoException).code ?? 'unreadable'})` };
  }
  try {
    return { record: decodeSessionRecord(text) };
  } catch (err) {
    return { problem: `unusable session record: ${(err as Error).message}` };
  }
}

/**
 * Replaces the record durably: write a temporary file, fsync, rename over. Synchronous on purpose: the main
 * thread must have it on disk before a node id it names can reach the kernel. The state dir is never on
 * our own FUSE mount, so this cannot wait on the data path.
 */
export function writeSessionRecord(path: string, r: SessionRecord): void {
  const tmp = `${path}.tmp`;
  const fd = openSync(tmp, 'w', 0o600);
  try {
    writeSync(fd, `${JSON.stringify(r)}\n`);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}
