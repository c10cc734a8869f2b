// SPDX-License-Identifier: Apache-2.0
// Claim expansions the real kubelet finishes, or the controller refuses, beyond workloads.test.ts's online xfs
// growth and chart-e2e.test.ts's raw block one: ext4 grown while its pod runs (online only with
// CAP_SYS_RESOURCE, which root lacks on these machines: the kubelet's online NodeExpandVolume is then refused
// as FAILED_PRECONDITION and the next pod's mount finishes it, docs/volume-expansion.md), and a size no node
// can give (infeasible), recovered by a smaller request.
import { describe, expect, it } from 'vitest';
import { realNodeUsable, RELEASE_NS, useRealCluster } from '../support/real-node.js';
import { waitFor } from '../support/wait.js';
import { eventsOf, get, type Obj, resizeClaim, volumeOf } from './lib/objects.js';
import { fileSums, writeFiles } from './lib/pod-io.js';
import { startPod, stopPod } from './lib/pods.js';
import { releaseContainer } from './lib/node-host.js';
import { apply, claim, exec } from './lib/workloads.js';

const CAP_SYS_RESOURCE = 24n;

describe('claim expansions the kubelet finishes or the controller refuses, with real pods', () => {
  if (!realNodeUsable()) return;
  const c = useRealCluster('resize');
  type ClaimStatus = NonNullable<Obj['status']>;
  const status = (name: string): ClaimStatus => get(c, 'pvc', name).status ?? {};
  const conditionTypes = (st: ClaimStatus) => (st.conditions ?? []).map((k) => k.type).sort();
  const pvCapacity = (name: string) => get(c, 'pv', volumeOf(c, name).pvName, false).spec.capacity?.storage;
  const waitStatus = (what: string, name: string, ok: (st: ClaimStatus) => boolean, timeoutMs = 120_000) =>
    waitFor(
      `${name}: ${what}`,
      () => {
        const st = status(name);
        return ok(st) ? st : undefined;
      },
      { timeoutMs, intervalMs: 500 },
    );
  /** Waits for status.capacity `size`, then checks the rest of a finished expansion: allocated, nothing pending. */
  const expansionDone = async (name: string, size: string, timeoutMs = 120_000) => {
    const st = await waitStatus(`capacity ${size}`, name, (s) => s.capacity?.storage === size, timeoutMs);
    expect(st.allocatedResources?.storage).toBe(size);
    expect(st.allocatedResourceStatuses?.storage).toBeUndefined();
    expect(conditionTypes(st)).toEqual([]);
    expect(pvCapacity(name)).toBe(size);
  };
  const dfBytes = (pod: string) => 1024 * Number(exec(c, pod, "df -k /data | tail -n 1 | awk '{ print $2 }'").trim());
  /** Whether the node plugin's container may grow ext4 online (CAP_SYS_RESOURCE in its effective set). */
  const pluginHasCapSysResource = (node: string): boolean => {
    const k = releaseContainer(c, 'node', node);
    const eff = /^CapEff:\s*([0-9a-f]+)$/m.exec(
      c.kubectl(['-n', RELEASE_NS, 'exec', k.pod, '--', 'cat', '/proc/self/status']),
    );
    if (!eff) throw new Error('no CapEff line in the node plugin container`s /proc/self/status');
    return ((BigInt(`0x${eff[1]}`) >> CAP_SYS_RESOURCE) & 1n) === 1n;
  };

  it('1-9c - ext4 grown while its pod runs: online with CAP_SYS_RESOURCE, else the kubelet`s attempt is refused and the next pod`s mount finishes it', async () => {
    apply(c, claim(c.namespace, 'growfs'));
    startPod(c, 'growfs-user', 'growfs');
    const sums = writeFiles(c, 'growfs-user', [64_000, 9000]);
    const before = dfBytes('growfs-user');
    const { node } = volumeOf(c, 'growfs');
    resizeClaim(c, 'growfs', '128Mi');
    // The controller's part: the volume is 128Mi, the file system waits for the node.
    await waitFor('FileSystemResizeRequired on the claim', () =>
      eventsOf(c, 'growfs').some((e) => e.reason === 'FileSystemResizeRequired'),
    );
    expect(pvCapacity('growfs')).toBe('128Mi');
    expect(status('growfs').allocatedResources?.storage).toBe('128Mi');
    if (pluginHasCapSysResource(node)) {
      // The kubelet grows it at its next sync of the pod, which keeps running.
      await expansionDone('growfs', '128Mi', 300_000);
      expect(dfBytes('growfs-user')).toBeGreaterThan(before + 50 * 1024 * 1024);
      expect(fileSums(c, 'growfs-user')).toEqual(sums);
      return;
    }
    // The kubelet's online NodeExpandVolume (at its next sync of the pod, about a minute) is refused: it records
    // NodeResizeError on the claim and tries no more while the volume stays mounted.
    const refused = await waitStatus(
      'NodeResizeError from the kubelet',
      'growfs',
      (s) => conditionTypes(s).includes('NodeResizeError'),
      300_000,
    );
    expect(refused.conditions?.find((k) => k.type === 'NodeResizeError')?.message).toMatch(/CAP_SYS_RESOURCE/);
    expect(refused.conditions?.find((k) => k.type === 'FileSystemResizePending')?.message).toBe(
      'Waiting for user to (re-)start a pod to finish file system resize of volume on node.',
    );
    expect(refused.capacity?.storage).toBe('64Mi');
    expect(refused.allocatedResourceStatuses?.storage).toBe('NodeResizeInProgress');
    expect(dfBytes('growfs-user')).toBe(before);
    // Every pod of the claim gone, the next one's NodeStageVolume grows it and the kubelet finishes the resize.
    await stopPod(c, 'growfs-user');
    startPod(c, 'growfs-again', 'growfs');
    await expansionDone('growfs', '128Mi');
    expect(dfBytes('growfs-again')).toBeGreaterThan(before + 50 * 1024 * 1024);
    expect(fileSums(c, 'growfs-again')).toEqual(sums);
    expect(eventsOf(c, 'growfs-again').map((e) => e.reason)).toContain('FileSystemResizeSuccessful');
  });

  it('1-9d - an infeasible size: ControllerResizeInfeasible and ControllerResizeError; a smaller request recovers', async () => {
    apply(c, claim(c.namespace, 'toobig', { volumeMode: 'Block' }));
    startPod(c, 'toobig-user', 'toobig', { block: true });
    resizeClaim(c, 'toobig', '20Ti');
    const refused = await waitStatus(
      'allocatedResourceStatuses ControllerResizeInfeasible',
      'toobig',
      (s) => s.allocatedResourceStatuses?.storage === 'ControllerResizeInfeasible',
    );
    expect(refused.allocatedResources?.storage).toBe('20Ti');
    expect(refused.capacity?.storage).toBe('64Mi');
    expect(refused.conditions?.find((k) => k.type === 'ControllerResizeError')?.message).toMatch(
      /^failed to expand pvc with ControllerExpandVolume on node .* OUT_OF_RANGE: .*exceeds the maximum volume size/,
    );
    expect(pvCapacity('toobig')).toBe('64Mi');
    expect(eventsOf(c, 'toobig').find((e) => e.reason === 'VolumeResizeFailed')).toMatchObject({
      type: 'Warning',
      message: expect.stringMatching(/OUT_OF_RANGE/),
    });
    // KEP 1790 recovery: a smaller request (above status.capacity) replaces the refused one.
    resizeClaim(c, 'toobig', '96Mi');
    await expansionDone('toobig', '96Mi');
    expect(Number(exec(c, 'toobig-user', 'blockdev --getsize64 /dev/loopsnap-vol').trim())).toBe(96 * 1024 * 1024);
  });
});
