// SPDX-License-Identifier: Apache-2.0
// The controller's view of the node plugins, read from their registry Leases (format in
// common/src/node-lease-format.ts). Like kube-controller-manager's node lifecycle controller, readiness is
// judged on the controller's own clock: a node is ready while its Lease names it as holder and has been
// renewed (a new resourceVersion observed) within leaseDurationSeconds. On first sight the Lease's
// renewTime counts as the observation, so a plugin that died long ago is not believed alive.
import type { Logger } from '../../common/src/log.js';
import {
  ANN_CAPACITY_BYTES,
  ANN_ENDPOINT,
  ANN_VERSION,
  DEFAULT_NODE_LEASE_DURATION_SECONDS,
  nodeIdFromLeaseName,
} from '../../common/src/node-lease-format.js';
import { NodeUnavailableError } from './errors.js';
import type { Informer } from './kube/informer.js';
import type { Lease } from './kube/types.js';

export interface NodeInfo {
  readonly nodeId: string;
  readonly endpoint: string | undefined;
  readonly capacityBytes: bigint;
  readonly version: string | undefined;
  readonly ready: boolean;
  /** Why the node is not ready (empty when ready). */
  readonly notReadyReason: string;
}

interface Observed {
  rv: string;
  observedAtMs: number;
  lease: Lease;
}

export class NodeRegistry {
  private readonly observed = new Map<string, Observed>();
  private readonly lastReady = new Map<string, boolean>();
  private readonly listeners: Array<(node: NodeInfo) => void> = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly leases: Informer<Lease>,
    private readonly opts: {
      readonly namespace: string;
      readonly log: Logger;
      readonly now?: () => number;
      readonly onReadyCount?: (n: number) => void;
    },
  ) {
    leases.onChange((lease, type) => {
      const nodeId = nodeIdFromLeaseName(lease.metadata.name);
      if (!nodeId || lease.metadata.namespace !== opts.namespace) return;
      if (type === 'delete') this.observed.delete(nodeId);
      else this.observe(nodeId, lease);
      this.check(nodeId);
    });
  }

  private now(): number {
    return this.opts.now ? this.opts.now() : Date.now();
  }

  private observe(nodeId: string, lease: Lease): void {
    const rv = lease.metadata.resourceVersion ?? '';
    const prev = this.observed.get(nodeId);
    if (prev && prev.rv === rv) return;
    let at = this.now();
    if (!prev) {
      const renew = Date.parse(lease.spec?.renewTime ?? '');
      if (Number.isFinite(renew)) at = Math.min(at, renew);
    }
    this.observed.set(nodeId, { rv, observedAtMs: at, lease });
  }

  /** Notifies `cb` whenever a node turns ready or not ready. */
  onChange(cb: (node: NodeInfo) => void): void {
    this.listeners.push(cb);
  }

  /** Starts the expiry ticker (the informer must be started by the caller). */
  start(tickMs = 500): void {
    for (const l of this.leases.list(this.opts.namespace)) {
      const nodeId = nodeIdFromLeaseName(l.metadata.name);
      if (nodeId) this.observe(nodeId, l);
    }
    this.timer = setInterval(() => {
      for (const id of new Set([...this.observed.keys(), ...this.lastReady.keys()])) this.check(id);
    }, tickMs);
    this.timer.unref();
    for (const id of this.observed.keys()) this.check(id);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  private check(nodeId: string): void {
    const info = this.get(nodeId);
    const was = this.lastReady.get(nodeId);
    if (was === info.ready) return;
    this.lastReady.set(nodeId, info.ready);
    if (!this.observed.has(nodeId) && !info.ready) this.lastReady.delete(nodeId);
    this.opts.log.info(
      { node: nodeId, ready: info.ready, endpoint: info.endpoint, reason: info.notReadyReason || undefined },
      info.ready ? 'Node plugin became ready' : 'Node plugin became unavailable',
    );
    this.opts.onReadyCount?.(this.readyNodes().length);
    for (const l of this.listeners) l(info);
  }

  get(nodeId: string): NodeInfo {
    const o = this.observed.get(nodeId);
    if (!o) {
      return {
        nodeId,
        endpoint: undefined,
        capacityBytes: 0n,
        version: undefined,
        ready: false,
        notReadyReason: `no registry Lease for node "${nodeId}"`,
      };
    }
    const ann = o.lease.metadata.annotations ?? {};
    const endpoint = ann[ANN_ENDPOINT];
    let capacity: bigint;
    try {
      capacity = BigInt(ann[ANN_CAPACITY_BYTES] ?? '0');
    } catch {
      capacity = 0n;
    }
    const durationMs = (o.lease.spec?.leaseDurationSeconds ?? DEFAULT_NODE_LEASE_DURATION_SECONDS) * 1000;
    let reason = '';
    if (o.lease.spec?.holderIdentity !== nodeId) reason = 'the node plugin released its Lease (stopped)';
    else if (this.now() - o.observedAtMs > durationMs) {
      reason = `Lease not renewed for ${Math.round((this.now() - o.observedAtMs) / 1000)}s (duration ${durationMs / 1000}s)`;
    } else if (!endpoint) reason = 'Lease has no endpoint annotation';
    return {
      nodeId,
      endpoint,
      capacityBytes: capacity,
      version: ann[ANN_VERSION],
      ready: reason === '',
      notReadyReason: reason,
    };
  }

  /** Every node with a Lease, ready or not. */
  all(): NodeInfo[] {
    return [...this.observed.keys()].sort().map((id) => this.get(id));
  }

  readyNodes(): NodeInfo[] {
    return this.all().filter((n) => n.ready);
  }

  /** The node's endpoint, or NodeUnavailableError saying why it cannot be used now. */
  requireReady(nodeId: string): NodeInfo & { endpoint: string } {
    const info = this.get(nodeId);
    if (!info.ready || !info.endpoint) throw new NodeUnavailableError(nodeId, info.notReadyReason);
    return info as NodeInfo & { endpoint: string };
  }
}
