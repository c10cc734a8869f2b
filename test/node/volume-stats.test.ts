// SPDX-License-Identifier: Apache-2.0
// What the kubelet asks of a running volume on its own: NodeGetVolumeStats (GET_VOLUME_STATS), aggregated
// into the kubelet's stats summary (and kubelet_volume_stats_* metrics) for every PVC a pod mounts. The
// kubelet stand-in never called it.
import { describe, expect, it } from 'vitest';
import { realNodeUsable, useRealCluster } from '../support/real-node.js';
import { waitFor } from '../support/wait.js';
import { apply, claim, exec, pod, waitPodReady } from './lib/workloads.js';

interface Summary {
  pods: Array<{
    podRef: { name: string; namespace: string };
    volume?: Array<{
      name: string;
      pvcRef?: { name: string; namespace: string };
      capacityBytes?: number;
      usedBytes?: number;
      availableBytes?: number;
      inodes?: number;
    }>;
  }>;
}

describe('volume statistics the kubelet collects (NodeGetVolumeStats)', () => {
  if (!realNodeUsable()) return;
  const c = useRealCluster('stats');

  it("reports the mounted claim's capacity and use in the kubelet's stats summary", async () => {
    apply(c, claim(c.namespace, 'measured'));
    apply(c, pod(c.namespace, 'filler', c.workloadImage, { claim: 'measured', script: 'exec sleep 86400' }));
    waitPodReady(c, 'filler');
    exec(c, 'filler', 'head -c 8388608 /dev/urandom > /data/eight-mib && sync');
    const node = c.kubectl(['-n', c.namespace, 'get', 'pod', 'filler', '-o', 'jsonpath={.spec.nodeName}']).trim();
    const df = exec(c, 'filler', "df -k /data | tail -n 1 | awk '{ print $2 * 1024, $3 * 1024 }'").trim().split(' ');
    // The kubelet refreshes volume stats about once a minute (volumeStatsAggPeriod).
    const stats = await waitFor(
      'the claim in the kubelet stats summary with at least 8 MiB used',
      () => {
        const s = JSON.parse(c.kubectl(['get', '--raw', `/api/v1/nodes/${node}/proxy/stats/summary`])) as Summary;
        const v = s.pods
          .find((p) => p.podRef.name === 'filler' && p.podRef.namespace === c.namespace)
          ?.volume?.find((x) => x.pvcRef?.name === 'measured');
        return v && (v.usedBytes ?? 0) >= 8 << 20 ? v : undefined;
      },
      { timeoutMs: 240_000, intervalMs: 2000 },
    );
    expect(stats.capacityBytes).toBe(Number(df[0]));
    expect(stats.usedBytes).toBeGreaterThanOrEqual(8 << 20);
    expect(stats.usedBytes).toBeLessThanOrEqual(Number(df[1]) + (1 << 20));
    expect(stats.inodes).toBeGreaterThan(0);
  });
});
