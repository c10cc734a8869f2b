// SPDX-License-Identifier: Apache-2.0
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { LoopsnapError } from '../../common/src/errors.js';
import { CsiCallError, ErrorCode, isAbortedCall, isCsiFinalError, NodeUnavailableError } from './errors.js';

describe('controller error catalogue', () => {
  const doc = readFileSync(new URL('../../docs/errors.md', import.meta.url), 'utf8');

  it.each(Object.values(ErrorCode))('%s is documented in docs/errors.md', (code) => {
    expect(doc.split('\n').some((l) => l.startsWith(`| \`${code}\` |`))).toBe(true);
  });

  it.each([
    ['CANCELLED', false],
    ['DEADLINE_EXCEEDED', false],
    ['UNAVAILABLE', false],
    ['RESOURCE_EXHAUSTED', false],
    ['ABORTED', false],
    ['INVALID_ARGUMENT', true],
    ['NOT_FOUND', true],
    ['ALREADY_EXISTS', true],
    ['FAILED_PRECONDITION', true],
    ['UNIMPLEMENTED', true],
    ['INTERNAL', true],
  ] as const)('isCsiFinalError(%s) is %s, as upstream', (name, final) => {
    expect(isCsiFinalError(new CsiCallError('CreateSnapshot', 'n', grpc.status[name], 'x'))).toBe(final);
  });

  it('errors without a gRPC status are not final (the call may have reached the plugin)', () => {
    expect(isCsiFinalError(new Error('socket hang up'))).toBe(false);
    expect(isCsiFinalError(new NodeUnavailableError('n', 'Lease expired'))).toBe(false);
  });

  it('carries codes, node and method, and says what to do', () => {
    const e = new CsiCallError('DeleteVolume', 'node-a', grpc.status.FAILED_PRECONDITION, 'volume has 2 snapshots');
    expect(e).toBeInstanceOf(LoopsnapError);
    expect(e.code).toBe(ErrorCode.CsiCallFailed);
    expect(e.message).toBe('DeleteVolume on node "node-a" failed: FAILED_PRECONDITION: volume has 2 snapshots');
    expect(isAbortedCall(e)).toBe(false);
    expect(isAbortedCall(new CsiCallError('CreateSnapshot', 'n', grpc.status.ABORTED, 'busy'))).toBe(true);
    expect(new NodeUnavailableError('node-b', 'Lease not renewed for 50s').message).toBe(
      'node plugin on node "node-b" is unavailable: Lease not renewed for 50s; will retry',
    );
  });
});
