// SPDX-License-Identifier: Apache-2.0
// The release's life with real pods: `helm upgrade` while a pod writes to a loopsnap volume (the pod's data
// and I/O go on, the upgraded controller works), then `helm uninstall` once the workloads are gone, which
// must leave nothing of the node plugin on the node: no FUSE mount, loop device, socket or registration.
// The chart is installed again at the end, so that files after this one find it.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { CHART_DIR, realNodeUsable, RELEASE, RELEASE_NS, useRealCluster } from '../support/real-node.js';
import { waitFor } from '../support/wait.js';
import {
  apply,
  claim,
  deletePod,
  exec,
  FILE_CHECK,
  FILE_WRITER,
  pod,
  snapshot,
  waitPodReady,
  waitSnapshotReady,
} from './lib/workloads.js';

describe('helm upgrade and uninstall with real pods', () => {
  if (!realNodeUsable()) return;
  const c = useRealCluster('chart');
  const fileCount = (p: string): number => Number(exec(c, p, 'wc -l < /data/w/sums').trim());
  const generation = (kind: string, name: string): string =>
    c.kubectl(['-n', RELEASE_NS, 'get', kind, name, '-o', 'jsonpath={.metadata.generation}']).trim();

  it('upgrades the release while a pod writes: its I/O goes on and the new controller takes snapshots', async () => {
    apply(c, claim(c.namespace, 'live'));
    apply(c, pod(c.namespace, 'live-writer', c.workloadImage, { claim: 'live', script: FILE_WRITER }));
    waitPodReady(c, 'live-writer');
    await waitFor('writing', () => fileCount('live-writer') >= 10, { timeoutMs: 60_000, intervalMs: 300 });
    const dsGeneration = generation('daemonset', 'loopsnap-node');
    const depGeneration = generation('deployment', 'loopsnap-controller');
    const before = fileCount('live-writer');
    c.installChart(['--set', 'controller.logLevel=debug']);
    c.kubectl(['-n', RELEASE_NS, 'rollout', 'status', 'deployment/loopsnap-controller', '--timeout=300s']);
    expect(generation('deployment', 'loopsnap-controller')).not.toBe(depGeneration);
    // The node plugin's pod template did not change, so its pods (and the volumes they serve) stay.
    expect(generation('daemonset', 'loopsnap-node')).toBe(dsGeneration);
    await waitFor('the writer to go on after the upgrade', () => fileCount('live-writer') > before + 10, {
      timeoutMs: 60_000,
      intervalMs: 300,
    });
    snapshot(c, 'after-upgrade', 'live');
    waitSnapshotReady(c, 'after-upgrade');
    expect(exec(c, 'live-writer', FILE_CHECK)).toMatch(/^OK \d+$/m);
  });

  it('uninstalls without leaving node plugin state on the node, then installs again', async () => {
    const v = c.values();
    const nodes = [...c.nodes];
    const dir = mkdtempSync(join(tmpdir(), 'loopsnap-chart-values-'));
    onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    const userValues = join(dir, 'values.yaml');
    writeFileSync(userValues, c.helm(['get', 'values', RELEASE, '-n', RELEASE_NS, '-o', 'yaml']));
    deletePod(c, 'live-writer');
    c.kubectl(['-n', c.namespace, 'delete', 'volumesnapshot', '--all', '--wait=true', '--timeout=180s']);
    c.kubectl(['-n', c.namespace, 'delete', 'pvc', 'live', '--wait=true', '--timeout=180s']);
    await waitFor(
      'the claim`s PV to be deleted',
      () => !c.kubectl(['get', 'pv', '-o', 'jsonpath={.items[*].spec.claimRef.namespace}']).includes(c.namespace),
      { timeoutMs: 180_000, intervalMs: 500 },
    );
    c.helm(['uninstall', RELEASE, '-n', RELEASE_NS, '--wait', '--timeout', '5m']);
    const kubelet = v.node.kubeletDir;
    const probe = `findmnt -rn -o TARGET | grep -F '${v.node.stateDir}/' || true
losetup -l -n -O BACK-FILE | grep -F '${v.node.stateDir}/' || true
ls -A '${kubelet}/plugins_registry' '${kubelet}/plugins/${v.driverName}' 2>/dev/null | grep -F .sock || true
ls '${v.node.stateDir}/volumes' 2>/dev/null || true`;
    // The inspector pods of this file still run (they are not part of the release).
    for (const node of nodes) {
      await waitFor(`node ${node} clean after helm uninstall`, () => c.onNode(node, probe).trim() === '', {
        timeoutMs: 120_000,
        intervalMs: 500,
      });
      await waitFor(
        `the kubelet of ${node} to deregister the driver`,
        () => !c.kubectl(['get', 'csinode', node, '-o', 'jsonpath={.spec.drivers[*].name}']).includes(v.driverName),
        { timeoutMs: 120_000, intervalMs: 500 },
      );
    }
    c.helm(['install', RELEASE, CHART_DIR, '-n', RELEASE_NS, '-f', userValues, '--wait', '--timeout', '10m']);
    c.kubectl(['-n', RELEASE_NS, 'rollout', 'status', 'daemonset/loopsnap-node', '--timeout=300s']);
  });
});
