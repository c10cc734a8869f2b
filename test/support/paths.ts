// SPDX-License-Identifier: Apache-2.0
import { fileURLToPath } from 'node:url';

/** Repository root (this file is test/support/paths.ts, or dist/test/support/paths.js after a build). */
export const REPO_ROOT = fileURLToPath(
  new URL(import.meta.url.includes('/dist/') ? '../../../' : '../../', import.meta.url),
);
