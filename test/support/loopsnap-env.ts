// SPDX-License-Identifier: Apache-2.0
// A whole loopsnap installation for end-to-end tests on the shared test control plane: the CRDs, the
// examples' CSIDriver/StorageClasses/VolumeSnapshotClasses, N real node plugins (child processes, one state
// dir each, mutual TLS on TCP, registered through their Lease in the test's namespace), M controller replicas
// (child processes, leader-elected), and the kubelet stand-in. stop() drains what the test created while
// the controller still runs (so volumes and snapshots are deleted on the nodes), then stops everything and
// removes every loop device, mount and directory.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { KubeRest } from '../../common/src/kube-rest.js';
import type { ClusterHandle } from './cluster.js';
import { baseArgs, ControllerProcess, ensureBuilt, freePort } from './controller-harness.js';
import { installOurCrds } from './crds-install.js';
import { KubeletStandIn } from './kubelet.js';
import { cleanupPluginDir, leftoversUnder, NodePlugin } from './node-plugin.js';
import { REPO_ROOT } from './paths.js';
import { createTestPki, type TestPki } from './tls.js';
import { waitFor } from './wait.js';

export const EXAMPLES = join(REPO_ROOT, 'examples');

export interface EnvOptions {
  readonly nodes: readonly string[];
  readonly controllers?: number;
  readonly controllerArgs?: readonly string[];
  /** Extra node plugin flags (every node). */
  readonly pluginArgs?: readonly string[];
  readonly controllerLogLevel?: string;
  readonly pluginLogLevel?: string;
}

interface NodeSlot {
  plugin: NodePlugin;
  readonly dir: string;
  readonly port: number;
}

/**
 * For multi-node scenarios only (several node plugins as processes, each its own "node", with the kubelet
 * stand-in): what one node can do runs with the chart's pods on the real node (test/node/, useRealCluster).
 * Users: test/controller/e2e.test.ts and faults.test.ts (each test says why it needs two nodes or two
 * controller hosts), and bench/controller.ts, bench/restore.ts, bench/node.ts.
 */
export class LoopsnapEnv {
  readonly plugins = new Map<string, NodePlugin>();
  readonly controllers: ControllerProcess[] = [];
  readonly kubelet: KubeletStandIn;
  private readonly slots = new Map<string, NodeSlot>();
  private readonly dirs: string[] = [];

  private constructor(
    readonly cluster: ClusterHandle,
    readonly rest: KubeRest,
    readonly pki: TestPki,
    private readonly opts: EnvOptions,
  ) {
    this.kubelet = new KubeletStandIn(rest, this.plugins);
  }

  get namespace(): string {
    return this.cluster.namespace;
  }

  /** Controller logs survive the test here: .loopsnap/test-logs/<namespace>/. */
  get logDir(): string {
    const d = join(REPO_ROOT, '.loopsnap', 'test-logs', this.namespace);
    mkdirSync(d, { recursive: true });
    return d;
  }

  static async start(cluster: ClusterHandle, opts: EnvOptions): Promise<LoopsnapEnv> {
    await ensureBuilt();
    installOurCrds(cluster);
    cluster.kubectl(
      [
        'apply',
        '-f',
        join(EXAMPLES, 'csidriver.yaml'),
        '-f',
        join(EXAMPLES, 'storageclass.yaml'),
        '-f',
        join(EXAMPLES, 'volumesnapshotclasses.yaml'),
      ],
      { namespaced: false },
    );
    const env = new LoopsnapEnv(cluster, await KubeRest.fromKubeConfig(cluster.kc), await createTestPki(), opts);
    try {
      for (const n of opts.nodes) await env.startPlugin(n);
      await env.kubelet.registerNodes(opts.nodes);
      for (let i = 0; i < (opts.controllers ?? 1); i++) await env.startController();
      await env.waitNodesReady(opts.nodes);
    } catch (err) {
      await env.stop().catch(() => undefined);
      throw err;
    }
    return env;
  }

  private pluginArgs(nodeId: string, port: number): string[] {
    return [
      '--tcp-endpoint',
      `127.0.0.1:${port}`,
      '--tls-cert-file',
      this.pki.server.certPath,
      '--tls-key-file',
      this.pki.server.keyPath,
      '--tls-client-ca-file',
      this.pki.ca.certPath,
      '--kubeconfig',
      this.cluster.kubeconfigPath,
      '--registry-namespace',
      this.namespace,
      ...(this.opts.pluginArgs ?? []),
    ];
  }

  async startPlugin(nodeId: string): Promise<NodePlugin> {
    const slot = this.slots.get(nodeId);
    const port = slot?.port ?? (await freePort());
    const plugin = await NodePlugin.start({
      nodeId,
      ...(slot ? { dir: slot.dir } : {}),
      args: this.pluginArgs(nodeId, port),
      ...(this.opts.pluginLogLevel ? { logLevel: this.opts.pluginLogLevel } : {}),
    });
    if (!slot) this.dirs.push(plugin.dir);
    this.slots.set(nodeId, { plugin, dir: plugin.dir, port });
    this.plugins.set(nodeId, plugin);
    return plugin;
  }

  /** SIGKILL the node plugin (a crash: mounts, loops and FUSE are left for its successor to clean). */
  async killPlugin(nodeId: string): Promise<void> {
    const p = this.plugins.get(nodeId);
    if (!p) return;
    await p.kill9();
    this.kubelet.forgetNode(nodeId);
  }

  async restartPlugin(nodeId: string): Promise<NodePlugin> {
    await this.killPlugin(nodeId);
    return this.startPlugin(nodeId);
  }

  async startController(extra: readonly string[] = []): Promise<ControllerProcess> {
    const i = this.controllers.length;
    const c = await ControllerProcess.start(
      [
        ...baseArgs({ namespace: this.namespace, pki: this.pki, kubeconfigPath: this.cluster.kubeconfigPath }),
        '--leader-election-identity',
        `replica-${i}-${Date.now().toString(36)}`,
        ...(this.opts.controllerArgs ?? []),
        ...extra,
      ],
      join(this.logDir, `controller-${i}.log`),
      this.opts.controllerLogLevel ?? 'debug',
    );
    this.controllers.push(c);
    return c;
  }

  /** The running replica that holds the leader Lease. */
  async leader(timeoutMs = 20_000): Promise<ControllerProcess> {
    return waitFor(
      'a leading controller',
      async () => {
        for (const c of this.controllers) if (!c.exited && (await c.isLeader())) return c;
        return undefined;
      },
      { timeoutMs },
    );
  }

  async waitNodesReady(nodes: readonly string[]): Promise<void> {
    const leader = await this.leader();
    await waitFor(
      `${nodes.length} ready nodes`,
      async () => {
        const m = await leader.http('/metrics');
        const line = m?.body.split('\n').find((l) => l.startsWith('loopsnap_nodes_ready '));
        return line !== undefined && Number(line.split(' ')[1]) >= nodes.length;
      },
      { timeoutMs: 30_000 },
    );
  }

  /** kubectl in the test's namespace (or cluster-wide with namespaced=false). */
  kubectl(args: readonly string[], input?: string, namespaced = true): string {
    return this.cluster.kubectl(args, { ...(input === undefined ? {} : { input }), namespaced });
  }

  /** Deletes the test's snapshots and claims and waits until their volumes and snapshots are gone. */
  async drain(timeoutMs = 90_000): Promise<void> {
    const ns = this.namespace;
    await this.kubelet.unmountAll();
    const vsPath = `/apis/snapshot.storage.k8s.io/v1/namespaces/${ns}/volumesnapshots`;
    const pvcPath = `/api/v1/namespaces/${ns}/persistentvolumeclaims`;
    for (const s of (await this.rest.get<{ items: Array<{ metadata: { name: string } }> }>(vsPath)).items) {
      await this.rest.delete(`${vsPath}/${s.metadata.name}`);
    }
    for (const p of (await this.rest.get<{ items: Array<{ metadata: { name: string } }> }>(pvcPath)).items) {
      await this.rest.delete(`${pvcPath}/${p.metadata.name}`);
    }
    await waitFor(
      'volumes and snapshot contents of the test to be deleted',
      async () => {
        const pvs = (
          await this.rest.get<{
            items: Array<{ spec: { claimRef?: { namespace?: string }; persistentVolumeReclaimPolicy?: string } }>;
          }>('/api/v1/persistentvolumes')
        ).items.filter((p) => p.spec.claimRef?.namespace === ns && p.spec.persistentVolumeReclaimPolicy === 'Delete');
        const contents = (
          await this.rest.get<{
            items: Array<{ spec: { volumeSnapshotRef: { namespace?: string }; deletionPolicy: string } }>;
          }>('/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents')
        ).items.filter((c) => c.spec.volumeSnapshotRef.namespace === ns && c.spec.deletionPolicy === 'Delete');
        return pvs.length === 0 && contents.length === 0;
      },
      { timeoutMs },
    );
  }

  /** Loop devices and mounts of volumes left under the plugins' dirs (leak check; each plugin's own FUSE mount
   * is not a leak while it runs). */
  async leftovers(): Promise<string[]> {
    const out: string[] = [];
    for (const d of this.dirs) {
      const found = await leftoversUnder(d).catch(() => [] as string[]);
      out.push(...found.filter((l) => l !== `mount ${join(d, 'state', 'fuse')}`));
    }
    return out;
  }

  async stop(): Promise<void> {
    await this.drain().catch(() => undefined);
    for (const c of this.controllers) await c.stop().catch(() => undefined);
    for (const p of this.plugins.values()) await p.stop().catch(() => undefined);
    for (const d of this.dirs) await cleanupPluginDir(d).catch(() => undefined);
    await this.kubelet.deleteNodes(this.opts.nodes).catch(() => undefined);
    this.rest.close();
    await this.pki.cleanup();
  }
}
