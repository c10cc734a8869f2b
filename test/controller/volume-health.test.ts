// SPDX-License-Identifier: Apache-2.0
// Volume health reaches the claim's users (issue 15): a bound volume whose engine metadata is destroyed while
// its node plugin is down comes back abnormal in its VolumeCondition; the controller (asking every 300 ms)
// puts a Warning event VolumeConditionAbnormal with the node's reason on the PVC and the PV, once, and keeps
// the message on the PV. Real control plane, real node plugin and controller processes.
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { useCluster } from '../support/cluster.js';
import { LoopsnapEnv } from '../support/loopsnap-env.js';
import { isRoot } from '../support/node-plugin.js';
import { waitFor } from '../support/wait.js';

type Obj = {
  metadata: { name: string; annotations?: Record<string, string> };
  spec?: { volumeName?: string; csi?: { volumeHandle?: string } };
  status?: { phase?: string };
};
type EventList = { items: Array<{ reason: string; type: string; message: string; count?: number }> };

describe.skipIf(!isRoot)('volume health on the claim (root: a node plugin, loop devices, FUSE)', () => {
  const cluster = useCluster('vol-health');
  let env: LoopsnapEnv;

  beforeAll(async () => {
    env = await LoopsnapEnv.start(cluster, { nodes: ['node-a'], controllerArgs: ['--volume-health-interval=300ms'] });
  });
  afterAll(async () => {
    await env?.stop();
  });

  it('15-5 a damaged volume: Warning VolumeConditionAbnormal on its PVC and PV, once, with the reason', async () => {
    const ns = env.namespace;
    env.kubectl(
      ['apply', '-f', '-'],
      `apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: sick}\nspec: {storageClassName: loopsnap-wffc, accessModes: [ReadWriteOnce], resources: {requests: {storage: 16Mi}}}\n`,
    );
    env.kubectl(['annotate', 'pvc', 'sick', 'volume.kubernetes.io/selected-node=node-a']);
    const pvc = await waitFor('PVC sick bound', async () => {
      const o = await env.rest.get<Obj>(`/api/v1/namespaces/${ns}/persistentvolumeclaims/sick`);
      return o.status?.phase === 'Bound' ? o : undefined;
    });
    const pvName = pvc.spec!.volumeName!;
    const pv = await env.rest.get<Obj>(`/api/v1/persistentvolumes/${pvName}`);
    const handle = pv.spec!.csi!.volumeHandle!;
    const dir = env.plugins.get('node-a')!.stateDir;
    await env.killPlugin('node-a');
    for (const f of ['checkpoint-0', 'checkpoint-1']) {
      await writeFile(join(dir, 'volumes', handle, 'meta', f), randomBytes(64 * 1024));
    }
    await env.startPlugin('node-a');
    const events = (path: string, name: string) =>
      env.rest
        .get<EventList>(`${path}/events?fieldSelector=involvedObject.name=${name}`)
        .then((l) => l.items.filter((e) => e.reason === 'VolumeConditionAbnormal'));
    const onClaim = await waitFor(
      'a VolumeConditionAbnormal event on the claim',
      async () => {
        const e = await events(`/api/v1/namespaces/${ns}`, 'sick');
        return e.length > 0 ? e : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 200 },
    );
    expect(onClaim[0]!.type).toBe('Warning');
    expect(onClaim[0]!.message).toMatch(new RegExp(`volume "${handle}" on node node-a is abnormal: .*failed to open`));
    const annotated = await env.rest.get<Obj>(`/api/v1/persistentvolumes/${pvName}`);
    expect(annotated.metadata.annotations?.['loopsnap.dev/volume-condition']).toMatch(/failed to open/);
    // Checked every 300 ms, reported once: the annotation says it was told.
    const leader = await env.leader();
    const said = (msg: string) => leader.lines.filter((l) => l.msg === msg);
    const checks = () => said('Called CSI').filter((l) => l.method === 'ControllerGetVolume').length;
    const after = checks();
    await waitFor('five more health checks', () => (checks() >= after + 5 ? true : undefined));
    expect(said('Volume condition abnormal')).toHaveLength(1);
    expect((await events(`/api/v1/namespaces/${ns}`, 'sick')).map((e) => e.count ?? 1)).toEqual([1]);
  });
});
