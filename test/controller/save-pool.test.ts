// SPDX-License-Identifier: Apache-2.0
// A full save pool end to end: a node plugin whose volumes may keep 1 MiB of before-images, a snapshot whose
// before-images do not fit, and what the user sees (VolumeSnapshot readyToUse false with status.error, a
// Warning event, a restore that waits), while the volume's own data stays intact and the snapshot can still be
// deleted. Real control plane, real node plugin (engine, FUSE, loop) and controller.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readAt, sha256, writeDurable } from '../csi/volumes.js';
import { useCluster } from '../support/cluster.js';
import { freePort } from '../support/controller-harness.js';
import { LoopsnapEnv } from '../support/loopsnap-env.js';
import { isRoot } from '../support/node-plugin.js';
import { waitFor } from '../support/wait.js';

type Obj = {
  metadata: { name: string; annotations?: Record<string, string> };
  spec: { volumeName?: string };
  status?: {
    phase?: string;
    readyToUse?: boolean;
    boundVolumeSnapshotContentName?: string;
    error?: { message?: string };
  };
};

const MiB = 1 << 20;

describe.skipIf(!isRoot)('a full save pool invalidates a snapshot, visibly (root: node plugin, loop, FUSE)', () => {
  const cluster = useCluster('ctl-save-pool');
  let env: LoopsnapEnv;
  let ns = '';
  let metricsPort = 0;
  const get = (path: string) => env.rest.get<Obj>(path).catch(() => undefined);
  const vs = (name: string) => get(`/apis/snapshot.storage.k8s.io/v1/namespaces/${ns}/volumesnapshots/${name}`);
  const apply = (yaml: string) => env.kubectl(['apply', '-f', '-'], yaml);

  beforeAll(async () => {
    metricsPort = await freePort();
    env = await LoopsnapEnv.start(cluster, {
      nodes: ['node-a'],
      pluginArgs: ['--save-quota-bytes', String(MiB), '--http-endpoint', `127.0.0.1:${metricsPort}`],
      controllerArgs: ['--snapshot-health-interval', '500ms'],
    });
    ns = env.namespace;
  });
  afterAll(async () => {
    await env?.stop();
  });

  it('5-1 - the VolumeSnapshot turns not ready with a reason and an event; the volume keeps its data; the snapshot can be deleted', async () => {
    apply(
      'apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: small-pool}\nspec: {storageClassName: loopsnap, volumeMode: Block, accessModes: [ReadWriteOnce], resources: {requests: {storage: 64Mi}}}\n',
    );
    await waitFor('PVC bound', async () =>
      (await get(`/api/v1/namespaces/${ns}/persistentvolumeclaims/small-pool`))?.status?.phase === 'Bound'
        ? true
        : undefined,
    );
    const m = await env.kubelet.mount(ns, 'small-pool');
    await writeDurable(m.targetPath, 0, randomBytes(4 * MiB));
    apply(
      'apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\nmetadata: {name: doomed}\nspec: {volumeSnapshotClassName: loopsnap-save-volume, source: {persistentVolumeClaimName: small-pool}}\n',
    );
    await waitFor(
      'snapshot ready',
      async () => ((await vs('doomed'))?.status?.readyToUse === true ? true : undefined),
      {
        timeoutMs: 60_000,
      },
    );
    // 4 MiB of before-images into a 1 MiB pool: the engine invalidates the snapshot, the writes succeed.
    const now = randomBytes(4 * MiB);
    await writeDurable(m.targetPath, 0, now);
    expect(sha256(await readAt(m.targetPath, 0, 4 * MiB))).toBe(sha256(now));

    const invalid = await waitFor(
      'snapshot reported invalid',
      async () => {
        const o = await vs('doomed');
        return o?.status?.readyToUse === false && o.status.error?.message ? o : undefined;
      },
      { timeoutMs: 60_000 },
    );
    expect(invalid.status?.error?.message).toMatch(/invalidated it because the save pool of volume .* was full/);
    const contentName = invalid.status?.boundVolumeSnapshotContentName as string;
    const content = await get(`/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents/${contentName}`);
    expect(content?.metadata.annotations?.['loopsnap.dev/snapshot-invalidated']).toMatch(/^\d{4}-\d\d-\d\dT/);
    const events = await waitFor('SnapshotInvalidated event', async () => {
      const evs = await env.rest.get<{
        items: Array<{ reason: string; type: string; involvedObject: { name: string } }>;
      }>(`/api/v1/namespaces/${ns}/events`);
      const hit = evs.items.filter((e) => e.reason === 'SnapshotInvalidated' && e.involvedObject.name === 'doomed');
      return hit.length > 0 ? hit : undefined;
    });
    expect(events[0]?.type).toBe('Warning');
    // The node metric agrees.
    const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    expect(metrics).toMatch(/loopsnap_volume_invalid_snapshots\{[^}]*\} 1/);

    // It stays not ready (never re-created or polled back to ready), and deleting it works.
    await new Promise((r) => setTimeout(r, 1500));
    expect((await vs('doomed'))?.status?.readyToUse).toBe(false);
    env.kubectl(['delete', 'volumesnapshot', 'doomed', '--wait=true', '--timeout=60s']);
    await waitFor('content gone', async () =>
      (await get(`/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents/${contentName}`)) === undefined
        ? true
        : undefined,
    );
    expect(sha256(await readAt(m.targetPath, 0, 4 * MiB))).toBe(sha256(now));
    await env.kubelet.unmount(ns, 'small-pool');
    env.kubectl(['delete', 'pvc', 'small-pool', '--wait=true', '--timeout=60s']);
    await env.drain();
    expect(await env.leftovers()).toEqual([]);
  });
});
