// SPDX-License-Identifier: Apache-2.0
// The node plugin's registry Lease against the real API server: created with the endpoint, capacity and
// version annotations, renewed, refreshed capacity, released on stop.
import { afterEach, describe, expect, it } from 'vitest';
import { KubeRest } from '../../common/src/kube-rest.js';
import { ANN_CAPACITY_BYTES, ANN_ENDPOINT, ANN_VERSION, NODE_LEASE_LABEL } from '../../common/src/node-lease-format.js';
import { type NodeLeaseHandle, startNodeLease } from '../../csi/src/registry/node-lease.js';
import { useCluster } from '../support/cluster.js';
import { waitFor } from '../support/wait.js';

interface Lease {
  metadata: { labels?: Record<string, string>; annotations?: Record<string, string>; resourceVersion: string };
  spec: { holderIdentity?: string; renewTime?: string; leaseDurationSeconds?: number };
}

describe('node plugin registry Lease', () => {
  const cluster = useCluster('lease');
  const handles: NodeLeaseHandle[] = [];
  afterEach(async () => {
    for (const h of handles.splice(0)) await h.stop({ release: false });
  });

  const getLease = async (name: string): Promise<Lease> => {
    const rest = await KubeRest.fromKubeConfig(cluster.kc);
    try {
      return await rest.get<Lease>(`/apis/coordination.k8s.io/v1/namespaces/${cluster.namespace}/leases/${name}`);
    } finally {
      rest.close();
    }
  };

  it('creates loopsnap-node-<node> with endpoint, capacity and version, and renews it', async () => {
    let capacity = 1000n;
    const h = await startNodeLease({
      kc: cluster.kc,
      nodeId: 'node-a',
      endpoint: '127.0.0.1:9820',
      capacityBytes: () => capacity,
      version: '0.1.0',
      namespace: cluster.namespace,
      leaseDurationSeconds: 4,
      renewIntervalMs: 300,
    });
    handles.push(h);
    await h.ready;
    const first = await getLease('loopsnap-node-node-a');
    expect(first.spec.holderIdentity).toBe('node-a');
    expect(first.spec.leaseDurationSeconds).toBe(4);
    expect(first.metadata.labels?.[NODE_LEASE_LABEL]).toBe('true');
    expect(first.metadata.annotations?.[ANN_ENDPOINT]).toBe('127.0.0.1:9820');
    expect(first.metadata.annotations?.[ANN_CAPACITY_BYTES]).toBe('1000');
    expect(first.metadata.annotations?.[ANN_VERSION]).toBe('0.1.0');
    expect(first.spec.renewTime).toMatch(/\.\d{6}Z$/);
    capacity = 2000n;
    await new Promise((r) => setTimeout(r, 1000));
    const later = await getLease('loopsnap-node-node-a');
    expect(later.metadata.resourceVersion).not.toBe(first.metadata.resourceVersion);
    expect(Date.parse(later.spec.renewTime ?? '')).toBeGreaterThan(Date.parse(first.spec.renewTime ?? ''));
    expect(later.metadata.annotations?.[ANN_CAPACITY_BYTES]).toBe('2000');
  });

  it('goes on renewing after a renewal failed (API server away, capacity unreadable)', async () => {
    let failing = false;
    const h = await startNodeLease({
      kc: cluster.kc,
      nodeId: 'node-c',
      endpoint: '127.0.0.1:9822',
      capacityBytes: () => {
        if (failing) throw new Error('capacity unreadable');
        return 7n;
      },
      version: '0.1.0',
      namespace: cluster.namespace,
      leaseDurationSeconds: 4,
      renewIntervalMs: 200,
    });
    handles.push(h);
    await h.ready;
    failing = true;
    await expect(h.renewNow()).rejects.toThrow(/capacity unreadable/);
    const before = Date.parse((await getLease('loopsnap-node-node-c')).spec.renewTime ?? '');
    failing = false;
    await h.renewNow();
    await waitFor('a scheduled renewal after the failed one', async () => {
      const t = Date.parse((await getLease('loopsnap-node-node-c')).spec.renewTime ?? '');
      return t > before;
    });
  });

  it('clears holderIdentity on stop so the node shows down at once', async () => {
    const h = await startNodeLease({
      kc: cluster.kc,
      nodeId: 'node-b',
      endpoint: '127.0.0.1:9821',
      capacityBytes: 5,
      version: '0.1.0',
      namespace: cluster.namespace,
    });
    await h.ready;
    await h.stop();
    const lease = await getLease('loopsnap-node-node-b');
    expect(lease.spec.holderIdentity).toBeUndefined();
    expect(lease.metadata.annotations?.[ANN_ENDPOINT]).toBe('127.0.0.1:9821');
  });

  it('rejects a malformed endpoint with a clear error', async () => {
    await expect(
      startNodeLease({ kc: cluster.kc, nodeId: 'n', endpoint: 'nope', capacityBytes: 1, version: 'x' }),
    ).rejects.toThrow(/endpoint must be host:port/);
  });
});
