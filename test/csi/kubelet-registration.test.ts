// SPDX-License-Identifier: Apache-2.0
// The compiled node plugin with --kubelet-registration-socket, driven the way the kubelet's plugin watcher
// drives it: GetInfo on the registration socket, NodeGetInfo on the endpoint that names, then
// NotifyRegistrationStatus; SIGTERM removes the socket (the kubelet deregisters the driver on that).
import { mkdtemp, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, describe, expect, it } from 'vitest';
import { csiService } from '../../common/src/csi-proto.js';
import { type PluginInfoMessage, registrationService } from '../../csi/src/kubelet-registration/proto.js';
import { call, cleanupDir, isRoot, PluginProcess } from './plugin.js';

describe('kubelet registration served by the node plugin (root: the plugin mounts FUSE)', () => {
  let dir = '';
  let plugin: PluginProcess | undefined;
  const clients: grpc.Client[] = [];

  afterAll(async () => {
    for (const c of clients) c.close();
    if (plugin && !plugin.exited) await plugin.stop();
    if (dir) await cleanupDir(dir);
  });

  it.skipIf(!isRoot)(
    '9-1 GetInfo names the CSI socket, which answers NodeGetInfo; the reported status is exported; SIGTERM removes the socket',
    async () => {
      dir = await mkdtemp(join(tmpdir(), 'loopsnap-kubelet-reg-'));
      const registrationSocket = join(dir, 'plugins_registry', 'csi.loopsnap.dev-reg.sock');
      plugin = await PluginProcess.start({
        dir,
        nodeId: 'node-a',
        extraArgs: [
          '--http-endpoint=127.0.0.1:0',
          `--kubelet-registration-socket=${registrationSocket}`,
          `--kubelet-registration-path=${join(dir, 'csi.sock')}`,
        ],
      });
      expect((await stat(registrationSocket)).isSocket()).toBe(true);
      const port = plugin.logs('Serving metrics and health endpoints')[0]?.port;
      expect(typeof port).toBe('number');
      const gauge = async (): Promise<string | undefined> => {
        const text = await (await fetch(`http://127.0.0.1:${String(port)}/metrics`)).text();
        return /^loopsnap_kubelet_registration_registered (\d+)$/m.exec(text)?.[1];
      };
      expect(await gauge()).toBe('0');

      const registration = new (registrationService())(
        `unix://${registrationSocket}`,
        grpc.credentials.createInsecure(),
      );
      clients.push(registration);
      const info = await call<PluginInfoMessage>(registration, 'GetInfo');
      expect(info).toEqual({
        type: 'CSIPlugin',
        name: 'csi.loopsnap.dev',
        endpoint: join(dir, 'csi.sock'),
        supported_versions: ['1.0.0'],
      });
      // The kubelet dials the endpoint as a plain unix socket path.
      const node = new (csiService('Node'))(`unix://${info.endpoint}`, grpc.credentials.createInsecure());
      clients.push(node);
      expect(await call<{ node_id: string }>(node, 'NodeGetInfo')).toMatchObject({ node_id: 'node-a' });
      await call(registration, 'NotifyRegistrationStatus', { plugin_registered: true, error: '' });
      expect(await gauge()).toBe('1');

      expect(await plugin.stop()).toBe(0);
      await expect(stat(registrationSocket)).rejects.toMatchObject({ code: 'ENOENT' });
    },
  );
});
