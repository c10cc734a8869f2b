// SPDX-License-Identifier: Apache-2.0
import { status } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { engineError } from './engine/errors.js';
import { CsiError, noSpaceIn, toGrpcStatus } from './errors.js';
import { MountError } from './mount/errors.js';

function enospc(): NodeJS.ErrnoException {
  const e = new Error("ENOSPC: no space left on device, write '/var/lib/loopsnap/csi/volumes/x.json.tmp'");
  return Object.assign(e, { code: 'ENOSPC', errno: -28, syscall: 'write' });
}

describe('ENOSPC is RESOURCE_EXHAUSTED', () => {
  it.each([
    ['9-1 a Node system error (state file write)', enospc()],
    ['9-2 EDQUOT', Object.assign(new Error('EDQUOT'), { code: 'EDQUOT' })],
    ['9-3 wrapped as INTERNAL', new CsiError('CSI_ERR_INTERNAL', 'put volume', { cause: enospc() })],
    ['9-4 a tool that ran out of space', new MountError('DP_ERR_NO_SPACE', 'mkfs.ext4: No space left on device')],
    [
      '9-5 a mount error caused by one',
      new MountError('DP_ERR_MOUNT', 'mount', { cause: new MountError('DP_ERR_NO_SPACE', 'x') }),
    ],
    ['9-6 inside an AggregateError', new AggregateError([new Error('rollback'), enospc()], 'create failed')],
  ])('%s', (_n, err) => {
    expect(noSpaceIn(err)).toBe(true);
    expect(toGrpcStatus(err).code).toBe(status.RESOURCE_EXHAUSTED);
  });

  it('9-7 other errors keep their status; a typed non-INTERNAL status is not rewritten', () => {
    expect(toGrpcStatus(new Error('boom')).code).toBe(status.INTERNAL);
    const busy = new CsiError('CSI_ERR_BUSY', 'busy', { cause: enospc() });
    expect(toGrpcStatus(busy).code).toBe(status.ABORTED);
    expect(toGrpcStatus(engineError('ENGINE_SAVE_POOL_FULL', 'full')).code).toBe(status.RESOURCE_EXHAUSTED);
    expect(toGrpcStatus(enospc()).errorCode).toBe('CSI_ERR_NO_SPACE');
  });
});
