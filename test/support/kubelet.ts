// SPDX-License-Identifier: Apache-2.0
// A kubelet stand-in for tests on a machine without kubelet: registers Node objects for the node plugins
// (labelled with our topology key, as kubelet would after NodeGetInfo), and mounts a claim's volume the way
// kubelet does for a pod: PVC -> PV -> NodeStageVolume + NodePublishVolume on the plugin of the PV's node,
// with the PV's fsType and volume attributes. Its node side of a volume expansion is kubelet 1.33's with
// RecoverVolumeExpansionFailure (pkg/volume/util/operationexecutor/node_expander.go, pkg/volume/util/
// resize_util.go): NodeExpandVolume only for a claim whose status says NodeResizePending (or
// NodeResizeInProgress), at mount time and online (finishExpansion), then the claim's status as kubelet writes
// it (a FAILED_PRECONDITION too is marked NodeResizeError, then no more online attempts while mounted). What it
// does not reproduce: kubelet's own timing (it notices a grown PV when it resyncs the pod, up to about a minute
// later; here the test calls finishExpansion), RWX volumes expanded on several nodes, and everything else a
// real kubelet does (registration, its paths, fsGroup, volume stats, Secrets' ownership: docs/adr/0010).
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
    accessModes?: string[];
    mountOptions?: string[];
    capacity?: Record<string, string>;
    csi?: { volumeHandle: string; fsType?: string; volumeAttributes?: Record<string, string> };
    nodeAffinity?: {
      required?: { nodeSelectorTerms: Array<{ matchExpressions?: Array<{ key: string; values?: string[] }> }> };
    };
  };
}
interface Pvc {
  metadata: { name: string; namespace: string; resourceVersion?: string };
  spec: { volumeName?: string; resources?: { requests?: Record<string, string> } };
  status?: {
    conditions?: Array<{ type: string; status?: string; message?: string }>;
    capacity?: Record<string, string>;
    allocatedResources?: Record<string, string>;
    allocatedResourceStatuses?: Record<string, string>;
  };
}

/** What the node side of an expansion did (finishExpansion). */
export type NodeExpansionResult =
  /** NodeExpandVolume succeeded; the claim's status.capacity is `size`. */
  | { readonly outcome: 'expanded'; readonly size: string }
  /** The claim already reports the PV's size: nothing to do on the node. */
  | { readonly outcome: 'not-needed' }
  /** The claim's status does not allow node expansion (yet): kubelet waits. */
  | { readonly outcome: 'waiting'; readonly resizeStatus: string }
  /** FAILED_PRECONDITION: kubelet stops expanding online until the volume is mounted again. */
  | { readonly outcome: 'in-use'; readonly message: string }
  /** A final error: NodeResizeError, and NodeResizeInfeasible for an infeasible one. */
  | { readonly outcome: 'failed'; readonly infeasible: boolean; readonly message: string };

/** The resize conditions kubelet clears when an expansion finishes (knownResizeConditions). */
const RESIZE_CONDITIONS = new Set(['Resizing', 'FileSystemResizePending', 'ControllerResizeError', 'NodeResizeError']);
/** gRPC codes kubelet's isInfeasibleError counts as infeasible; FAILED_PRECONDITION is its inUseError. */
const INFEASIBLE = new Set([3, 11, 5]);
const FAILED_PRECONDITION = 9;
/** Codes after which an operation may still be running (not final): CANCELLED, DEADLINE_EXCEEDED, UNAVAILABLE, RESOURCE_EXHAUSTED, ABORTED. */
const NOT_FINAL = new Set([1, 4, 14, 8, 10]);

export interface Mounted {
  readonly nodeId: string;
  readonly volumeId: string;
  readonly pvName: string;
  readonly block: boolean;
  readonly stagingPath: string;
  /** Directory (Filesystem) or device file (Block) the pod would use. */
  readonly targetPath: string;
}

/** Kubelet's actual state of a mounted volume, as far as expansion goes. */
interface MountState {
  /** The size kubelet believes the volume has (pvc.status.capacity when mounted, then each finished resize). */
  size: string;
  /** The plugin answered FAILED_PRECONDITION: no more online attempts until the volume is mounted again. */
  inUseError: boolean;
}

/**
 * For multi-node scenarios only: this machine runs one real kubelet (its paths are fixed), so a test that needs
 * two or more nodes runs node plugins as processes and lets this stand in for their kubelets; everything one
 * node can do runs with real pods on the real node (test/node/). Used through LoopsnapEnv by
 * test/controller/e2e.test.ts (placement on the selected node of two, cross-node refusal, capacity per node)
 * and test/controller/faults.test.ts (two controller replicas, one node's plugin down while another serves),
 * and by bench/ (node.ts compares the real node with it; controller.ts and restore.ts).
 */
export class KubeletStandIn {
  private readonly mounted = new Map<string, Mounted>();
  private readonly states = new Map<string, MountState>();

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

  /**
   * NodeExpandVolume's capability as kubelet builds it (csi_client.go): block, or mount with the PV's fsType and
   * mountOptions; the access mode of the PV's first access mode as a plugin with SINGLE_NODE_MULTI_WRITER maps it.
   */
  private expandCapability(pv: Pv): object {
    const first = pv.spec.accessModes?.[0] ?? 'ReadWriteOnce';
    const mode =
      {
        ReadWriteOnce: 'SINGLE_NODE_MULTI_WRITER',
        ReadWriteOncePod: 'SINGLE_NODE_SINGLE_WRITER',
        ReadOnlyMany: 'MULTI_NODE_READER_ONLY',
        ReadWriteMany: 'MULTI_NODE_MULTI_WRITER',
      }[first] ?? 'SINGLE_NODE_MULTI_WRITER';
    return pv.spec.volumeMode === 'Block'
      ? { block: {}, access_mode: { mode } }
      : {
          mount: { fs_type: pv.spec.csi?.fsType ?? '', mount_flags: pv.spec.mountOptions ?? [] },
          access_mode: { mode },
        };
  }

  /** Stages and publishes the claim's volume on its node (idempotent per claim). */
  async mount(namespace: string, claim: string): Promise<Mounted> {
    const key = `${namespace}/${claim}`;
    const existing = this.mounted.get(key);
    if (existing) return existing;
    const { pvc, pv, nodeId } = await this.pvOf(namespace, claim);
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
    const state: MountState = { size: pvc.status?.capacity?.storage ?? '0', inUseError: false };
    this.states.set(key, state);
    // expandVolumeDuringMount: a claim reporting less than its PV is expanded right after the mount; an
    // in-use refusal does not fail the mount, other errors do.
    const r = await this.expandOnNode(namespace, claim, m, state);
    if (r.outcome === 'failed') throw new Error(`MountVolume.NodeExpandVolume failed: ${r.message}`);
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
    this.states.delete(key);
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
   * Kubelet's online expansion of a mounted claim (mounted first when it is not, which expands at mount time):
   * the node expander runs on what the claim's status says (see expandOnNode).
   */
  async expandOnline(namespace: string, claim: string): Promise<NodeExpansionResult> {
    const key = `${namespace}/${claim}`;
    const m = this.mounted.get(key) ?? (await this.mount(namespace, claim));
    const state = this.states.get(key)!;
    return this.expandOnNode(namespace, claim, m, state);
  }

  /** expandOnline, which must leave the claim expanded (or find it so); throws with what happened otherwise. */
  async finishExpansion(namespace: string, claim: string): Promise<void> {
    const r = await this.expandOnline(namespace, claim);
    if (r.outcome !== 'expanded' && r.outcome !== 'not-needed') {
      throw new Error(`kubelet could not finish expanding ${namespace}/${claim}: ${JSON.stringify(r)}`);
    }
  }

  /**
   * NodeExpander.expandOnPlugin: runPreCheck on the claim's status, NodeResizeInProgress, NodeExpandVolume with
   * allocatedResources, then MarkNodeExpansionFinishedWithRecovery (or the failure marks). Status patches carry
   * the resourceVersion read, as kubelet's PatchPVCStatus does (a conflict fails the attempt).
   */
  private async expandOnNode(
    namespace: string,
    claim: string,
    m: Mounted,
    state: MountState,
  ): Promise<NodeExpansionResult> {
    const { pvc, pv } = await this.pvOf(namespace, claim);
    const pvSize = pv.spec.capacity?.storage ?? '0';
    // The volume manager's trigger: the PV is larger than the size kubelet knows the volume has.
    if (quantityBytes(pvSize) <= quantityBytes(state.size)) return { outcome: 'not-needed' };
    if (state.inUseError) return { outcome: 'in-use', message: 'an earlier NodeExpandVolume was refused as in use' };
    const status = pvc.status ?? {};
    const resizeStatus = status.allocatedResourceStatuses?.storage ?? '';
    const allocated = status.allocatedResources?.storage;
    if (!allocated) return { outcome: 'waiting', resizeStatus };
    if (resizeStatus === '' && quantityBytes(status.capacity?.storage ?? '0') >= quantityBytes(allocated)) {
      state.size = pvSize; // the controller finished it all (no node expansion required)
      return { outcome: 'not-needed' };
    }
    if (resizeStatus !== 'NodeResizePending' && resizeStatus !== 'NodeResizeInProgress') {
      return { outcome: 'waiting', resizeStatus };
    }
    const path = `/api/v1/namespaces/${namespace}/persistentvolumeclaims/${claim}/status`;
    const patch = (p: Pvc, st: Record<string, unknown>, precondition = true): Promise<Pvc> =>
      this.rest.patch<Pvc>(
        path,
        { ...(precondition ? { metadata: { resourceVersion: p.metadata.resourceVersion } } : {}), status: st },
        'merge',
      );
    const inProgress = await patch(pvc, { allocatedResourceStatuses: { storage: 'NodeResizeInProgress' } });
    const p = this.plugin(m.nodeId);
    try {
      await call(p.clients.node, 'NodeExpandVolume', {
        volume_id: m.volumeId,
        volume_path: m.targetPath,
        staging_target_path: m.stagingPath,
        capacity_range: { required_bytes: String(quantityBytes(allocated)) },
        volume_capability: this.expandCapability(pv),
      });
    } catch (err) {
      const e = err as { code?: number; details?: string; message: string };
      const message = e.details ?? e.message;
      if (e.code === undefined || NOT_FINAL.has(e.code)) throw err;
      // Every final error, FAILED_PRECONDITION included, is marked NodeResizeError (MarkNodeExpansionFailedCondition).
      const infeasible = INFEASIBLE.has(e.code);
      const conditions = [
        ...(inProgress.status?.conditions ?? []).filter((c) => c.type !== 'NodeResizeError'),
        {
          type: 'NodeResizeError',
          status: 'True',
          lastTransitionTime: rfc3339Now(),
          message: `failed to expand pvc with ${message}`,
        },
      ];
      await patch(
        inProgress,
        { conditions, ...(infeasible ? { allocatedResourceStatuses: { storage: 'NodeResizeInfeasible' } } : {}) },
        false,
      );
      if (e.code === FAILED_PRECONDITION) {
        // MarkForInUseExpansionError: no more online attempts while mounted; the mount itself does not fail.
        state.inUseError = true;
        return { outcome: 'in-use', message };
      }
      return { outcome: 'failed', infeasible, message };
    }
    await patch(inProgress, {
      capacity: { storage: allocated },
      allocatedResourceStatuses: { storage: null },
      conditions: (inProgress.status?.conditions ?? []).filter((c) => !RESIZE_CONDITIONS.has(c.type)),
    });
    state.size = pvSize;
    return { outcome: 'expanded', size: allocated };
  }
}

/** Bytes of a binary- or decimal-suffixed quantity ("128Mi", "100M", "1073741824"). */
function quantityBytes(q: string): bigint {
  const m = /^(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?$/.exec(q);
  if (!m) throw new Error(`the kubelet stand-in cannot parse quantity "${q}"`);
  const mult = {
    Ki: 2n ** 10n,
    Mi: 2n ** 20n,
    Gi: 2n ** 30n,
    Ti: 2n ** 40n,
    k: 10n ** 3n,
    M: 10n ** 6n,
    G: 10n ** 9n,
    T: 10n ** 12n,
  };
  return BigInt(m[1]!) * (m[2] ? mult[m[2] as keyof typeof mult] : 1n);
}

function rfc3339Now(): string {
  return new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
}
