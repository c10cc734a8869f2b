// SPDX-License-Identifier: Apache-2.0
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { LoopsnapError } from '../../common/src/errors.js';
import { engineError } from './engine/errors.js';
import { CSI_ERRORS, CsiError, missing, statusName, toGrpcStatus } from './errors.js';
import { MountError } from './mount/errors.js';

describe('error catalogue and gRPC mapping', () => {
  it.each([
    ['7-1 CsiError carries its status', new CsiError('CSI_ERR_BUSY', 'x'), status.ABORTED, 'CSI_ERR_BUSY'],
    ['7-2 missing()', missing('volume_id'), status.INVALID_ARGUMENT, 'CSI_ERR_MISSING_FIELD'],
    [
      '7-3 engine errors keep theirs',
      engineError('ENGINE_SAVE_POOL_FULL', 'full'),
      status.RESOURCE_EXHAUSTED,
      'ENGINE_SAVE_POOL_FULL',
    ],
    [
      '7-4 data-path errors keep theirs',
      new MountError('DP_ERR_NOT_STAGED', 'x'),
      status.FAILED_PRECONDITION,
      'DP_ERR_NOT_STAGED',
    ],
    ['7-5 other LoopsnapErrors are INTERNAL', new LoopsnapError('SOMETHING', 'x'), status.INTERNAL, 'SOMETHING'],
    ['7-6 plain errors are INTERNAL', new Error('boom'), status.INTERNAL, undefined],
    [
      '7-7 AggregateError takes its first member',
      new AggregateError([new CsiError('CSI_ERR_IN_USE', 'in use'), new Error('rollback')], 'failed'),
      status.FAILED_PRECONDITION,
      'CSI_ERR_IN_USE',
    ],
  ])('%s', (_n, err, code, errorCode) => {
    const s = toGrpcStatus(err);
    expect(s.code).toBe(code);
    expect(s.errorCode).toBe(errorCode);
    expect(s.details.length).toBeGreaterThan(0);
  });

  it('7-8 missing() uses the sidecars wording', () => {
    expect(missing('name').message).toBe('name missing in request');
  });

  it('7-9 statusName names every status', () => {
    expect(statusName(status.NOT_FOUND)).toBe('NOT_FOUND');
    expect(statusName(99)).toBe('CODE_99');
  });

  it('7-10 every CSI error code is documented in docs/csi-driver.md with its status', () => {
    const doc = readFileSync(join(import.meta.dirname, '..', '..', 'docs', 'csi-driver.md'), 'utf8');
    for (const [code, { grpc }] of Object.entries(CSI_ERRORS)) {
      expect(doc, code).toMatch(new RegExp(`\\| \`${code}\` \\| ${grpc} \\|`));
    }
  });
});
