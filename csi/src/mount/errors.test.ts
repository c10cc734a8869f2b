// SPDX-License-Identifier: Apache-2.0
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { LoopsnapError } from '../../../common/src/errors.js';
import { DATAPATH_ERRORS, MountError } from './errors.js';

describe('data-path error catalogue', () => {
  const doc = readFileSync(new URL('../../../docs/errors.md', import.meta.url), 'utf8');

  it.each(Object.entries(DATAPATH_ERRORS))('%s is documented in docs/errors.md with its gRPC status', (code, e) => {
    const row = doc.split('\n').find((l) => l.startsWith(`| \`${code}\` |`));
    expect(row, `docs/errors.md has no row for ${code}`).toBeDefined();
    expect(row).toContain(`| ${e.grpc} |`);
  });

  it('MountError carries code, gRPC status, errno for the kernel and cause', () => {
    const cause = new Error('exit 32');
    const err = new MountError('DP_ERR_VIEW_BUSY', 'view v is open', { cause, details: { view: 'v' } });
    expect(err).toBeInstanceOf(LoopsnapError);
    expect(err.code).toBe('DP_ERR_VIEW_BUSY');
    expect(err.grpcCode).toBe('FAILED_PRECONDITION');
    expect(err.errno).toBe(16);
    expect(err.cause).toBe(cause);
    expect(err.details).toEqual({ view: 'v' });
  });
});
