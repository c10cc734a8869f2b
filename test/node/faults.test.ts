// SPDX-License-Identifier: Apache-2.0
// Faults with the release's own pods: the node plugin SIGKILLed in the middle of CreateSnapshot (the moment
// caught on the node itself, from the plugin's `creating` record), and the API server killed and started
// again. Each time the work completes exactly once after the kubelet restarts what died. No pod uses a volume
// of the plugin while it dies: every process of the container is killed, its keeper too, which ends the FUSE
// connection (ADR 0011); a rollout with pods writing is test/node/upgrade.test.ts.
import { describe, expect, it } from 'vitest';
import { realNodeUsable, RELEASE_NS, useRealCluster } from '../support/real-node.js';
import { waitFor } from '../support/wait.js';
import { restartApiServer } from './lib/api-server.js';
import { recordsOnNode, releaseContainer, stateDirOf, waitRestarted, watchOnNode } from './lib/node-host.js';
import { fromSnapshot, getJson, volumeOf } from './lib/objects.js';
import { fileSums, writeFiles } from './lib/pod-io.js';
import { startPod, stopPod } from './lib/pods.js';
import { waitReleaseReady } from './lib/release.js';
import { apply, claim, snapshot, waitSnapshotReady } from './lib/workloads.js';

/**
 * On the node: finds the processes of the container, says "watching", then polls the plugin's snapshot records
 * with shell builtins only (no fork between polls) and SIGKILLs them as soon as a record of `volumeId` is in
 * phase `creating`; prints the record's file, waits until every killed process is dead or a zombie and prints the
 * record's phase as they left it. Gives up after two minutes.
 */
function killWhileCreating(containerId: string, dir: string, volumeId: string): string {
  return `pids=''; for p in /proc/[0-9]*; do
  case "$(cat "$p/cgroup" 2>/dev/null)" in *${containerId}*) pids="$pids \${p#/proc/}";; esac
done
[ -n "$pids" ] || { echo "no process of container ${containerId}" >&2; exit 3; }
echo watching
n=0; deadline=$(( $(date +%s) + 120 ))
while :; do
  for f in '${dir}'/*.json; do
    creating=0; ours=0
    [ -f "$f" ] && while IFS= read -r l; do
      case "$l" in *'"phase": "creating"'*) creating=1;; *'"sourceVolumeId": "${volumeId}"'*) ours=1;; esac
    done < "$f"
    if [ $creating = 1 ] && [ $ours = 1 ]; then
      kill -9 $pids; echo "killed during $f"
      for p in $pids; do
        while read -r st < /proc/$p/stat; do case "$st" in *') Z '*|*') X '*) break;; esac; done 2>/dev/null
      done
      phase=gone; [ -f "$f" ] && while IFS= read -r l; do
        case "$l" in *'"phase": '*) phase="\${l#*'"phase": "'}"; phase="\${phase%%'"'*}";; esac
      done < "$f"
      echo "phase once dead: $phase"; exit 0
    fi
  done
  n=$((n+1)); if [ $n -ge 2000 ]; then n=0; [ "$(date +%s)" -lt $deadline ] || { echo "no creating record" >&2; exit 4; }; fi
done`;
}

describe('faults with the release`s pods: a node plugin killed mid-CreateSnapshot, the API server restarted', () => {
  if (!realNodeUsable()) return;
  const c = useRealCluster('faults');

  it('2-1 - node plugin killed during CreateSnapshot: ready after the kubelet restarts it, exactly one snapshot on the node', async () => {
    apply(c, claim(c.namespace, 'k1'));
    startPod(c, 'k1-user', 'k1');
    const sums = writeFiles(c, 'k1-user', [150_000]);
    await stopPod(c, 'k1-user');
    const { volumeHandle, node } = volumeOf(c, 'k1');
    const plugin = releaseContainer(c, 'node', node);
    const watch = watchOnNode(
      c,
      node,
      killWhileCreating(plugin.containerId, `${stateDirOf(c)}/csi/snapshots`, volumeHandle),
    );
    await watch.started;
    snapshot(c, 'k1-snap', 'k1');
    const output = await watch.result;
    const killed = /killed during .*\/(snap-[^/]+)\.json/.exec(output);
    expect(killed, 'the plugin killed while its record said creating').not.toBeNull();
    await waitRestarted(c, plugin);
    // The new process settled the interrupted record: completed from the engine, or dropped and cut anew.
    // Under the keeper the record may be settled by a server the keeper started in the killed container in
    // the moment before the kill reached the keeper too: that container's log counts as well.
    const previous = c.tryKubectl(['-n', RELEASE_NS, 'logs', '--previous', plugin.pod]).stdout;
    const recovered = (previous + c.kubectl(['-n', RELEASE_NS, 'logs', plugin.pod]))
      .split('\n')
      .filter((l) => l.includes('Recovered driver state after an unclean stop'))
      .map((l) => JSON.parse(l) as { snapshotsCompleted: string[]; snapshotsDropped: string[] });
    // SIGKILL lands asynchronously: the plugin may have written `ready` between the watcher's read and the
    // kill. The record as the dead processes left it says which case this run met.
    const phase = /phase once dead: (\S+)/.exec(output)?.[1];
    expect(['creating', 'ready'], 'the record once every process of the container is gone').toContain(phase);
    if (phase === 'creating') {
      expect(recovered.flatMap((r) => [...r.snapshotsCompleted, ...r.snapshotsDropped])).toContain(killed![1]);
    } else {
      expect(recovered.flatMap((r) => r.snapshotsDropped)).not.toContain(killed![1]);
    }
    waitSnapshotReady(c, 'k1-snap');
    const records = recordsOnNode(c, node, 'snapshots').filter((r) => r.sourceVolumeId === volumeHandle);
    expect(records.map((r) => r.phase)).toEqual(['ready']);
    apply(c, claim(c.namespace, 'k1-r', { dataSource: fromSnapshot('k1-snap') }));
    startPod(c, 'k1-reader', 'k1-r');
    expect(fileSums(c, 'k1-reader')).toEqual(sums);
    await stopPod(c, 'k1-reader');
  });

  it('2-4 - API server killed and started again: the release recovers (a controller pod leads again) and new snapshots become ready', async () => {
    apply(c, claim(c.namespace, 'k4'));
    startPod(c, 'k4-user', 'k4');
    const sums = writeFiles(c, 'k4-user', [64_000]);
    await stopPod(c, 'k4-user');
    await restartApiServer(c);
    const back = Date.now();
    // Components that lost their Leases meanwhile exit and are restarted by the kubelet.
    await waitReleaseReady(c);
    // Every node plugin renews its registry Lease again (a renewal that failed while the API server was away
    // once failed every later one, and the controller then saw the node as gone).
    for (const node of c.nodes) {
      await waitFor(
        `node plugin on ${node} renewing its Lease after the API server came back`,
        () => {
          const l = getJson<{ spec: { renewTime?: string } }>(c, ['-n', RELEASE_NS, 'lease', `loopsnap-node-${node}`]);
          return Date.parse(l.spec.renewTime ?? '') > back;
        },
        { timeoutMs: 60_000, intervalMs: 500 },
      );
    }
    snapshot(c, 'k4-snap', 'k4');
    waitSnapshotReady(c, 'k4-snap');
    apply(c, claim(c.namespace, 'k4-r', { dataSource: fromSnapshot('k4-snap') }));
    startPod(c, 'k4-reader', 'k4-r');
    expect(fileSums(c, 'k4-reader')).toEqual(sums);
    await stopPod(c, 'k4-reader');
  });
});
