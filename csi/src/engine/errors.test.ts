// SPDX-License-Identifier: Apache-2.0
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ENGINE_ERRORS, EngineError, engineError, isEngineError } from './errors.js';
import { LoopsnapError } from '../../../common/src/errors.js';

describe('engine error catalogue', () => {
  const doc = readFileSync(new URL('../../../docs/errors.md', import.meta.url), 'utf8');

  it.each(Object.entries(ENGINE_ERRORS))('%s is documented in docs/errors.md with its gRPC status', (code, e) => {
    const row = doc.split('\n').find((l) => l.startsWith(`| \`${code}\` |`));
    expect(row, `docs/errors.md has no row for ${code}`).toBeDefined();
    expect(row).toContain(`| ${e.grpc} |`);
  });

  it('builds LoopsnapErrors that carry code, gRPC status, details and cause', () => {
    const cause = new Error('EIO');
    const err = engineError('ENGINE_DEVICE_IO', 'write failed', { path: '/x' }, cause);
    expect(err).toBeInstanceOf(LoopsnapError);
    expect(err).toBeInstanceOf(EngineError);
    expect(err.code).toBe('ENGINE_DEVICE_IO');
    expect(err.grpcStatus).toBe('INTERNAL');
    expect(err.details).toEqual({ path: '/x' });
    expect(err.cause).toBe(cause);
    expect(isEngineError(err, 'ENGINE_DEVICE_IO')).toBe(true);
    expect(isEngineError(err, 'ENGINE_CLOSED')).toBe(false);
    expect(isEngineError(new Error('x'))).toBe(false);
  });
});
