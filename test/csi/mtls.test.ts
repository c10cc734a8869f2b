// SPDX-License-Identifier: Apache-2.0
// The TCP endpoint our controller dials: mutual TLS with certificates given by flags. A client with a
// certificate from the configured CA is served (Identity, Controller, SnapshotMetadata; the Node service
// stays on the unix socket); a client without a certificate, with one from another CA, or without TLS is
// refused. The plugin refuses to start plain TCP unless --insecure-tcp is given.
import { spawnSync } from 'node:child_process';
import { connect } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TLS_HANDSHAKE_TIMEOUT_MS } from '../../csi/src/grpc/tls.js';
import { createTestPki, type TestPki } from '../support/tls.js';
import {
  call,
  cleanupDir,
  closeClients,
  ensurePluginBuilt,
  isRoot,
  MiB,
  makeClients,
  PLUGIN_MAIN,
  PluginProcess,
} from './plugin.js';
import { capability } from './volumes.js';

describe('mutual TLS on the TCP endpoint (root: the plugin mounts FUSE)', () => {
  let pki: TestPki;
  let plugin: PluginProcess | undefined;
  let address = '';

  beforeAll(async () => {
    pki = await createTestPki();
    if (!isRoot) return;
    plugin = await PluginProcess.start({
      extraArgs: [
        '--tcp-endpoint',
        '127.0.0.1:0',
        '--tls-cert-file',
        pki.server.certPath,
        '--tls-key-file',
        pki.server.keyPath,
        '--tls-client-ca-file',
        pki.ca.certPath,
      ],
    });
    expect(plugin.tcpPort).toBeGreaterThan(0);
    address = `127.0.0.1:${plugin.tcpPort}`;
  });

  afterAll(async () => {
    if (plugin) {
      await plugin.stop();
      await cleanupDir(plugin.dir);
    }
    await pki.cleanup();
  });

  it.skipIf(!isRoot)(
    '3-1 a client with a certificate of the CA is served Identity, Controller and SnapshotMetadata',
    async () => {
      const c = makeClients(address, grpc.credentials.createSsl(pki.ca.cert, pki.client.key, pki.client.cert));
      try {
        const info = await call<{ name: string }>(c.identity, 'GetPluginInfo');
        expect(info.name).toBe('csi.loopsnap.dev');
        const vol = await call<{ volume: { volume_id: string } }>(c.controller, 'CreateVolume', {
          name: 'over-tls',
          capacity_range: { required_bytes: String(4 * MiB) },
          volume_capabilities: [capability('block')],
        });
        const snap = await call<{ snapshot: { snapshot_id: string } }>(c.controller, 'CreateSnapshot', {
          name: 'over-tls-snap',
          source_volume_id: vol.volume.volume_id,
        });
        const meta = await new Promise<unknown[]>((resolve, reject) => {
          const out: unknown[] = [];
          const s = (
            c.metadata as unknown as { GetMetadataAllocated(r: object): grpc.ClientReadableStream<unknown> }
          ).GetMetadataAllocated({ snapshot_id: snap.snapshot.snapshot_id });
          s.on('data', (m) => out.push(m));
          s.on('error', reject);
          s.on('end', () => resolve(out));
        });
        expect(meta).toHaveLength(1);
        // The Node service is for kubelet on the unix socket only.
        await expect(call(c.node, 'NodeGetInfo')).rejects.toMatchObject({ code: grpc.status.UNIMPLEMENTED });
        await call(c.controller, 'DeleteSnapshot', { snapshot_id: snap.snapshot.snapshot_id });
        await call(c.controller, 'DeleteVolume', { volume_id: vol.volume.volume_id });
      } finally {
        closeClients(c);
      }
    },
  );

  it.skipIf(!isRoot)('3-2 clients without a valid certificate are refused', async () => {
    const refused: Array<[string, grpc.ChannelCredentials]> = [
      ['no client certificate', grpc.credentials.createSsl(pki.ca.cert)],
      ['certificate of another CA', grpc.credentials.createSsl(pki.ca.cert, pki.rogueClient.key, pki.rogueClient.cert)],
      ['plain TCP', grpc.credentials.createInsecure()],
    ];
    for (const [why, creds] of refused) {
      const c = makeClients(address, creds);
      try {
        await expect(call(c.identity, 'GetPluginInfo'), why).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
        await expect(call(c.controller, 'ListVolumes'), why).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
      } finally {
        closeClients(c);
      }
    }
    expect(plugin!.exited).toBe(false);
  });

  it.skipIf(!isRoot)('3-4 300 idle TCP connections are closed after the TLS handshake timeout', async () => {
    const port = plugin!.tcpPort!;
    const started = Date.now();
    const closed = await Promise.all(
      Array.from(
        { length: 300 },
        () =>
          new Promise<number>((resolve, reject) => {
            const s = connect({ host: '127.0.0.1', port });
            s.on('error', reject);
            s.on('close', () => resolve(Date.now() - started));
            // A client that never says anything; give up after 4x the timeout.
            s.setTimeout(4 * TLS_HANDSHAKE_TIMEOUT_MS, () => reject(new Error('still open')));
          }),
      ),
    );
    expect(Math.max(...closed)).toBeLessThan(4 * TLS_HANDSHAKE_TIMEOUT_MS);
    expect(Math.min(...closed)).toBeGreaterThanOrEqual(TLS_HANDSHAKE_TIMEOUT_MS - 100);
    const c = makeClients(address, grpc.credentials.createSsl(pki.ca.cert, pki.client.key, pki.client.cert));
    try {
      expect((await call<{ name: string }>(c.identity, 'GetPluginInfo')).name).toBe('csi.loopsnap.dev');
    } finally {
      closeClients(c);
    }
  });

  it('3-3 plain TCP without --insecure-tcp is refused at start with a one-line reason', async () => {
    await ensurePluginBuilt();
    const r = spawnSync(process.execPath, [PLUGIN_MAIN, '--node-id', 'x', '--tcp-endpoint', '127.0.0.1:0'], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(r.status).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toContain('--tcp-endpoint needs --tls-cert-file');
  });
});
