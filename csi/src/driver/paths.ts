// SPDX-License-Identifier: Apache-2.0
// Target and staging paths come from the CO; they are validated before the driver mounts on them.
import { isAbsolute, normalize } from 'node:path';
import { CsiError } from '../errors.js';

export const PATH_MAX_BYTES = 4096;

/** Returns the normalised path; INVALID_ARGUMENT for relative paths, `..` segments, NUL or excessive length. */
export function checkPath(field: string, path: string): string {
  if (Buffer.byteLength(path) > PATH_MAX_BYTES) throw new CsiError('CSI_ERR_INVALID_FIELD', `${field} is too long`);
  if (path.includes('\0')) throw new CsiError('CSI_ERR_INVALID_FIELD', `${field} contains a NUL byte`);
  if (!isAbsolute(path))
    throw new CsiError('CSI_ERR_INVALID_FIELD', `${field} ${JSON.stringify(path)} is not absolute`);
  if (path.split('/').includes('..')) {
    throw new CsiError('CSI_ERR_INVALID_FIELD', `${field} ${JSON.stringify(path)} contains a ".." segment`);
  }
  const n = normalize(path);
  return n.length > 1 && n.endsWith('/') ? n.slice(0, -1) : n;
}
