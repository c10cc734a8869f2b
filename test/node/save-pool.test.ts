// SPDX-License-Identifier: Apache-2.0
// A full save pool with real pods: the release upgraded so that a volume keeps at most 1 MiB of before-images
// (node.saveQuotaBytes) and the controller checks ready snapshots every 500 ms (controller.extraArgs), a pod
// overwriting more than that after a snapshot, and what the user sees: the VolumeSnapshot not ready with
// status.error, a Warning event, the node's metric, while the pod's data stays intact and the snapshot can be
// deleted. The release's values are restored after the file, also when it fails.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { realNodeUsable, useRealCluster } from '../support/real-node.js';
import { waitFor } from '../support/wait.js';
import { leftoversOnNode } from './lib/node-host.js';
import { contentOf, deleteVolumesAndSnapshots, eventsOf, get, volumeOf, waitEvent } from './lib/objects.js';
import { MiB, sumAt, writeRandomAt } from './lib/pod-io.js';
import { startPod, stopPod } from './lib/pods.js';
import { componentMetrics, metricValue, upgradeWith } from './lib/release.js';
import { apply, claim, snapshot, waitSnapshotReady } from './lib/workloads.js';

describe('a full save pool invalidates a snapshot, visibly (real pods, node.saveQuotaBytes 1 MiB)', () => {
  if (!realNodeUsable()) return;
  const c = useRealCluster('pool');
  let restore: (() => Promise<void>) | undefined;

  beforeAll(async () => {
    restore = await upgradeWith(c, [
      '--set',
      `node.saveQuotaBytes=${MiB}`,
      '--set-json',
      'controller.extraArgs=["--snapshot-health-interval=500ms"]',
    ]);
  }, 600_000);
  afterAll(async () => {
    await restore?.();
  }, 600_000);

  it('5-1 - the VolumeSnapshot turns not ready with a reason, an event and the node metric; the data stays; it can be deleted', async () => {
    apply(c, claim(c.namespace, 'small-pool', { volumeMode: 'Block' }));
    apply(c, claim(c.namespace, 'roomy', { volumeMode: 'Block' }));
    startPod(c, 'pool-writer', 'small-pool', { block: true });
    startPod(c, 'roomy-user', 'roomy', { block: true });
    const vol = volumeOf(c, 'small-pool');
    const roomy = volumeOf(c, 'roomy').volumeHandle;
    writeRandomAt(c, 'pool-writer', 0, 4 * MiB);
    snapshot(c, 'doomed', 'small-pool');
    // A snapshot whose pool never fills: its health checks go on and pace the "stays not ready" check below.
    snapshot(c, 'healthy', 'roomy');
    waitSnapshotReady(c, 'doomed');
    waitSnapshotReady(c, 'healthy');

    // 4 MiB of before-images into a 1 MiB pool: the engine invalidates the snapshot, the writes succeed.
    const now = writeRandomAt(c, 'pool-writer', 0, 4 * MiB);
    expect(sumAt(c, 'pool-writer', 0, 4 * MiB)).toBe(now);
    const invalid = await waitFor(
      'snapshot reported invalid',
      () => {
        const o = get(c, 'volumesnapshot', 'doomed');
        return o.status?.readyToUse === false && o.status.error?.message ? o : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 300 },
    );
    expect(invalid.status?.error?.message).toMatch(/invalidated it because the save pool of volume .* was full/);
    const content = contentOf(c, 'doomed');
    expect(content.metadata.annotations?.['loopsnap.dev/snapshot-invalidated']).toMatch(/^\d{4}-\d\d-\d\dT/);
    const event = await waitEvent(c, 'doomed', 'SnapshotInvalidated');
    expect(event.type).toBe('Warning');
    expect(metricValue(componentMetrics(c, 'node', vol.node), 'loopsnap_volume_invalid_snapshots')).toBe(1);

    // It stays not ready (never re-created or polled back to ready) while three more health rounds pass.
    const checks = () =>
      metricValue(componentMetrics(c, 'controller'), 'loopsnap_controller_csi_calls_total', {
        method: 'ListSnapshots',
      });
    const seen = checks();
    await waitFor('three more snapshot health checks', () => checks() >= seen + 3, {
      timeoutMs: 30_000,
      intervalMs: 300,
    });
    expect(get(c, 'volumesnapshot', 'doomed').status?.readyToUse).toBe(false);
    expect(eventsOf(c, 'doomed').filter((e) => e.reason === 'SnapshotInvalidated')).toHaveLength(1);
    expect(get(c, 'volumesnapshot', 'healthy').status?.readyToUse).toBe(true);

    c.kubectl(['-n', c.namespace, 'delete', 'volumesnapshot', 'doomed', '--wait=true', '--timeout=60s']);
    await waitFor(
      'content gone',
      () => c.tryKubectl(['get', 'volumesnapshotcontent', content.metadata.name]).code !== 0,
      { timeoutMs: 60_000, intervalMs: 300 },
    );
    expect(sumAt(c, 'pool-writer', 0, 4 * MiB)).toBe(now);
    await stopPod(c, 'pool-writer');
    await stopPod(c, 'roomy-user');
    await deleteVolumesAndSnapshots(c);
    expect(leftoversOnNode(c, vol.node, [vol.volumeHandle, roomy, content.status?.snapshotHandle])).toEqual([]);
  });
});
