// SPDX-License-Identifier: Apache-2.0
// A kubelet stand-in for tests on a machine without kubelet: registers Node objects for the node plugins
// (labelled with our topology key, as kubelet would after NodeGetInfo), and mounts a claim's volume the way
// kubelet does for a pod: PVC -> PV -> NodeStageVolume + NodePublishVolume on the plugin of the PV's node,
// with the PV's fsType and volume attributes. It also finishes file system expansion (NodeExpandVolume) for
// claims the controller marked FileSystemResizePending.
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { KubeRest } from '../../common/src/kube-rest.js';
import type * as grpc from '@grpc/grpc-js';
import { csiCall as call } from './node-plugin.js';

/** What the stand-in needs of a node plugin process (test/support/node-plugin.ts or test/csi/plugin.ts). */
export interface PluginHandle {
  readonly dir: string;
  readonly clients: { readonly node: grpc.Client };
}

export const TOPOLOGY_KEY = 'topology.loopsnap.dev/node';

interface Pv {
  metadata: { name: string };
  spec: {
    volumeMode?: string;
    capacity?: Record<string, string>;
    csi?: { volumeHandle: string; fsType?: string; volumeAttributes?: Record<string, string> };
    nodeAffinity?: {
      required?: { nodeSelectorTerms: Array<{ matchExpressions?: Array<{ key: string; values?: string[] }> }> };
    };
  };
}
interface Pvc {
  metadata: { name: string; namespace: string };
  spec: { volumeName?: string; resources?: { requests?: Record<string, string> } };
  status?: { conditions?: Array<{ type: string }>; capacity?: Record<string, string> };
}

export interface Mounted {
  readonly nodeId: string;
  readonly volumeId: string;
  readonly pvName: string;
  readonly block: boolean;
  readonly stagingPath: string;
  /** Directory (Filesystem) or device file (Block) the pod would use. */
  readonly targetPath: string;
}

export class KubeletStandIn {
  private readonly mounted = new Map<string, Mounted>();

  constructor(
    private readonly rest: KubeRest,
    private readonly plugins: ReadonlyMap<string, PluginHandle>,
  ) {}

  /** Creates (or keeps) a Node object per node id, labelled as kubelet labels topology segments. */
  async registerNodes(nodeIds: readonly string[]): Promise<void> {
    for (const id of nodeIds) {
      await this.rest
        .create('/api/v1/nodes', {
          apiVersion: 'v1',
          kind: 'Node',
          metadata: { name: id, labels: { 'kubernetes.io/hostname': id, [TOPOLOGY_KEY]: id } },
        })
        .catch((err: { statusCode?: number }) => {
          if (err.statusCode !== 409) throw err;
        });
    }
  }

  async deleteNodes(nodeIds: readonly string[]): Promise<void> {
    for (const id of nodeIds) await this.rest.delete(`/api/v1/nodes/${id}`);
  }

  private plugin(nodeId: string): PluginHandle {
    const p = this.plugins.get(nodeId);
    if (!p) throw new Error(`no node plugin for node ${nodeId}`);
    return p;
  }

  async pvOf(namespace: string, claim: string): Promise<{ pvc: Pvc; pv: Pv; nodeId: string }> {
    const pvc = await this.rest.get<Pvc>(`/api/v1/namespaces/${namespace}/persistentvolumeclaims/${claim}`);
    if (!pvc.spec.volumeName) throw new Error(`PVC ${namespace}/${claim} is not bound`);
    const pv = await this.rest.get<Pv>(`/api/v1/persistentvolumes/${pvc.spec.volumeName}`);
    const expr = pv.spec.nodeAffinity?.required?.nodeSelectorTerms[0]?.matchExpressions?.find(
      (e) => e.key === TOPOLOGY_KEY,
    );
    const nodeId = expr?.values?.[0];
    if (!nodeId) throw new Error(`PV ${pv.metadata.name} has no ${TOPOLOGY_KEY} node affinity`);
    return { pvc, pv, nodeId };
  }

  private capability(pv: Pv): object {
    const block = pv.spec.volumeMode === 'Block';
    return block
      ? { block: {}, access_mode: { mode: 'SINGLE_NODE_WRITER' } }
      : { mount: { fs_type: pv.spec.csi?.fsType ?? '', mount_flags: [] }, access_mode: { mode: 'SINGLE_NODE_WRITER' } };
  }

  /** Stages and publishes the claim's volume on its node (idempotent per claim). */
  async mount(namespace: string, claim: string): Promise<Mounted> {
    const key = `${namespace}/${claim}`;
    const existing = this.mounted.get(key);
    if (existing) return existing;
    const { pv, nodeId } = await this.pvOf(namespace, claim);
    const p = this.plugin(nodeId);
    const volumeId = pv.spec.csi?.volumeHandle as string;
    const base = join(p.dir, 'kubelet', pv.metadata.name);
    const stagingPath = join(base, 'staging');
    const targetPath = join(base, 'target');
    await mkdir(stagingPath, { recursive: true });
    const cap = this.capability(pv);
    const ctx = pv.spec.csi?.volumeAttributes ?? {};
    await call(p.clients.node, 'NodeStageVolume', {
      volume_id: volumeId,
      staging_target_path: stagingPath,
      volume_capability: cap,
      volume_context: ctx,
    });
    await call(p.clients.node, 'NodePublishVolume', {
      volume_id: volumeId,
      staging_target_path: stagingPath,
      target_path: targetPath,
      volume_capability: cap,
      volume_context: ctx,
    });
    const m: Mounted = {
      nodeId,
      volumeId,
      pvName: pv.metadata.name,
      block: pv.spec.volumeMode === 'Block',
      stagingPath,
      targetPath,
    };
    this.mounted.set(key, m);
    return m;
  }

  /** NodeUnpublish + NodeUnstage (what kubelet does when the pod goes). */
  async unmount(namespace: string, claim: string): Promise<void> {
    const key = `${namespace}/${claim}`;
    const m = this.mounted.get(key);
    if (!m) return;
    const p = this.plugin(m.nodeId);
    await call(p.clients.node, 'NodeUnpublishVolume', { volume_id: m.volumeId, target_path: m.targetPath });
    await call(p.clients.node, 'NodeUnstageVolume', { volume_id: m.volumeId, staging_target_path: m.stagingPath });
    this.mounted.delete(key);
  }

  async unmountAll(): Promise<void> {
    for (const key of [...this.mounted.keys()]) {
      const [ns, name] = key.split('/') as [string, string];
      await this.unmount(ns, name).catch(() => undefined);
    }
  }

  /** Refreshes the plugin clients after a plugin restart (new process, same socket). */
  forgetNode(nodeId: string): void {
    for (const [k, m] of this.mounted) if (m.nodeId === nodeId) this.mounted.delete(k);
  }

  /**
   * Kubelet's side of expansion: NodeExpandVolume for a mounted claim marked FileSystemResizePending, then the
   * claim's status.capacity and conditions as kubelet reports them.
   */
  async finishExpansion(namespace: string, claim: string): Promise<void> {
    const { pvc, pv } = await this.pvOf(namespace, claim);
    const m = await this.mount(namespace, claim);
    const p = this.plugin(m.nodeId);
    await call(p.clients.node, 'NodeExpandVolume', {
      volume_id: m.volumeId,
      volume_path: m.targetPath,
      staging_target_path: m.stagingPath,
      volume_capability: this.capability(pv),
    });
    const size = pv.spec.capacity?.storage as string;
    await this.rest.patch(
      `/api/v1/namespaces/${namespace}/persistentvolumeclaims/${claim}/status`,
      {
        status: {
          capacity: { storage: size },
          conditions: (pvc.status?.conditions ?? []).filter((c) => c.type !== 'FileSystemResizePending'),
          allocatedResourceStatuses: null,
        },
      },
      'merge',
    );
  }
}
