// SPDX-License-Identifier: Apache-2.0
// The node plugin's registry Lease against the real API server: created with the endpoint, capacity and
// version annotations, renewed, refreshed capacity, released on stop.
import { afterEach, describe, expect, it } from 'vitest';
import { KubeRest } from '../../common/src/kube-rest.js';
import { ANN_CAPACITY_BYTES, ANN_ENDPOINT, ANN_VERSION, NODE_LEASE_LABEL } from '../../common/src/node-lease-format.js';
import { type NodeLeaseHandle, startNodeLease } from '../../csi/src/registry/node-lease.js';
import { useCluster } from '../support/cluster.js';

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
