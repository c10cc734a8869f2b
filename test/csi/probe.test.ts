// SPDX-License-Identifier: Apache-2.0
// Probe answers for the data path, not just for the process: ready while the plugin's FUSE mount serves, and
// FAILED_PRECONDITION (CSI_ERR_DATAPATH_DOWN) naming the mount once it is gone, since no volume's I/O can be
// served then. The mount is taken away the way an administrator's `umount -l` would.
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { status } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { failure } from './hostile.js';
import { call, cleanupDir, isRoot, PluginProcess } from './plugin.js';

const execFileP = promisify(execFile);

describe('Probe (root: FUSE)', () => {
  let plugin: PluginProcess | undefined;
  afterEach(async () => {
    if (!plugin) return;
    if (!plugin.exited) await plugin.kill9();
    await cleanupDir(plugin.dir);
    plugin = undefined;
  });

  it.skipIf(!isRoot)(
    '5-1 ready while the FUSE mount serves; FAILED_PRECONDITION naming it once it is gone',
    async () => {
      plugin = await PluginProcess.start();
      expect(await call<{ ready?: { value?: boolean } }>(plugin.clients.identity, 'Probe', {})).toEqual({
        ready: { value: true },
      });
      const mountpoint = join(plugin.stateDir, 'fuse');
      await execFileP('umount', ['-l', mountpoint]);
      const f = await failure(call(plugin.clients.identity, 'Probe', {}));
      expect(f).toMatchObject({ code: status.FAILED_PRECONDITION, errorCode: 'CSI_ERR_DATAPATH_DOWN' });
      expect(f.details).toContain(mountpoint);
    },
  );
});
