// SPDX-License-Identifier: Apache-2.0
// The installed release during a test: ready (rollouts done, the node plugins registered with their kubelets
// and holding their registry Leases, a controller pod leading), upgraded with extra values and restored to the
// values it had before, and the components' /metrics read through the API server's pod proxy (works for host
// network and pod network alike).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CHART_DIR, type RealCluster, RELEASE, RELEASE_NS } from '../../support/real-node.js';
import { waitFor } from '../../support/wait.js';
import { getJson } from './objects.js';

type Pods = {
  items: Array<{
    metadata: { name: string; deletionTimestamp?: string };
    spec: { nodeName?: string };
    status: { phase?: string; conditions?: Array<{ type: string; status: string }> };
  }>;
};

function componentPods(c: RealCluster, component: 'node' | 'controller'): Pods['items'] {
  return getJson<Pods>(c, ['-n', RELEASE_NS, 'pods', '-l', `app.kubernetes.io/component=${component}`]).items.filter(
    (p) => !p.metadata.deletionTimestamp,
  );
}

const isReady = (p: Pods['items'][0]): boolean =>
  p.status.conditions?.some((k) => k.type === 'Ready' && k.status === 'True') ?? false;

/** Rollouts finished, every node plugin registered and holding its Lease, a running controller pod leading. */
export async function waitReleaseReady(c: RealCluster, timeoutMs = 300_000): Promise<void> {
  c.kubectl(['-n', RELEASE_NS, 'rollout', 'status', 'daemonset/loopsnap-node', `--timeout=${timeoutMs / 1000}s`]);
  c.kubectl([
    '-n',
    RELEASE_NS,
    'rollout',
    'status',
    'deployment/loopsnap-controller',
    `--timeout=${timeoutMs / 1000}s`,
  ]);
  await waitFor(
    'node plugins registered with their Leases, a running controller pod leading',
    () => {
      const nodes = componentPods(c, 'node');
      if (nodes.length === 0 || !nodes.every(isReady)) return false;
      type Lease = { metadata: { name: string }; spec: { holderIdentity?: string } };
      const leases = getJson<{ items: Lease[] }>(c, ['-n', RELEASE_NS, 'leases']).items;
      const holder = (n: string) => leases.find((l) => l.metadata.name === n)?.spec.holderIdentity;
      const registered = nodes.every(
        (p) =>
          c
            .kubectl(['get', 'csinode', p.spec.nodeName ?? '', '-o', 'jsonpath={.spec.drivers[*].name}'])
            .split(' ')
            .includes('csi.loopsnap.dev') && holder(`loopsnap-node-${p.spec.nodeName}`) === p.spec.nodeName,
      );
      const leader = holder('loopsnap-controller-leader');
      const leading = componentPods(c, 'controller').some((p) => p.metadata.name === leader && isReady(p));
      return registered && leading;
    },
    { timeoutMs, intervalMs: 500 },
  );
}

/**
 * `helm upgrade` of the release with its user-supplied values plus `extra` flags (--set ...), waiting until it
 * is ready; returns the restore, an upgrade back to exactly the values it had (run it also when a test fails).
 */
export async function upgradeWith(c: RealCluster, extra: readonly string[]): Promise<() => Promise<void>> {
  const dir = mkdtempSync(join(tmpdir(), 'loopsnap-release-values-'));
  const saved = join(dir, 'values.yaml');
  writeFileSync(saved, c.helm(['get', 'values', RELEASE, '-n', RELEASE_NS, '-o', 'yaml']));
  const upgrade = (flags: readonly string[]) =>
    c.helm(['upgrade', RELEASE, CHART_DIR, '-n', RELEASE_NS, '--reset-values', '-f', saved, ...flags]);
  const restore = async (): Promise<void> => {
    try {
      upgrade([]);
      await waitReleaseReady(c);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
  try {
    upgrade(extra);
    await waitReleaseReady(c);
  } catch (err) {
    await restore().catch(() => undefined);
    throw err;
  }
  return restore;
}

/** The text of a release component's /metrics (the pod on `node` for the node plugin; the leader for the controller). */
export function componentMetrics(c: RealCluster, component: 'node' | 'controller', node?: string): string {
  const values = c.values() as unknown as { controller: { metricsPort: number }; node: { metricsPort: number } };
  let pod: string | undefined;
  if (component === 'controller') {
    type Lease = { spec: { holderIdentity?: string } };
    pod = getJson<Lease>(c, ['-n', RELEASE_NS, 'lease', 'loopsnap-controller-leader']).spec.holderIdentity;
  } else {
    pod = componentPods(c, 'node').find((p) => node === undefined || p.spec.nodeName === node)?.metadata.name;
  }
  if (!pod) throw new Error(`no ${component} pod`);
  const port = component === 'controller' ? values.controller.metricsPort : values.node.metricsPort;
  return c.kubectl(['get', '--raw', `/api/v1/namespaces/${RELEASE_NS}/pods/${pod}:${port}/proxy/metrics`]);
}

/** Sum of the samples of a metric whose label set matches every `labels` pair. */
export function metricValue(text: string, name: string, labels: Readonly<Record<string, string>> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const set = m[2] ?? '';
    if (Object.entries(labels).every(([k, v]) => set.includes(`${k}="${v}"`))) sum += Number(m[3]);
  }
  return sum;
}
