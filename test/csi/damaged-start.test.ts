// SPDX-License-Identifier: Apache-2.0
// Issue 15, "the plugin always starts": a volume whose engine metadata is damaged (both checkpoints
// overwritten) while the plugin is down. The next start serves every healthy volume with its data, and the
// damaged one answers abnormal in its VolumeCondition (ControllerGetVolume and ListVolumes) with the reason,
// instead of the plugin crash-looping, and `kubectl describe node` shows a Warning event naming it (the plugin
// registered with the real test API server).
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { useCluster } from '../support/cluster.js';
import { waitFor } from '../support/wait.js';
import { call, cleanupDir, isRoot, MiB, PluginProcess } from './plugin.js';
import { createVolume, readAt, sha256, stageAndPublish, unpublishAndUnstage, writeDurable } from './volumes.js';

interface VolumeStatus {
  volume_condition?: { abnormal?: boolean; message?: string };
}

describe('a damaged volume does not stop the node plugin (root: loop devices, FUSE)', () => {
  const cluster = useCluster('damaged');
  let dir: string | undefined;
  const plugins: PluginProcess[] = [];
  afterEach(async () => {
    for (const p of plugins.splice(0)) if (!p.exited) await p.kill9();
    if (dir) await cleanupDir(dir);
    dir = undefined;
  });

  it.skipIf(!isRoot)(
    '15-2b both checkpoints of one volume destroyed: the plugin starts and serves the others',
    async () => {
      const first = await PluginProcess.start();
      plugins.push(first);
      dir = first.dir;
      const healthy = await createVolume(first, 'healthy', 'block', 16 * MiB);
      const damaged = await createVolume(first, 'damaged', 'block', 16 * MiB);
      const data = randomBytes(1 * MiB);
      for (const id of [healthy, damaged]) {
        const v = await stageAndPublish(first, id, 'block');
        await writeDurable(v.targetPath, 2 * MiB, data);
        await unpublishAndUnstage(first, v);
      }
      expect(await first.stop()).toBe(0);
      const meta = join(first.stateDir, 'volumes', damaged, 'meta');
      for (const f of ['checkpoint-0', 'checkpoint-1']) await writeFile(join(meta, f), randomBytes(64 * 1024));

      // A Node of the test API server for the plugin to report on (nothing runs on it).
      const nodeName = `damaged-${randomBytes(4).toString('hex')}`;
      cluster.kubectl(['create', '-f', '-'], {
        namespaced: false,
        input: JSON.stringify({ apiVersion: 'v1', kind: 'Node', metadata: { name: nodeName } }),
      });
      const second = await PluginProcess.start({
        dir,
        nodeId: nodeName,
        extraArgs: [
          '--kubeconfig',
          cluster.kubeconfigPath,
          '--registry-namespace',
          cluster.namespace,
          // Advertised in the registry Lease only; nothing connects to it here.
          '--advertise-endpoint',
          '127.0.0.1:1',
        ],
      }).catch(async (err: unknown) => {
        cluster.kubectl(['delete', 'node', nodeName, '--wait=false'], { namespaced: false });
        throw err;
      });
      plugins.push(second);
      try {
        // What an operator sees: the kubelet's event convention (uid = node name) makes kubectl find it.
        const described = await waitFor(
          'the Warning event on the Node',
          () => {
            const out = cluster.kubectl(['describe', 'node', nodeName], { namespaced: false });
            return out.includes('VolumeUnavailable') ? out : undefined;
          },
          { timeoutMs: 30_000, intervalMs: 250 },
        ).catch((err: Error) => {
          const warned = second.lines.filter((l) => l.level === 'warn' || l.level === 'error');
          throw new Error(
            `${err.message}; plugin warnings: ${JSON.stringify(warned.map((l) => [l.msg, (l.err as { message?: string } | undefined)?.message]))}`,
          );
        });
        expect(described).toMatch(new RegExp(`Warning +VolumeUnavailable .*volume ${damaged} could not be opened`));
        expect(described).not.toContain(healthy);
      } finally {
        cluster.kubectl(['delete', 'node', nodeName, '--wait=false'], { namespaced: false });
      }
      const ok = await call<{ status?: VolumeStatus }>(second.clients.controller, 'ControllerGetVolume', {
        volume_id: healthy,
      });
      expect(ok.status?.volume_condition?.abnormal ?? false).toBe(false);
      const v = await stageAndPublish(second, healthy, 'block');
      expect(sha256(await readAt(v.targetPath, 2 * MiB, 1 * MiB))).toBe(sha256(data));
      await unpublishAndUnstage(second, v);

      const bad = await call<{ status?: VolumeStatus }>(second.clients.controller, 'ControllerGetVolume', {
        volume_id: damaged,
      });
      expect(bad.status?.volume_condition?.abnormal).toBe(true);
      expect(bad.status?.volume_condition?.message).toMatch(/failed to open/);
      const listed = await call<{ entries: Array<{ volume: { volume_id: string }; status?: VolumeStatus }> }>(
        second.clients.controller,
        'ListVolumes',
        {},
      );
      const entry = listed.entries.find((e) => e.volume.volume_id === damaged);
      expect(entry?.status?.volume_condition?.abnormal).toBe(true);
      expect(second.logs('Failed to open an engine volume; leaving it alone')).toHaveLength(1);
    },
  );
});
