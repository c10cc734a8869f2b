// SPDX-License-Identifier: Apache-2.0
// Publishes one CSIStorageCapacity per (ready node, StorageClass of our driver) so that the scheduler
// places WaitForFirstConsumer pods where the volume fits (external-provisioner's --enable-capacity). The
// capacity is the plugin's GetCapacity answer for the class parameters, or, when the plugin cannot be
// asked, the free bytes of its registry Lease. Objects of nodes that are down or gone are deleted.
import { createHash } from 'node:crypto';
import { isNotFound } from '../../common/src/kube-rest.js';
import { driverParameters } from './content-controller.js';
import type { Deps } from './deps.js';
import { Resources, resourcePath } from './kube/resources.js';
import type { CSIStorageCapacity, KubeList, StorageClass } from './kube/types.js';
import { TOPOLOGY_KEY } from './names.js';
import type { NodeInfo } from './node-registry.js';
import { formatQuantityBytes } from './quantity.js';

export const CAPACITY_MANAGED_BY = 'loopsnap-controller';

export function capacityObjectName(storageClass: string, nodeId: string): string {
  return `csisc-${createHash('sha256').update(`${storageClass}\u0000${nodeId}`).digest('hex').slice(0, 16)}`;
}

export class CapacityPublisher {
  private timer: NodeJS.Timeout | undefined;
  private debounce: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;

  constructor(
    private readonly d: Deps,
    private readonly opts: { readonly namespace: string; readonly intervalMs: number },
  ) {
    d.nodes.onChange(() => this.trigger());
    d.caches.storageClasses.onChange(() => this.trigger());
  }

  start(): void {
    this.stopped = false;
    this.trigger();
    this.timer = setInterval(() => this.trigger(), this.opts.intervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    if (this.debounce) clearTimeout(this.debounce);
    await this.running;
  }

  /** Schedules a sync soon (coalescing bursts of triggers). */
  trigger(): void {
    if (this.stopped || this.debounce) return;
    this.debounce = setTimeout(() => {
      this.debounce = undefined;
      void this.syncNow();
    }, 200);
    this.debounce.unref();
  }

  /** Runs one sync (or waits for the running one and runs again). */
  async syncNow(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        try {
          await this.sync();
        } catch (err) {
          this.d.log.warn({ err }, 'Failed to publish CSIStorageCapacity');
        }
      } while (this.again && !this.stopped);
    })().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async capacityOf(node: NodeInfo, sc: StorageClass): Promise<{ capacity: bigint; maximum?: bigint }> {
    if (node.endpoint) {
      try {
        const r = await this.d.csi.get(node.nodeId, node.endpoint).getCapacity({
          parameters: driverParameters(sc.parameters),
          topology: { [TOPOLOGY_KEY]: node.nodeId },
        });
        return {
          capacity: r.availableBytes,
          ...(r.maximumVolumeBytes !== undefined ? { maximum: r.maximumVolumeBytes } : {}),
        };
      } catch (err) {
        this.d.log.debug(
          { err: (err as Error).message, node: node.nodeId },
          'GetCapacity failed; using the Lease capacity',
        );
      }
    }
    return { capacity: node.capacityBytes };
  }

  private async sync(): Promise<void> {
    const { kube, settings } = this.d;
    const ns = this.opts.namespace;
    const classes = this.d.caches.storageClasses.list().filter((sc) => sc.provisioner === settings.driverName);
    const nodes = this.d.nodes.readyNodes();
    const path = resourcePath(Resources.CSIStorageCapacity, { namespace: ns });
    const existing = await kube.rest.get<KubeList<CSIStorageCapacity>>(path, {
      labelSelector: `csi.storage.k8s.io/managed-by=${CAPACITY_MANAGED_BY},csi.storage.k8s.io/drivername=${settings.driverName}`,
    });
    const byName = new Map(existing.items.map((o) => [o.metadata.name, o]));
    const wanted = new Set<string>();
    for (const sc of classes) {
      for (const node of nodes) {
        const name = capacityObjectName(sc.metadata.name, node.nodeId);
        wanted.add(name);
        const { capacity, maximum } = await this.capacityOf(node, sc);
        const body: CSIStorageCapacity = {
          metadata: {
            name,
            namespace: ns,
            labels: {
              'csi.storage.k8s.io/drivername': settings.driverName,
              'csi.storage.k8s.io/managed-by': CAPACITY_MANAGED_BY,
            },
          },
          storageClassName: sc.metadata.name,
          nodeTopology: { matchLabels: { [TOPOLOGY_KEY]: node.nodeId } },
          capacity: formatQuantityBytes(capacity),
          ...(maximum !== undefined ? { maximumVolumeSize: formatQuantityBytes(maximum) } : {}),
        };
        const cur = byName.get(name);
        if (!cur) {
          await kube.create(Resources.CSIStorageCapacity, body);
        } else if (cur.capacity !== body.capacity || cur.maximumVolumeSize !== body.maximumVolumeSize) {
          await kube.patch(Resources.CSIStorageCapacity, cur.metadata, {
            capacity: body.capacity,
            maximumVolumeSize: body.maximumVolumeSize ?? null,
          });
        }
      }
    }
    for (const [name, obj] of byName) {
      if (wanted.has(name)) continue;
      await kube.delete(Resources.CSIStorageCapacity, obj.metadata).catch((err: unknown) => {
        if (!isNotFound(err)) throw err;
      });
    }
  }
}
