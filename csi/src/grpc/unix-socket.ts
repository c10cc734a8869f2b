// SPDX-License-Identifier: Apache-2.0
// Unix socket files the node plugin serves on (the CSI socket, the kubelet registration socket).
import { rm, stat } from 'node:fs/promises';

/**
 * Removes a socket left behind by a predecessor that did not stop cleanly, so that binding can succeed.
 * It is not an error when nothing exists at `path`; anything there that is not a socket is refused (a wrong
 * flag must not delete a user's file).
 */
export async function removeStaleSocket(path: string): Promise<void> {
  const s = await stat(path).catch(() => undefined);
  if (!s) return;
  if (!s.isSocket()) throw new Error(`${path} exists and is not a socket; refusing to replace it`);
  await rm(path, { force: true });
}
