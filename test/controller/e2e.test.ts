// SPDX-License-Identifier: Apache-2.0
// End to end with kubectl and the YAML in examples/: two real node plugins on this machine as two nodes
// (real engine, FUSE, loop devices, ext4), the controller as a leader-elected child process, and the
// kubelet stand-in writing and reading checksummed data through NodeStage/NodePublish.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { csiCall as call, isRoot } from '../support/node-plugin.js';
import { checksumFiles, readAt, sha256, writeDurable, writeFiles } from '../csi/volumes.js';
import { startBlockWriter, startFileWriter } from '../csi/writer.js';
import { canGrowExt4Online } from '../../csi/src/driver/fs-grow.js';
import { sh } from '../support/datapath-host.js';
import { useCluster } from '../support/cluster.js';
import { EXAMPLES, LoopsnapEnv } from '../support/loopsnap-env.js';
import { waitFor } from '../support/wait.js';

type Obj = {
  metadata: {
    name: string;
    uid: string;
    finalizers?: string[];
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
  spec: Record<string, unknown> & { volumeName?: string };
  status?: Record<string, unknown> & {
    phase?: string;
    readyToUse?: boolean;
    boundVolumeSnapshotContentName?: string;
    snapshotHandle?: string;
  };
};

const hasCapSysResource = isRoot && (await canGrowExt4Online());

describe.skipIf(!isRoot)('end to end with examples/ (root: two node plugins, loop devices, FUSE)', () => {
  const cluster = useCluster('ctl-e2e');
  let env: LoopsnapEnv;
  let ns = '';
  const get = (path: string) => env.rest.get<Obj>(path).catch(() => undefined);
  const pvc = (name: string) => get(`/api/v1/namespaces/${ns}/persistentvolumeclaims/${name}`);
  const vs = (name: string) => get(`/apis/snapshot.storage.k8s.io/v1/namespaces/${ns}/volumesnapshots/${name}`);
  const bound = (name: string, timeoutMs = 60_000) =>
    waitFor(`PVC ${name} bound`, async () => ((await pvc(name))?.status?.phase === 'Bound' ? pvc(name) : undefined), {
      timeoutMs,
    });
  const ready = (name: string, timeoutMs = 60_000) =>
    waitFor(
      `VolumeSnapshot ${name} ready`,
      async () => ((await vs(name))?.status?.readyToUse === true ? vs(name) : undefined),
      { timeoutMs },
    );
  const apply = (file: string) => env.kubectl(['apply', '-f', join(EXAMPLES, file)]);
  const applyYaml = (yaml: string) => env.kubectl(['apply', '-f', '-'], yaml);
  const snapshotYaml = (name: string, claim: string, cls: string) =>
    `apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\nmetadata: {name: ${name}}\nspec: {volumeSnapshotClassName: ${cls}, source: {persistentVolumeClaimName: ${claim}}}\n`;
  const restoreYaml = (name: string, snap: string, size = '64Mi') =>
    `apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: ${name}}\nspec: {storageClassName: loopsnap, accessModes: [ReadWriteOnce], resources: {requests: {storage: ${size}}}, dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: ${snap}}}\n`;
  const listOnNode = async (nodeId: string, req: object) =>
    (
      await call<{
        entries: Array<{ snapshot: { snapshot_id: string; ready_to_use: boolean; source_volume_id: string } }>;
      }>(env.plugins.get(nodeId)!.clients.controller, 'ListSnapshots', req)
    ).entries;
  const pvcYaml = (name: string, sc = 'loopsnap', size = '64Mi', mode = 'Filesystem') =>
    `apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: ${name}}\nspec: {storageClassName: ${sc}, volumeMode: ${mode}, accessModes: [ReadWriteOnce], resources: {requests: {storage: ${size}}}}\n`;
  const retainClassYaml =
    'apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotClass\nmetadata: {name: loopsnap-retain-test}\ndriver: csi.loopsnap.dev\ndeletionPolicy: Retain\nparameters: {method: save-volume}\n';

  beforeAll(async () => {
    env = await LoopsnapEnv.start(cluster, { nodes: ['node-a', 'node-b'] });
    ns = env.namespace;
  });
  afterAll(async () => {
    await env?.stop();
  });

  it('1-1 - PVC -> bound -> data written -> VolumeSnapshot ready -> PVC restored from it has the same data', async () => {
    apply('pvc.yaml');
    const data = await bound('data');
    const pv = await get(`/api/v1/persistentvolumes/${data.spec.volumeName}`);
    expect(pv?.metadata.annotations?.['pv.kubernetes.io/provisioned-by']).toBe('csi.loopsnap.dev');
    const m = await env.kubelet.mount(ns, 'data');
    const sums = await writeFiles(m.targetPath, [1 << 20, 4096, 300_000]);
    apply('snapshot.yaml');
    const snap = await ready('data-snap');
    expect(snap.status?.restoreSize).toBe('64Mi');
    // Changes after the cut are not in the snapshot.
    await writeFiles(m.targetPath, [1 << 20]);
    apply('restore-pvc.yaml');
    const restored = await bound('data-restore');
    const rm = await env.kubelet.mount(ns, 'data-restore');
    expect(rm.nodeId).toBe(m.nodeId);
    expect(await checksumFiles(rm.targetPath, Object.keys(sums))).toEqual(sums);
    expect(restored.spec.volumeName).not.toBe(data.spec.volumeName);
  });

  it('1-2 - PVC -> PVC clone: same data, same node, independent afterwards', async () => {
    const src = await env.kubelet.mount(ns, 'data');
    const sums = await writeFiles(src.targetPath, [200_000, 8192]);
    apply('clone-pvc.yaml');
    await bound('data-clone');
    const c = await env.kubelet.mount(ns, 'data-clone');
    expect(c.nodeId).toBe(src.nodeId);
    expect(await checksumFiles(c.targetPath, Object.keys(sums))).toEqual(sums);
    const more = await writeFiles(c.targetPath, [4096]);
    expect(await checksumFiles(src.targetPath, Object.keys(sums))).toEqual(sums);
    expect(Object.keys(more)).toHaveLength(1);
  });

  it.each([['loopsnap-meta-bitmap'], ['loopsnap-save-volume']])(
    '1-3 - snapshot method of class %s: ready at the cut, on the source node, restorable',
    async (cls) => {
      const name = `m-${cls.replace('loopsnap-', '')}`;
      const m = await env.kubelet.mount(ns, 'data');
      const sums = await writeFiles(m.targetPath, [300_000]);
      applyYaml(snapshotYaml(name, 'data', cls));
      const snap = await ready(name);
      const content = await get(
        `/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents/${snap.status?.boundVolumeSnapshotContentName}`,
      );
      expect(content?.spec.volumeSnapshotClassName).toBe(cls);
      expect(content?.metadata.labels?.['snapshot.storage.kubernetes.io/managed-by']).toBe(m.nodeId);
      expect(
        content?.metadata.annotations?.['snapshot.storage.kubernetes.io/volumesnapshot-being-created'],
      ).toBeUndefined();
      const list = await listOnNode(m.nodeId, { snapshot_id: content?.status?.snapshotHandle });
      expect(list.map((e) => e.snapshot.ready_to_use)).toEqual([true]);
      applyYaml(restoreYaml(`${name}-r`, name));
      await bound(`${name}-r`);
      const r = await env.kubelet.mount(ns, `${name}-r`);
      expect(await checksumFiles(r.targetPath, Object.keys(sums))).toEqual(sums);
      await env.kubelet.unmount(ns, `${name}-r`);
    },
  );

  it('1-3c - clone method: not ready while the background copy runs, ready when it ends, restorable after the source PVC is gone', async () => {
    applyYaml(pvcYaml('src3c'));
    await bound('src3c');
    const m = await env.kubelet.mount(ns, 'src3c');
    const sums = await writeFiles(m.targetPath, [2 << 20, 300_000]);
    applyYaml(snapshotYaml('m-clone', 'src3c', 'loopsnap-clone'));
    const snap = await ready('m-clone', 120_000);
    expect(snap.status?.restoreSize).toBe('64Mi');
    const content = await get(
      `/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents/${snap.status?.boundVolumeSnapshotContentName}`,
    );
    const list = await listOnNode(m.nodeId, { snapshot_id: content?.status?.snapshotHandle });
    expect(list.map((e) => e.snapshot.ready_to_use)).toEqual([true]);
    // The image is independent of its source: the source PVC goes, the snapshot stays restorable.
    await env.kubelet.unmount(ns, 'src3c');
    env.kubectl(['delete', 'pvc', 'src3c', '--wait=true']);
    applyYaml(restoreYaml('m-clone-r', 'm-clone'));
    await bound('m-clone-r');
    const r = await env.kubelet.mount(ns, 'm-clone-r');
    expect(r.nodeId).toBe(m.nodeId);
    expect(await checksumFiles(r.targetPath, Object.keys(sums))).toEqual(sums);
    await env.kubelet.unmount(ns, 'm-clone-r');
  });

  it('1-4 - Retain keeps the snapshot on the node; it can be imported as a pre-provisioned snapshot and restored', async () => {
    applyYaml(retainClassYaml);
    const m = await env.kubelet.mount(ns, 'data');
    const sums = await writeFiles(m.targetPath, [100_000, 5000]);
    applyYaml(snapshotYaml('kept', 'data', 'loopsnap-retain-test'));
    const snap = await ready('kept');
    const contentName = snap.status?.boundVolumeSnapshotContentName as string;
    const content = await get(`/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents/${contentName}`);
    const handle = content?.status?.snapshotHandle as string;
    env.kubectl(['delete', 'volumesnapshot', 'kept', '--wait=true']);
    // The content and the snapshot on the node stay.
    const kept = await get(`/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents/${contentName}`);
    expect(kept?.metadata.uid).toBe(content?.metadata.uid);
    env.kubectl(['delete', 'volumesnapshotcontent', contentName, '--wait=true'], undefined, false);
    const onNode = await call<{ entries: unknown[] }>(env.plugins.get(m.nodeId)!.clients.controller, 'ListSnapshots', {
      snapshot_id: handle,
    });
    expect(onNode.entries).toHaveLength(1);

    // Import it (examples/pre-provisioned-snapshot.yaml with the handle and namespace filled in).
    const yaml = readFileSync(join(EXAMPLES, 'pre-provisioned-snapshot.yaml'), 'utf8')
      .replaceAll('SNAPSHOT_HANDLE', handle)
      .replaceAll('NAMESPACE', ns)
      .replaceAll('imported-content', `imported-${ns}`);
    env.kubectl(['apply', '-f', '-'], yaml, false);
    const imported = await ready('imported-snap');
    expect(imported.status?.restoreSize).toBe('64Mi');
    const ic = await get(`/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents/imported-${ns}`);
    expect(ic?.metadata.labels?.['snapshot.storage.kubernetes.io/managed-by']).toBe(m.nodeId);
    applyYaml(restoreYaml('from-imported', 'imported-snap'));
    await bound('from-imported');
    const r = await env.kubelet.mount(ns, 'from-imported');
    expect(await checksumFiles(r.targetPath, Object.keys(sums))).toEqual(sums);
    await env.kubelet.unmount(ns, 'from-imported');
    env.kubectl(['delete', 'pvc', 'from-imported', '--wait=true']);
    // Clean up the retained snapshot on the node through a Delete-policy content of our own.
    env.kubectl(['delete', 'volumesnapshot', 'imported-snap', '--wait=true']);
    env.kubectl(
      [
        'patch',
        'volumesnapshotcontent',
        `imported-${ns}`,
        '--type=merge',
        '-p',
        '{"spec":{"deletionPolicy":"Delete"}}',
      ],
      undefined,
      false,
    );
    await waitFor(
      'released content deleted',
      async () => (await get(`/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents/imported-${ns}`)) === undefined,
    );
    await waitFor('retained snapshot deleted on the node', async () => {
      const l = await call<{ entries: unknown[] }>(env.plugins.get(m.nodeId)!.clients.controller, 'ListSnapshots', {
        snapshot_id: handle,
      });
      return l.entries.length === 0;
    });
  });

  it('1-5 - Delete policy: deleting the VolumeSnapshot deletes its content and the snapshot on the node', async () => {
    const snap = await ready('data-snap');
    const content = await get(
      `/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents/${snap.status?.boundVolumeSnapshotContentName}`,
    );
    const handle = content?.status?.snapshotHandle as string;
    const node = content?.metadata.labels?.['snapshot.storage.kubernetes.io/managed-by'] as string;
    env.kubectl(['delete', 'volumesnapshot', 'data-snap', '--wait=true']);
    await waitFor(
      'content gone',
      async () =>
        (await get(
          `/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents/${snap.status?.boundVolumeSnapshotContentName}`,
        )) === undefined,
    );
    const l = await call<{ entries: unknown[] }>(env.plugins.get(node)!.clients.controller, 'ListSnapshots', {
      snapshot_id: handle,
    });
    expect(l.entries).toHaveLength(0);
  });

  it('1-6 - deleting a PVC that has snapshots: the snapshots stay usable, the volume goes with the last of them', async () => {
    applyYaml(pvcYaml('src6'));
    await bound('src6');
    const m = await env.kubelet.mount(ns, 'src6');
    const sums = await writeFiles(m.targetPath, [120_000]);
    applyYaml(snapshotYaml('s6a', 'src6', 'loopsnap-save-volume'));
    applyYaml(snapshotYaml('s6b', 'src6', 'loopsnap-meta-bitmap'));
    await ready('s6a');
    await ready('s6b');
    const pvName = (await pvc('src6'))?.spec.volumeName as string;
    await env.kubelet.unmount(ns, 'src6');
    env.kubectl(['delete', 'pvc', 'src6', '--wait=true']);
    // The PV is released; the plugin refuses to delete a volume with snapshots, which is reported on the PV.
    await waitFor('VolumeFailedDelete on the PV', async () => {
      const evs = await env.rest.get<{
        items: Array<{ reason: string; message: string; involvedObject: { name: string } }>;
      }>('/api/v1/namespaces/default/events');
      return evs.items.find((e) => e.involvedObject.name === pvName && e.reason === 'VolumeFailedDelete');
    });
    expect((await get(`/api/v1/persistentvolumes/${pvName}`))?.status?.phase).toBe('Released');
    applyYaml(restoreYaml('r6', 's6a'));
    await bound('r6');
    const r = await env.kubelet.mount(ns, 'r6');
    expect(await checksumFiles(r.targetPath, Object.keys(sums))).toEqual(sums);
    await env.kubelet.unmount(ns, 'r6');
    env.kubectl(['delete', 'volumesnapshot', 's6a', 's6b', '--wait=true']);
    await waitFor(
      'released PV deleted after its last snapshot',
      async () => (await get(`/api/v1/persistentvolumes/${pvName}`)) === undefined,
    );
  });

  it('1-7 - deleting snapshots in any order while writable restored volumes exist keeps every volume intact', async () => {
    applyYaml(pvcYaml('src7'));
    await bound('src7');
    const m = await env.kubelet.mount(ns, 'src7');
    const gen1 = await writeFiles(m.targetPath, [50_000]);
    applyYaml(snapshotYaml('s7a', 'src7', 'loopsnap-save-volume'));
    await ready('s7a');
    const gen2 = await writeFiles(join(m.targetPath), [70_000, 10_000]);
    applyYaml(snapshotYaml('s7b', 'src7', 'loopsnap-meta-bitmap'));
    await ready('s7b');
    applyYaml(restoreYaml('r7a', 's7a'));
    applyYaml(restoreYaml('r7b', 's7b'));
    await bound('r7a');
    await bound('r7b');
    const ra = await env.kubelet.mount(ns, 'r7a');
    const rb = await env.kubelet.mount(ns, 'r7b');
    const wa = await writeFiles(join(ra.targetPath), [30_000]);
    // Older snapshot first, then the newer one, while both restored volumes are mounted read-write.
    env.kubectl(['delete', 'volumesnapshot', 's7a', '--wait=false']);
    env.kubectl(['delete', 'volumesnapshot', 's7b', '--wait=false']);
    await waitFor(
      'both snapshots gone',
      async () => (await vs('s7a')) === undefined && (await vs('s7b')) === undefined,
      {
        timeoutMs: 60_000,
      },
    );
    expect(await checksumFiles(rb.targetPath, Object.keys(gen2))).toEqual(gen2);
    expect(await checksumFiles(ra.targetPath, Object.keys(wa))).toEqual(wa);
    expect(Object.keys(gen1)).toHaveLength(1);
    const more = await writeFiles(rb.targetPath, [20_000]);
    expect(await checksumFiles(rb.targetPath, Object.keys(more))).toEqual(more);
    expect(await checksumFiles(m.targetPath, Object.keys(gen2))).toEqual(gen2);
  });

  it('1-8 - WaitForFirstConsumer: nothing is provisioned until the scheduler selects a node; then it is provisioned there', async () => {
    applyYaml(pvcYaml('wffc', 'loopsnap-wffc'));
    await new Promise((r) => setTimeout(r, 1500));
    expect((await pvc('wffc'))?.status?.phase).toBe('Pending');
    expect((await pvc('wffc'))?.metadata.annotations?.['loopsnap.dev/provisioning-node']).toBeUndefined();
    env.kubectl(['annotate', 'pvc', 'wffc', 'volume.kubernetes.io/selected-node=node-b']);
    const b = await bound('wffc');
    const m = await env.kubelet.mount(ns, 'wffc');
    expect(m.nodeId).toBe('node-b');
    expect(b.metadata.annotations?.['loopsnap.dev/provisioning-node']).toBe('node-b');
    await env.kubelet.unmount(ns, 'wffc');
  });

  // Online expansion (docs/volume-expansion.md): the claim stays mounted and a writer keeps writing through
  // the whole growth; the controller writes the PVC status a 1.33 kubelet waits for, the stand-in does what
  // that kubelet does with it (test/support/kubelet.ts).
  type ClaimStatus = {
    capacity?: { storage?: string };
    allocatedResources?: { storage?: string };
    allocatedResourceStatuses?: { storage?: string };
    conditions?: Array<{ type: string; status: string; message?: string }>;
  };
  const claimStatus = async (name: string) => (await pvc(name))?.status as ClaimStatus | undefined;
  const pvCapacity = async (name: string) =>
    (
      (await get(`/api/v1/persistentvolumes/${(await pvc(name))?.spec.volumeName}`))?.spec.capacity as
        { storage?: string } | undefined
    )?.storage;
  const resizeTo = (name: string, size: string) =>
    env.kubectl([
      'patch',
      'pvc',
      name,
      '--type=merge',
      '-p',
      `{"spec":{"resources":{"requests":{"storage":"${size}"}}}}`,
    ]);
  const resizeStatus = (name: string, status: string) =>
    waitFor(`${name}: allocatedResourceStatuses.storage ${status}`, async () => {
      const st = await claimStatus(name);
      return st?.allocatedResourceStatuses?.storage === status ? st : undefined;
    });
  const conditionTypes = (st: ClaimStatus | undefined) => (st?.conditions ?? []).map((c) => c.type).sort();
  /** Waits for status.capacity `size`, then checks the rest of a finished expansion: allocated, no status left. */
  const expansionDone = async (name: string, size: string) => {
    const st = await waitFor(`${name}: capacity ${size}`, async () => {
      const s = await claimStatus(name);
      return s?.capacity?.storage === size ? s : undefined;
    });
    expect(st.allocatedResources?.storage).toBe(size);
    expect(st.allocatedResourceStatuses?.storage).toBeUndefined();
    expect(conditionTypes(st)).toEqual([]);
    expect(await pvCapacity(name)).toBe(size);
  };
  const eventsOf = async (name: string) =>
    (
      await env.rest.get<{ items: Array<{ reason: string; type: string; message: string }> }>(
        `/api/v1/namespaces/${ns}/events?fieldSelector=involvedObject.name=${name}`,
      )
    ).items;

  it('1-9 - raw block grows online: the controller grows the device under a writer and finishes alone (no node step)', async () => {
    applyYaml(pvcYaml('grow', 'loopsnap', '64Mi', 'Block'));
    await bound('grow');
    const m = await env.kubelet.mount(ns, 'grow');
    const model = Buffer.alloc(64 * 1024 * 1024);
    const writer = await startBlockWriter(m.targetPath, model);
    await writer.reached(16);
    resizeTo('grow', '128Mi');
    await expansionDone('grow', '128Mi');
    // The pod's device is already 128Mi; kubelet finds nothing left to do.
    expect(Number((await sh('blockdev', ['--getsize64', m.targetPath])).trim())).toBe(128 * 1024 * 1024);
    expect(await env.kubelet.expandOnline(ns, 'grow')).toEqual({ outcome: 'not-needed' });
    await writer.reached(writer.writes + 16);
    await writer.stop();
    expect((await readAt(m.targetPath, 0, model.length)).equals(model)).toBe(true);
    const tail = randomBytes(256 * 1024);
    await writeDurable(m.targetPath, 128 * 1024 * 1024 - tail.length, tail);
    await env.kubelet.unmount(ns, 'grow');
    const after = await env.kubelet.mount(ns, 'grow');
    expect((await readAt(after.targetPath, 0, model.length)).equals(model)).toBe(true);
    expect(sha256(await readAt(after.targetPath, 128 * 1024 * 1024 - tail.length, tail.length))).toBe(sha256(tail));
    const reasons = (await eventsOf('grow')).map((e) => e.reason);
    expect(reasons).toEqual(expect.arrayContaining(['Resizing', 'VolumeResizeSuccessful']));
    await env.kubelet.unmount(ns, 'grow');
  });

  it('1-9b - xfs grows online: NodeResizePending and FileSystemResizePending, then kubelet NodeExpandVolume and the final status', async () => {
    applyYaml(
      'apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: loopsnap-xfs-test}\nprovisioner: csi.loopsnap.dev\nallowVolumeExpansion: true\nparameters: {csi.storage.k8s.io/fstype: xfs}\n',
    );
    applyYaml(pvcYaml('growxfs', 'loopsnap-xfs-test', '320Mi'));
    await bound('growxfs');
    const m = await env.kubelet.mount(ns, 'growxfs');
    const sums = await writeFiles(m.targetPath, [3 * 1024 * 1024, 9000]);
    const small = await statfs(m.targetPath);
    const writer = await startFileWriter(join(m.targetPath, 'log.bin'));
    await writer.reached(16);
    resizeTo('growxfs', '400Mi');
    const pending = await resizeStatus('growxfs', 'NodeResizePending');
    expect(pending.allocatedResources?.storage).toBe('400Mi');
    expect(pending.capacity?.storage).toBe('320Mi');
    expect(conditionTypes(pending)).toEqual(['FileSystemResizePending', 'Resizing']);
    expect(pending.conditions?.find((c) => c.type === 'FileSystemResizePending')?.message).toBe(
      'Waiting for user to (re-)start a pod to finish file system resize of volume on node.',
    );
    expect(await pvCapacity('growxfs')).toBe('400Mi');
    expect(await env.kubelet.expandOnline(ns, 'growxfs')).toEqual({ outcome: 'expanded', size: '400Mi' });
    await expansionDone('growxfs', '400Mi');
    await writer.reached(writer.writes + 16);
    await writer.stop();
    const grown = await statfs(m.targetPath);
    expect((grown.blocks - small.blocks) * grown.bsize).toBeGreaterThan(75 * 1024 * 1024);
    expect(sha256(readFileSync(join(m.targetPath, 'log.bin')))).toBe(writer.sum().sha256);
    expect(await checksumFiles(m.targetPath, Object.keys(sums))).toEqual(sums);
    const reasons = (await eventsOf('growxfs')).map((e) => e.reason);
    expect(reasons).toEqual(expect.arrayContaining(['Resizing', 'FileSystemResizeRequired']));
    await env.kubelet.unmount(ns, 'growxfs');
    env.kubectl(['delete', 'pvc', 'growxfs', '--wait=true']);
    env.kubectl(['delete', 'storageclass', 'loopsnap-xfs-test']);
  });

  /** A mounted 64Mi ext4 claim with files on it, asked to grow to 128Mi, up to NodeResizePending. */
  const ext4PendingOnNode = async () => {
    applyYaml(pvcYaml('growfs'));
    await bound('growfs');
    const m = await env.kubelet.mount(ns, 'growfs');
    const sums = await writeFiles(m.targetPath, [64_000, 9000]);
    resizeTo('growfs', '128Mi');
    await resizeStatus('growfs', 'NodeResizePending');
    return { m, sums };
  };

  it.skipIf(hasCapSysResource)(
    '1-9c - ext4 without CAP_SYS_RESOURCE: online NodeExpandVolume is refused as in use; the next mount finishes it',
    async () => {
      const { sums } = await ext4PendingOnNode();
      const refused = await env.kubelet.expandOnline(ns, 'growfs');
      expect(refused).toMatchObject({ outcome: 'in-use', message: expect.stringMatching(/CAP_SYS_RESOURCE/) });
      // kubelet records nothing for an in-use refusal: the claim still waits for a pod (re)start.
      const waiting = await claimStatus('growfs');
      expect(waiting?.allocatedResourceStatuses?.storage).toBe('NodeResizeInProgress');
      expect(conditionTypes(waiting)).toEqual(['FileSystemResizePending', 'Resizing']);
      await env.kubelet.unmount(ns, 'growfs');
      const after = await env.kubelet.mount(ns, 'growfs');
      const st = await statfs(after.targetPath);
      expect(st.blocks * st.bsize).toBeGreaterThan(100 * 1024 * 1024);
      expect(await checksumFiles(after.targetPath, Object.keys(sums))).toEqual(sums);
      await expansionDone('growfs', '128Mi');
      await env.kubelet.unmount(ns, 'growfs');
    },
  );

  it.skipIf(!hasCapSysResource)('1-9c - ext4 grows online (needs CAP_SYS_RESOURCE)', async () => {
    const { m, sums } = await ext4PendingOnNode();
    expect(await env.kubelet.expandOnline(ns, 'growfs')).toEqual({ outcome: 'expanded', size: '128Mi' });
    await expansionDone('growfs', '128Mi');
    const st = await statfs(m.targetPath);
    expect(st.blocks * st.bsize).toBeGreaterThan(100 * 1024 * 1024);
    expect(await checksumFiles(m.targetPath, Object.keys(sums))).toEqual(sums);
    await env.kubelet.unmount(ns, 'growfs');
  });

  it('1-9d - an infeasible size: ControllerResizeInfeasible and ControllerResizeError; a smaller request recovers', async () => {
    applyYaml(pvcYaml('toobig', 'loopsnap', '64Mi', 'Block'));
    await bound('toobig');
    resizeTo('toobig', '20Ti');
    const refused = await resizeStatus('toobig', 'ControllerResizeInfeasible');
    expect(refused.allocatedResources?.storage).toBe('20Ti');
    expect(refused.capacity?.storage).toBe('64Mi');
    const error = refused.conditions?.find((c) => c.type === 'ControllerResizeError');
    expect(error?.message).toMatch(
      /^failed to expand pvc with ControllerExpandVolume on node .* OUT_OF_RANGE: .*exceeds the maximum volume size/,
    );
    expect(await pvCapacity('toobig')).toBe('64Mi');
    const failed = (await eventsOf('toobig')).find((e) => e.reason === 'VolumeResizeFailed');
    expect(failed).toMatchObject({ type: 'Warning', message: expect.stringMatching(/OUT_OF_RANGE/) });
    // KEP 1790 recovery: a smaller request (above status.capacity) replaces the refused one.
    resizeTo('toobig', '96Mi');
    await expansionDone('toobig', '96Mi');
  });

  it('1-10 - CSIStorageCapacity per node and class; upstream and loopsnap metrics on /metrics', async () => {
    const caps = await waitFor('capacity objects', async () => {
      const l = await env.rest.get<{
        items: Array<{ storageClassName: string; nodeTopology: { matchLabels: Record<string, string> } }>;
      }>(`/apis/storage.k8s.io/v1/namespaces/${ns}/csistoragecapacities`);
      return l.items.length >= 4 ? l.items : undefined;
    });
    const pairs = caps
      .map((c) => `${c.storageClassName}@${c.nodeTopology.matchLabels['topology.loopsnap.dev/node']}`)
      .sort();
    expect(pairs).toEqual(['loopsnap-wffc@node-a', 'loopsnap-wffc@node-b', 'loopsnap@node-a', 'loopsnap@node-b']);
    const leader = await env.leader();
    const metrics = (await leader.http('/metrics'))?.body ?? '';
    expect(metrics).toMatch(
      /snapshot_controller_operation_total_seconds_count\{driver_name="csi.loopsnap.dev",operation_name="CreateSnapshotAndReady",operation_status="success",snapshot_type="dynamic"\} [1-9]/,
    );
    expect(metrics).toMatch(/loopsnap_reconcile_total\{controller="volumesnapshotcontent",result="success"\} [1-9]/);
    expect(metrics).toMatch(/loopsnap_reconcile_duration_seconds_bucket\{le="[^"]+",controller="volumesnapshot"\}/);
    expect(metrics).toMatch(/loopsnap_workqueue_depth\{controller="persistentvolumeclaim"\} \d/);
    expect(metrics).toMatch(/loopsnap_nodes_ready 2/);
  });

  it('1-11 - once the test objects are deleted, no volume and no snapshot is left on either node', async () => {
    await env.drain();
    for (const [nodeId, p] of env.plugins) {
      const vols = await call<{ entries: unknown[] }>(p.clients.controller, 'ListVolumes', {});
      const snaps = await call<{ entries: unknown[] }>(p.clients.controller, 'ListSnapshots', {});
      expect({ nodeId, volumes: vols.entries.length, snapshots: snaps.entries.length }).toEqual({
        nodeId,
        volumes: 0,
        snapshots: 0,
      });
    }
    expect(await env.leftovers()).toEqual([]);
  });
});
