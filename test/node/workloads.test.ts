// SPDX-License-Identifier: Apache-2.0
// Real pods on a real kubelet: the chart installed from the image built here, workloads that write while
// their volumes are snapshotted, restored, cloned, restored in place and grown, with the kubelet calling
// NodeStage/NodePublish/NodeExpand/NodeUnpublish/NodeUnstage itself (test/support/real-node.ts: this
// machine's node, or the cluster of $KUBECONFIG with LOOPSNAP_E2E_TARGET=cluster).
import { createHash } from 'node:crypto';
import { describe, expect, it, onTestFinished } from 'vitest';
import { realNodeUsable, RELEASE_NS, useRealCluster } from '../support/real-node.js';
import { waitFor } from '../support/wait.js';
import {
  apply,
  BLOCK_DUMP,
  BLOCK_WRITER,
  checkBlockDump,
  claim,
  deletePod,
  exec,
  FILE_CHECK,
  FILE_WRITER,
  pluginLog,
  pod,
  pvOf,
  snapshot,
  waitPodReady,
  waitSnapshotReady,
} from './lib/workloads.js';

// Root is needed for the local target (kubelet, containerd, mounts); without it the file fails, counted.
describe('real pods on a real kubelet', () => {
  if (!realNodeUsable()) return;
  const c = useRealCluster('pods');
  const fileCount = (p: string): number => Number(exec(c, p, 'wc -l < /data/w/sums 2>/dev/null || echo 0').trim());

  it('runs the chart from the image built here: controller and node plugin pods Running, plugin registered', () => {
    const images = c
      .kubectl([
        '-n',
        RELEASE_NS,
        'get',
        'pods',
        '-o',
        'jsonpath={range .items[*]}{.spec.containers[*].image}{"\\n"}{end}',
      ])
      .trim()
      .split('\n');
    const ref = c.values() as unknown as { image: { repository: string; tag: string } };
    expect(images.length).toBeGreaterThanOrEqual(2);
    for (const image of images) expect(image).toBe(`${ref.image.repository}:${ref.image.tag}`);
    for (const node of c.nodes) {
      expect(c.kubectl(['get', 'csinode', node, '-o', 'jsonpath={.spec.drivers[*].name}'])).toContain(
        'csi.loopsnap.dev',
      );
    }
  });

  it('a pod writes checksummed files and a raw block pod writes a pattern, both on provisioned claims', async () => {
    apply(c, claim(c.namespace, 'fs'));
    apply(c, claim(c.namespace, 'raw', { volumeMode: 'Block' }));
    apply(c, pod(c.namespace, 'fs-writer', c.workloadImage, { claim: 'fs', script: FILE_WRITER }));
    apply(c, pod(c.namespace, 'raw-writer', c.workloadImage, { claim: 'raw', block: true, script: BLOCK_WRITER }));
    waitPodReady(c, 'fs-writer');
    waitPodReady(c, 'raw-writer');
    await waitFor('20 files written', () => fileCount('fs-writer') >= 20, { timeoutMs: 120_000, intervalMs: 500 });
    await waitFor('generation 1 of the block pattern', () => exec(c, 'raw-writer', 'ls /tmp').includes('gen1'), {
      timeoutMs: 180_000,
      intervalMs: 500,
    });
    expect(exec(c, 'fs-writer', 'mount | grep " /data "')).toMatch(/ext4/);
    expect(exec(c, 'raw-writer', 'ls -l /dev/loopsnap-vol')).toMatch(/^b/);
  });

  it('snapshots both while they write (the file system frozen for the cut) and restores each to a new claim', () => {
    snapshot(c, 'fs-snap', 'fs');
    snapshot(c, 'raw-snap', 'raw');
    waitSnapshotReady(c, 'fs-snap');
    waitSnapshotReady(c, 'raw-snap');
    // The kubelet stages a volume at plugins/kubernetes.io/csi/<driver>/<sha256 of the handle>/globalmount.
    const handleHash = createHash('sha256').update(pvOf(c, 'fs').volumeHandle).digest('hex');
    const thawed = pluginLog(c)
      .filter((l) => l.msg === 'Thawed file system after cut')
      .map((l) => String(l.path));
    expect(thawed.some((p) => p.endsWith(`/${handleHash}/globalmount`))).toBe(true);

    const snap = { kind: 'VolumeSnapshot', name: '', apiGroup: 'snapshot.storage.k8s.io' };
    apply(c, claim(c.namespace, 'fs-restored', { dataSource: { ...snap, name: 'fs-snap' } }));
    apply(c, claim(c.namespace, 'raw-restored', { volumeMode: 'Block', dataSource: { ...snap, name: 'raw-snap' } }));
    apply(c, pod(c.namespace, 'fs-reader', c.workloadImage, { claim: 'fs-restored', script: 'sleep 86400' }));
    apply(
      c,
      pod(c.namespace, 'raw-reader', c.workloadImage, { claim: 'raw-restored', block: true, script: 'sleep 86400' }),
    );
    waitPodReady(c, 'fs-reader');
    waitPodReady(c, 'raw-reader');
    const restored = exec(c, 'fs-reader', FILE_CHECK);
    expect(restored).toMatch(/^OK \d+$/m);
    const n = Number(/^OK (\d+)$/m.exec(restored)?.[1]);
    expect(n).toBeGreaterThanOrEqual(20);
    // The source kept writing after the cut: the restored claim is the snapshot, not the live volume.
    expect(fileCount('fs-writer')).toBeGreaterThan(n);
    const { generations } = checkBlockDump(exec(c, 'raw-reader', BLOCK_DUMP));
    expect(Math.min(...generations)).toBeGreaterThanOrEqual(1);
  });

  it('clones a claim in use: the clone checks, and writes to it leave the source alone', () => {
    apply(c, claim(c.namespace, 'fs-clone', { dataSource: { kind: 'PersistentVolumeClaim', name: 'fs' } }));
    apply(c, pod(c.namespace, 'clone-user', c.workloadImage, { claim: 'fs-clone', script: 'sleep 86400' }));
    waitPodReady(c, 'clone-user');
    expect(exec(c, 'clone-user', FILE_CHECK)).toMatch(/^OK \d+$/m);
    exec(c, 'clone-user', 'echo clone-only > /data/clone-marker && sync');
    expect(exec(c, 'fs-writer', 'cat /data/clone-marker 2>/dev/null || echo absent').trim()).toBe('absent');
  });

  it('restores a claim in place after its pod is deleted: a new pod sees the snapshot', async () => {
    const atCut = exec(c, 'fs-reader', 'cat /data/w/sums');
    deletePod(c, 'fs-writer');
    apply(c, {
      apiVersion: 'loopsnap.dev/v1alpha1',
      kind: 'VolumeRestore',
      metadata: { name: 'fs-back', namespace: c.namespace },
      spec: { pvcName: 'fs', volumeSnapshotName: 'fs-snap' },
    });
    await waitFor(
      'VolumeRestore fs-back Completed',
      () => {
        const phase = c.kubectl([
          '-n',
          c.namespace,
          'get',
          'volumerestore',
          'fs-back',
          '-o',
          'jsonpath={.status.phase}',
        ]);
        if (phase === 'Failed') throw new Error('VolumeRestore failed');
        return phase === 'Completed';
      },
      { timeoutMs: 300_000, intervalMs: 500 },
    );
    apply(c, pod(c.namespace, 'fs-after', c.workloadImage, { claim: 'fs', script: 'sleep 86400' }));
    waitPodReady(c, 'fs-after');
    expect(exec(c, 'fs-after', 'cat /data/w/sums')).toBe(atCut);
    expect(exec(c, 'fs-after', FILE_CHECK)).toMatch(/^OK \d+$/m);
  });

  // ext4 grows online only with CAP_SYS_RESOURCE, which root lacks on these machines (docs/volume-expansion.md);
  // xfs does not need it, so the online case runs on xfs (mkfs.xfs wants at least 300 MiB).
  it('grows a claim while its pod runs: the kubelet calls NodeExpandVolume and the pod sees the bigger xfs', async () => {
    apply(c, {
      apiVersion: 'storage.k8s.io/v1',
      kind: 'StorageClass',
      metadata: { name: `${c.namespace}-xfs` },
      provisioner: 'csi.loopsnap.dev',
      volumeBindingMode: 'WaitForFirstConsumer',
      allowVolumeExpansion: true,
      parameters: { 'csi.storage.k8s.io/fstype': 'xfs' },
    });
    onTestFinished(() => void c.tryKubectl(['delete', 'storageclass', `${c.namespace}-xfs`]));
    apply(c, claim(c.namespace, 'grow', { storage: '320Mi', storageClassName: `${c.namespace}-xfs` }));
    apply(c, pod(c.namespace, 'grow-writer', c.workloadImage, { claim: 'grow', script: FILE_WRITER }));
    waitPodReady(c, 'grow-writer');
    await waitFor('grow-writer writing', () => fileCount('grow-writer') >= 10, { timeoutMs: 60_000, intervalMs: 300 });
    const uid = c.kubectl(['-n', c.namespace, 'get', 'pod', 'grow-writer', '-o', 'jsonpath={.metadata.uid}']);
    const size = (): number => Number(exec(c, 'grow-writer', "df -k /data | tail -n 1 | awk '{ print $2 }'").trim());
    const before = size();
    c.kubectl([
      '-n',
      c.namespace,
      'patch',
      'pvc',
      'grow',
      '--type=merge',
      '-p',
      '{"spec":{"resources":{"requests":{"storage":"480Mi"}}}}',
    ]);
    // The kubelet notices the grown PV when it syncs the pod again (about once a minute).
    await waitFor(
      'the claim`s status.capacity 480Mi, set by the kubelet after NodeExpandVolume',
      () =>
        c.kubectl(['-n', c.namespace, 'get', 'pvc', 'grow', '-o', 'jsonpath={.status.capacity.storage}']) === '480Mi',
      { timeoutMs: 300_000, intervalMs: 1000 },
    );
    const pvc = JSON.parse(c.kubectl(['-n', c.namespace, 'get', 'pvc', 'grow', '-o', 'json'])) as {
      status: { conditions?: Array<{ type: string }>; allocatedResourceStatuses?: Record<string, string> };
    };
    expect(pvc.status.conditions ?? []).toEqual([]);
    expect(pvc.status.allocatedResourceStatuses?.storage).toBeUndefined();
    expect(size()).toBeGreaterThan(before + 100 * 1024);
    // The same pod, never restarted, still writing, every file intact.
    expect(c.kubectl(['-n', c.namespace, 'get', 'pod', 'grow-writer', '-o', 'jsonpath={.metadata.uid}'])).toBe(uid);
    expect(
      c.kubectl([
        '-n',
        c.namespace,
        'get',
        'pod',
        'grow-writer',
        '-o',
        'jsonpath={.status.containerStatuses[0].restartCount}',
      ]),
    ).toBe('0');
    // 350 MiB fit only in the grown file system (320Mi before), and read back intact.
    const big = exec(c, 'grow-writer', 'head -c 367001600 /dev/urandom | tee /data/big | sha256sum; sync');
    expect(exec(c, 'grow-writer', 'sha256sum < /data/big')).toBe(big);
    expect(exec(c, 'grow-writer', FILE_CHECK)).toMatch(/^OK \d+$/m);
    const events = c.kubectl([
      '-n',
      c.namespace,
      'get',
      'events',
      '--field-selector',
      'involvedObject.name=grow-writer',
    ]);
    expect(events).toMatch(/FileSystemResizeSuccessful/);
  });

  it('gives the volume to the pod`s fsGroup (CSIDriver fsGroupPolicy File)', () => {
    apply(c, claim(c.namespace, 'grouped'));
    apply(
      c,
      pod(c.namespace, 'grouped-user', c.workloadImage, {
        claim: 'grouped',
        script: 'sleep 86400',
        securityContext: { runAsUser: 1000, runAsGroup: 3000, fsGroup: 2000 },
      }),
    );
    waitPodReady(c, 'grouped-user');
    expect(exec(c, 'grouped-user', 'stat -c %g /data').trim()).toBe('2000');
    expect(exec(c, 'grouped-user', 'id -u; touch /data/mine && stat -c %u:%g /data/mine').trim().split('\n')).toEqual([
      '1000',
      '1000:2000',
    ]);
  });

  it('leaves no mount, loop device or FUSE view behind when a pod is deleted while it writes', async () => {
    apply(c, claim(c.namespace, 'busy'));
    apply(c, pod(c.namespace, 'busy-writer', c.workloadImage, { claim: 'busy', script: FILE_WRITER }));
    waitPodReady(c, 'busy-writer');
    await waitFor('busy-writer writing', () => fileCount('busy-writer') >= 5, { timeoutMs: 60_000, intervalMs: 300 });
    const { pvName, volumeHandle } = pvOf(c, 'busy');
    const node = c.kubectl(['-n', c.namespace, 'get', 'pod', 'busy-writer', '-o', 'jsonpath={.spec.nodeName}']).trim();
    const stateDir = c.values().node.stateDir;
    const probe = `findmnt -rn -o TARGET | grep -F '${pvName}' || true
losetup -l -n -O BACK-FILE | grep -F '${volumeHandle}' || true
ls '${stateDir}/fuse' 2>/dev/null | grep -F '${volumeHandle}' || true`;
    expect(c.onNode(node, probe).trim()).not.toBe('');
    deletePod(c, 'busy-writer', ['--grace-period=1']);
    await waitFor(
      'no mount, loop device or view of the deleted pod`s volume',
      () => c.onNode(node, probe).trim() === '',
      {
        timeoutMs: 120_000,
        intervalMs: 500,
      },
    );
  });
});
