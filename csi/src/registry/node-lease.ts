// SPDX-License-Identifier: Apache-2.0
// The node plugin's side of the node registry (format in common/src/node-lease-format.ts): creates and
// renews the Lease `loopsnap-node-<nodeId>` that tells the controller where this plugin listens, how much
// space it has and which version it runs.
//
//   const lease = await startNodeLease({ kc, nodeId, endpoint: '10.0.0.5:9820', capacityBytes, version });
//   ...
//   await lease.stop();   // clears holderIdentity: the controller sees the node as down at once
//
// Renewal failures (API server down, conflicts) are logged and retried at the next tick; they never stop
// the plugin. `capacityBytes` may be a function: it is evaluated at every renewal.
import type { KubeConfig } from '@kubernetes/client-node';
import { isConflict, isNotFound, KubeRest, microTime } from '../../../common/src/kube-rest.js';
import type { Logger } from '../../../common/src/log.js';
import {
  ANN_CAPACITY_BYTES,
  ANN_ENDPOINT,
  ANN_VERSION,
  DEFAULT_NODE_LEASE_DURATION_SECONDS,
  DEFAULT_REGISTRY_NAMESPACE,
  NODE_LEASE_LABEL,
  nodeLeaseName,
} from '../../../common/src/node-lease-format.js';

export interface NodeLeaseOptions {
  readonly kc: KubeConfig;
  readonly nodeId: string;
  /** host:port of the plugin's TCP (mutual TLS) CSI endpoint. */
  readonly endpoint: string;
  readonly capacityBytes: number | bigint | (() => number | bigint | Promise<number | bigint>);
  readonly version: string;
  readonly namespace?: string;
  readonly leaseDurationSeconds?: number;
  /** Default leaseDurationSeconds * 1000 / 4. */
  readonly renewIntervalMs?: number;
  readonly log?: Logger;
}

export interface NodeLeaseHandle {
  /** Resolves after the first successful write (or rejects when the first attempt fails). */
  readonly ready: Promise<void>;
  /** Renews now (also refreshes the capacity annotation). */
  renewNow(): Promise<void>;
  /** Stops renewing; with `release` (default true) clears holderIdentity so the node shows down at once. */
  stop(opts?: { release?: boolean }): Promise<void>;
}

interface Lease {
  apiVersion?: string;
  kind?: string;
  metadata: {
    name: string;
    namespace?: string;
    resourceVersion?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
  spec?: { holderIdentity?: string; leaseDurationSeconds?: number; acquireTime?: string; renewTime?: string };
}

export async function startNodeLease(opts: NodeLeaseOptions): Promise<NodeLeaseHandle> {
  if (!opts.nodeId) throw new Error('no node id provided');
  if (!/^[^:]+:\d+$/.test(opts.endpoint)) throw new Error(`endpoint must be host:port, got "${opts.endpoint}"`);
  const rest = await KubeRest.fromKubeConfig(opts.kc, {
    userAgent: `loopsnap-node/${opts.version}`,
    timeoutMs: 10_000,
  });
  const namespace = opts.namespace ?? DEFAULT_REGISTRY_NAMESPACE;
  const name = nodeLeaseName(opts.nodeId);
  const durationS = opts.leaseDurationSeconds ?? DEFAULT_NODE_LEASE_DURATION_SECONDS;
  const intervalMs = opts.renewIntervalMs ?? Math.max(200, (durationS * 1000) / 4);
  const base = `/apis/coordination.k8s.io/v1/namespaces/${namespace}/leases`;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let inFlight: Promise<void> = Promise.resolve();

  const capacity = async (): Promise<string> => {
    const c = typeof opts.capacityBytes === 'function' ? await opts.capacityBytes() : opts.capacityBytes;
    return BigInt(c).toString();
  };

  const write = async (holder: string | undefined): Promise<void> => {
    const annotations = {
      [ANN_ENDPOINT]: opts.endpoint,
      [ANN_CAPACITY_BYTES]: await capacity(),
      [ANN_VERSION]: opts.version,
    };
    const now = microTime();
    for (let attempt = 0; attempt < 3; attempt++) {
      let current: Lease | undefined;
      try {
        current = await rest.get<Lease>(`${base}/${name}`);
      } catch (err) {
        if (!isNotFound(err)) throw err;
      }
      const spec: Lease['spec'] = { leaseDurationSeconds: durationS, renewTime: now };
      if (holder !== undefined) spec.holderIdentity = holder;
      const held = current?.spec?.holderIdentity === opts.nodeId;
      spec.acquireTime = held && current?.spec?.acquireTime ? current.spec.acquireTime : now;
      const body: Lease = {
        apiVersion: 'coordination.k8s.io/v1',
        kind: 'Lease',
        metadata: {
          ...(current?.metadata ?? {}),
          name,
          namespace,
          labels: {
            ...(current?.metadata.labels ?? {}),
            [NODE_LEASE_LABEL]: 'true',
            'app.kubernetes.io/part-of': 'loopsnap',
          },
          annotations: { ...(current?.metadata.annotations ?? {}), ...annotations },
        },
        spec,
      };
      try {
        if (current) await rest.replace(`${base}/${name}`, body);
        else await rest.create(base, body);
        return;
      } catch (err) {
        if (!isConflict(err)) throw err;
      }
    }
    throw new Error(`Lease ${namespace}/${name} kept changing under us (conflicts)`);
  };

  // Renewals run one at a time; a failed one (API server away) must not fail every later one.
  const renew = (): Promise<void> => {
    inFlight = inFlight.catch(() => undefined).then(() => write(opts.nodeId));
    return inFlight;
  };

  const schedule = (): void => {
    if (stopped) return;
    timer = setTimeout(() => {
      renew()
        .catch((err: unknown) => opts.log?.warn({ err, lease: name, namespace }, 'Failed to renew node Lease'))
        .finally(schedule);
    }, intervalMs);
    timer.unref();
  };

  const ready = renew().then(() => {
    opts.log?.info({ lease: name, namespace, endpoint: opts.endpoint }, 'Registered node plugin Lease');
  });
  ready.then(schedule, schedule);
  // A failed first write is reported through `ready`; renewals continue regardless.
  ready.catch(() => undefined);

  return {
    ready,
    renewNow: renew,
    async stop(stopOpts) {
      stopped = true;
      if (timer) clearTimeout(timer);
      await inFlight.catch(() => undefined);
      if (stopOpts?.release !== false) {
        await write(undefined).catch((err: unknown) =>
          opts.log?.warn({ err, lease: name, namespace }, 'Failed to release node Lease'),
        );
      }
      rest.close();
    },
  };
}
