// SPDX-License-Identifier: Apache-2.0
// What an operator sees of the node plugin: one structured log line per CSI call (method, ids, duration,
// code; secrets never printed, even at trace level where request bodies are logged), Prometheus metrics on
// --http-endpoint (per-call counters and durations, engine gauges per volume) and /healthz, /readyz.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { call, cleanupDir, isRoot, MiB, PluginProcess } from './plugin.js';
import { createSnapshot, createVolume, stageAndPublish, unpublishAndUnstage, writeDurable } from './volumes.js';

describe('logs and metrics of the node plugin (root: the plugin mounts FUSE)', () => {
  let plugin: PluginProcess | undefined;
  let base = '';

  beforeAll(async () => {
    if (!isRoot) return;
    plugin = await PluginProcess.start({ extraArgs: ['--http-endpoint', '127.0.0.1:0', '--log-level', 'trace'] });
    const port = plugin.logs('Serving metrics and health endpoints')[0]?.port;
    expect(typeof port).toBe('number');
    base = `http://127.0.0.1:${String(port)}`;
  });

  afterAll(async () => {
    if (!plugin) return;
    await plugin.stop();
    await cleanupDir(plugin.dir);
  });

  it.skipIf(!isRoot)(
    '5-1 every call logs one line with method, ids, duration and code; secrets are redacted',
    async () => {
      const p = plugin!;
      const secret = 'hunter2-do-not-log';
      const vol = await createVolume(p, 'logged', 'block', 4 * MiB, { secrets: { password: secret } });
      await expect(
        call(p.clients.controller, 'GetSnapshot', { snapshot_id: 'snap-00000000000000000000000000000000' }),
      ).rejects.toMatchObject({ code: 5 });
      await new Promise((r) => setTimeout(r, 200));
      const served = p.logs('Served CSI call').filter((l) => l.method === 'CreateVolume');
      expect(served).toHaveLength(1);
      expect(served[0]).toMatchObject({ method: 'CreateVolume', name: 'logged', code: 'OK', level: 'info' });
      expect(typeof served[0]!.durationSeconds).toBe('number');
      const failed = p.logs('Failed CSI call').filter((l) => l.method === 'GetSnapshot');
      expect(failed).toHaveLength(1);
      expect(failed[0]).toMatchObject({
        snapshotId: 'snap-00000000000000000000000000000000',
        code: 'NOT_FOUND',
        errorCode: 'CSI_ERR_SNAPSHOT_NOT_FOUND',
        level: 'warn',
      });
      // The trace line carries the request body, with the secrets censored.
      const received = p.logs('Received CSI call').filter((l) => l.method === 'CreateVolume');
      expect(received).toHaveLength(1);
      expect(JSON.stringify(received[0])).toContain('[REDACTED]');
      expect(p.lines.some((l) => JSON.stringify(l).includes(secret))).toBe(false);
      await call(p.clients.controller, 'DeleteVolume', { volume_id: vol });
    },
  );

  it.skipIf(!isRoot)('5-2 /metrics has call counters and durations and per-volume engine gauges', async () => {
    const p = plugin!;
    const vol = await createVolume(p, 'metered', 'block', 8 * MiB);
    const v = await stageAndPublish(p, vol, 'block');
    await writeDurable(v.targetPath, 0, new Uint8Array(64 * 1024).fill(7));
    const snap = await createSnapshot(p, 'metered-snap', vol);
    await writeDurable(v.targetPath, 0, new Uint8Array(64 * 1024).fill(9));
    const res = await fetch(`${base}/metrics`);
    expect(res.status).toBe(200);
    const text = await res.text();
    expect(text).toMatch(/^loopsnap_csi_operations_total\{method="CreateSnapshot",code="OK"\} 1$/m);
    expect(text).toMatch(/^loopsnap_csi_operation_duration_seconds_count\{method="NodeStageVolume"\} 1$/m);
    const used = new RegExp(`^loopsnap_save_pool_used_bytes\\{volume_id="${vol}"\\} (\\d+)$`, 'm').exec(text);
    expect(Number(used?.[1])).toBeGreaterThanOrEqual(64 * 1024);
    expect(text).toMatch(new RegExp(`^loopsnap_volume_snapshots\\{volume_id="${vol}"\\} 1$`, 'm'));
    expect(Number(/^loopsnap_cow_copies_total (\d+)$/m.exec(text)?.[1])).toBeGreaterThanOrEqual(16);
    // The data path's own metrics are on the same registry.
    expect(text).toMatch(/^loopsnap_datapath_data_requests_total\{path="(fast|handoff)",op="write"\} [1-9]/m);
    await unpublishAndUnstage(p, v);
    await call(p.clients.controller, 'DeleteSnapshot', { snapshot_id: snap.snapshot_id });
    await call(p.clients.controller, 'DeleteVolume', { volume_id: vol });
    const after = await (await fetch(`${base}/metrics`)).text();
    expect(after).not.toContain(`volume_id="${vol}"`);
  });

  it.skipIf(!isRoot)('5-3 /healthz and /readyz answer 200 while serving', async () => {
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
    expect((await fetch(`${base}/readyz`)).status).toBe(200);
    expect((await fetch(`${base}/nope`)).status).toBe(404);
    const probe = await call<{ ready: { value: boolean } }>(plugin!.clients.identity, 'Probe');
    expect(probe.ready.value).toBe(true);
  });
});
