// SPDX-License-Identifier: Apache-2.0
// Where the chart's end-to-end test runs, so that one test file serves both modes and the only difference
// between them is who calls NodeStage/NodePublish:
//
//   local    (default; root) a private control plane, `helm install` of the chart, the node plugins and
//            controllers as processes on this machine run with the release's flags, TLS Secrets and
//            ServiceAccount tokens; the kubelet stand-in (test/support/kubelet.ts) stages and publishes, and
//            data is written through the published path on this machine.
//   cluster  (LOOPSNAP_E2E_TARGET=cluster, KUBECONFIG; hack/kind-e2e.sh) a real cluster where the chart is
//            installed in namespace loopsnap; real pods mount the claims and data goes through `kubectl exec`.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KubeRest } from '../../../common/src/kube-rest.js';
import { cleanupDir, leftoversUnder, PluginProcess } from '../../csi/plugin.js';
import { checksumFiles, writeFiles } from '../../csi/volumes.js';
import { ControllerProcess, ensureBuilt, freePort } from '../../support/controller-harness.js';
import { KubeletStandIn } from '../../support/kubelet.js';
import { waitFor } from '../../support/wait.js';
import { containerArgs, localizeArgs, secretFiles, serviceAccountKubeconfig } from './chart-components.js';
import { CHART_DIR, cleanStderr, only, parseManifests, runTool } from './helm.js';
import { clusterFromKubeconfig, type PrivateCluster, startPrivateCluster } from './private-cluster.js';

export const RELEASE = 'loopsnap';
export const RELEASE_NS = 'loopsnap';

export type E2eMode = 'local' | 'cluster';

export function e2eMode(): E2eMode {
  const m = process.env.LOOPSNAP_E2E_TARGET ?? 'local';
  if (m !== 'local' && m !== 'cluster') throw new Error(`LOOPSNAP_E2E_TARGET must be local or cluster, got ${m}`);
  return m;
}

/** Files written into a mounted claim and read back, by name -> sha256. */
export interface VolumeIo {
  readonly nodeId: string;
  /** (Over)writes file-<i>.bin with random bytes of sizes[i], synced; name -> sha256. */
  writeFiles(sizes: readonly number[]): Promise<Record<string, string>>;
  checksumFiles(names: readonly string[]): Promise<Record<string, string>>;
}

export interface ClaimOptions {
  readonly node: string;
  readonly dataSource?: { kind: string; name: string; apiGroup?: string };
  readonly volumeMode?: 'Filesystem' | 'Block';
  readonly storage?: string;
}

export interface E2eTarget {
  readonly mode: E2eMode;
  readonly cluster: PrivateCluster;
  readonly rest: KubeRest;
  /** Nodes that run a node plugin. */
  readonly nodes: readonly string[];
  /** Creates a claim of the chart's StorageClass, to be used by a workload on `node`. */
  createClaim(namespace: string, name: string, opts: ClaimOptions): void;
  /** Makes the claim usable as a pod on its node would (waits until it is bound and published). */
  mount(namespace: string, claim: string): Promise<VolumeIo>;
  /** Releases a claim's mount (its pod deleted, or NodeUnpublish/NodeUnstage). */
  unmount(namespace: string, claim: string): Promise<void>;
  /** Releases every mount. */
  unmountAll(): Promise<void>;
  /** Kubelet's part of an expansion to `size` once the controller has grown the volume (mounts the claim). */
  completeExpansion(namespace: string, claim: string, size: string): Promise<void>;
  /** Log lines of every controller and node plugin (JSON text). */
  componentLogs(): string[];
  /** Loop devices and mounts left on this machine by deleted volumes (local mode only; [] otherwise). */
  leftovers(): Promise<string[]>;
  stop(): Promise<void>;
}

function claimJson(namespace: string, name: string, opts: ClaimOptions, selectedNode: boolean): string {
  return JSON.stringify({
    apiVersion: 'v1',
    kind: 'PersistentVolumeClaim',
    metadata: {
      name,
      namespace,
      // What the scheduler writes for a WaitForFirstConsumer claim once it placed the claim's first pod.
      ...(selectedNode ? { annotations: { 'volume.kubernetes.io/selected-node': opts.node } } : {}),
    },
    spec: {
      storageClassName: 'loopsnap',
      accessModes: ['ReadWriteOnce'],
      resources: { requests: { storage: opts.storage ?? '64Mi' } },
      volumeMode: opts.volumeMode ?? 'Filesystem',
      ...(opts.dataSource ? { dataSource: opts.dataSource } : {}),
    },
  });
}

async function waitBound(rest: KubeRest, namespace: string, claim: string): Promise<void> {
  await waitFor(
    `PVC ${namespace}/${claim} bound`,
    async () =>
      (
        await rest.get<{ status?: { phase?: string } }>(
          `/api/v1/namespaces/${namespace}/persistentvolumeclaims/${claim}`,
        )
      ).status?.phase === 'Bound',
    { timeoutMs: 180_000 },
  );
}

/** The chart as `helm install` makes it, with its components run on this machine (see the file comment). */
export async function startLocalTarget(nodes: readonly string[]): Promise<E2eTarget> {
  await ensureBuilt();
  const cluster = startPrivateCluster();
  const dir = mkdtempSync(join(tmpdir(), 'loopsnap-chart-e2e-'));
  const plugins = new Map<string, PluginProcess>();
  const controllers: ControllerProcess[] = [];
  let rest: KubeRest | undefined;
  const stop = async (): Promise<void> => {
    for (const c of controllers) await c.stop().catch(() => undefined);
    for (const p of plugins.values()) await p.stop().catch(() => undefined);
    for (const p of plugins.values()) await cleanupDir(p.dir).catch(() => undefined);
    rest?.close();
    rmSync(dir, { recursive: true, force: true });
    cluster.stop();
  };
  try {
    const helm = (args: readonly string[]): string => {
      const r = runTool('helm', [...args, '--kubeconfig', cluster.kubeconfigPath]);
      if (r.code !== 0) throw new Error(`helm ${args[0]} failed: ${cleanStderr(r.stderr)}`);
      return r.stdout;
    };
    helm(['install', RELEASE, CHART_DIR, '-n', RELEASE_NS, '--create-namespace']);
    const manifest = parseManifests(helm(['get', 'manifest', RELEASE, '-n', RELEASE_NS]));
    const token = (sa: string): string =>
      serviceAccountKubeconfig(cluster, RELEASE_NS, sa, join(dir, `${sa}.kubeconfig`));
    const nodeKubeconfig = token('loopsnap-node');
    const ctlKubeconfig = token('loopsnap-controller');
    const nodeTls = secretFiles(cluster, RELEASE_NS, 'loopsnap-node-tls', dir);
    const ctlTls = secretFiles(cluster, RELEASE_NS, 'loopsnap-controller-tls', dir);
    rest = await KubeRest.fromKubeConfig(cluster.kc);
    const kubelet = new KubeletStandIn(rest, plugins);
    const dsArgs = containerArgs(only(manifest, 'DaemonSet'), 'node-plugin');
    for (const node of nodes) {
      const port = await freePort();
      const args = localizeArgs(dsArgs, {
        // PluginProcess gives each plugin its own socket, state dir and node id.
        'node-id': null,
        endpoint: null,
        'state-dir': null,
        'log-level': null,
        'tcp-endpoint': `127.0.0.1:${port}`,
        'advertise-endpoint': `127.0.0.1:${port}`,
        'tls-cert-file': nodeTls.cert,
        'tls-key-file': nodeTls.key,
        'tls-client-ca-file': nodeTls.ca,
        'http-endpoint': `127.0.0.1:${await freePort()}`,
        'in-cluster': `--kubeconfig=${nodeKubeconfig}`,
        // The kubelet stand-in finds the plugins itself; a real kubelet on this machine must not see them.
        'kubelet-registration-socket': null,
        'kubelet-registration-path': null,
      });
      plugins.set(node, await PluginProcess.start({ nodeId: node, extraArgs: args }));
    }
    await kubelet.registerNodes(nodes);
    const depArgs = containerArgs(only(manifest, 'Deployment'), 'controller');
    for (let i = 0; i < 2; i++) {
      const args = localizeArgs(depArgs, {
        'leader-election-identity': `replica-${i}`,
        // ControllerProcess serves metrics on a free local port.
        'http-endpoint': null,
        'log-level': null,
        'tls-ca-file': ctlTls.ca,
        'tls-cert-file': ctlTls.cert,
        'tls-key-file': ctlTls.key,
      });
      controllers.push(
        await ControllerProcess.start(
          [...args, '--kubeconfig', ctlKubeconfig, '--retry-interval-max', '3s'],
          join(dir, `controller-${i}.log`),
        ),
      );
    }
    const r = rest;
    return {
      mode: 'local',
      cluster,
      rest: r,
      nodes,
      createClaim(namespace, name, opts) {
        cluster.kubectl(['apply', '-f', '-'], claimJson(namespace, name, opts, true));
      },
      async mount(namespace, claim) {
        await waitBound(r, namespace, claim);
        const m = await kubelet.mount(namespace, claim);
        return {
          nodeId: m.nodeId,
          writeFiles: (sizes) => writeFiles(m.targetPath, sizes),
          checksumFiles: (names) => checksumFiles(m.targetPath, names),
        };
      },
      unmount: (namespace, claim) => kubelet.unmount(namespace, claim),
      unmountAll: () => kubelet.unmountAll(),
      completeExpansion: (namespace, claim) => kubelet.finishExpansion(namespace, claim),
      componentLogs: () =>
        [...controllers.flatMap((c) => c.lines), ...[...plugins.values()].flatMap((p) => p.lines)].map((l) =>
          JSON.stringify(l),
        ),
      async leftovers() {
        const out: string[] = [];
        for (const p of plugins.values()) {
          // The plugin's own FUSE mount stays while it runs.
          const fuse = `mount ${join(p.dir, 'state', 'fuse')}`;
          out.push(...(await leftoversUnder(join(p.dir, 'state'))).filter((x) => x !== fuse));
        }
        return out;
      },
      stop,
    };
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
}

const WORKLOAD_IMAGE = process.env.LOOPSNAP_E2E_WORKLOAD_IMAGE ?? 'busybox:1.36';

/** A cluster where hack/kind-e2e.sh (or you) installed the chart; real pods use the claims. */
export async function startClusterTarget(): Promise<E2eTarget> {
  const kubeconfig = process.env.KUBECONFIG;
  if (!kubeconfig) throw new Error('LOOPSNAP_E2E_TARGET=cluster needs KUBECONFIG');
  const cluster = clusterFromKubeconfig(kubeconfig.split(':')[0]!);
  const rest = await KubeRest.fromKubeConfig(cluster.kc);
  const pods = JSON.parse(
    cluster.kubectl(['-n', RELEASE_NS, 'get', 'pods', '-l', 'app.kubernetes.io/component=node', '-o', 'json']),
  ) as {
    items: Array<{ spec: { nodeName: string }; status: { conditions?: Array<{ type: string; status: string }> } }>;
  };
  const nodes = pods.items
    .filter((p) => p.status.conditions?.some((c) => c.type === 'Ready' && c.status === 'True'))
    .map((p) => p.spec.nodeName)
    .sort();
  if (nodes.length === 0) throw new Error(`no ready node plugin pod in namespace ${RELEASE_NS}`);
  const claimNodes = new Map<string, ClaimOptions>();
  const workloads: Array<{ namespace: string; pod: string }> = [];
  const podOf = (claim: string): string => `use-${claim}`.slice(0, 50);
  const deletePod = (namespace: string, pod: string): void => {
    cluster.tryKubectl(['-n', namespace, 'delete', 'pod', pod, '--ignore-not-found', '--wait=true', '--timeout=120s']);
  };
  const unmountAll = async (): Promise<void> => {
    for (const w of workloads.splice(0)) deletePod(w.namespace, w.pod);
  };
  const exec = (namespace: string, pod: string, script: string): string =>
    cluster.kubectl(['-n', namespace, 'exec', pod, '--', 'sh', '-c', script]);
  const parseSums = (out: string, base: string): Record<string, string> =>
    Object.fromEntries(
      out
        .trim()
        .split('\n')
        .filter(Boolean)
        .map((l) => {
          const [sum, path] = l.trim().split(/\s+/);
          return [path!.slice(base.length + 1), sum!];
        }),
    );
  const target: E2eTarget = {
    mode: 'cluster',
    cluster,
    rest,
    nodes,
    createClaim(namespace, name, opts) {
      claimNodes.set(`${namespace}/${name}`, opts);
      cluster.kubectl(['apply', '-f', '-'], claimJson(namespace, name, opts, false));
    },
    async mount(namespace, claim) {
      const opts = claimNodes.get(`${namespace}/${claim}`);
      if (!opts) throw new Error(`claim ${namespace}/${claim} was not created through this target`);
      const block = opts.volumeMode === 'Block';
      const pod = podOf(claim);
      cluster.kubectl(
        ['apply', '-f', '-'],
        JSON.stringify({
          apiVersion: 'v1',
          kind: 'Pod',
          metadata: { name: pod, namespace },
          spec: {
            nodeSelector: { 'kubernetes.io/hostname': opts.node },
            terminationGracePeriodSeconds: 1,
            containers: [
              {
                name: 'use',
                image: WORKLOAD_IMAGE,
                command: ['sleep', '86400'],
                ...(block
                  ? { volumeDevices: [{ name: 'v', devicePath: '/dev/loopsnap-vol' }] }
                  : { volumeMounts: [{ name: 'v', mountPath: '/data' }] }),
              },
            ],
            volumes: [{ name: 'v', persistentVolumeClaim: { claimName: claim } }],
          },
        }),
      );
      workloads.push({ namespace, pod });
      cluster.kubectl(['-n', namespace, 'wait', '--for=condition=Ready', `pod/${pod}`, '--timeout=300s']);
      const nodeId = cluster.kubectl(['-n', namespace, 'get', 'pod', pod, '-o', 'jsonpath={.spec.nodeName}']).trim();
      return {
        nodeId,
        async writeFiles(sizes) {
          if (block) throw new Error('file I/O on a raw block claim');
          const names = sizes.map((_, i) => `file-${i}.bin`);
          const script = sizes.map((s, i) => `head -c ${s} /dev/urandom > /data/${names[i]}`).join(' && ');
          return parseSums(
            exec(namespace, pod, `${script} && sync && sha256sum ${names.map((n) => `/data/${n}`).join(' ')}`),
            '/data',
          );
        },
        async checksumFiles(names) {
          return parseSums(exec(namespace, pod, `sha256sum ${names.map((n) => `/data/${n}`).join(' ')}`), '/data');
        },
      };
    },
    async unmount(namespace, claim) {
      const pod = podOf(claim);
      deletePod(namespace, pod);
      const i = workloads.findIndex((w) => w.namespace === namespace && w.pod === pod);
      if (i >= 0) workloads.splice(i, 1);
    },
    unmountAll,
    async completeExpansion(namespace, claim, size) {
      // A pod using the claim again: the real kubelet grows the device and reports the new size on the claim.
      await target.mount(namespace, claim);
      await waitFor(
        `kubelet to finish expanding ${namespace}/${claim} to ${size}`,
        async () =>
          (
            await rest.get<{ status?: { capacity?: { storage?: string } } }>(
              `/api/v1/namespaces/${namespace}/persistentvolumeclaims/${claim}`,
            )
          ).status?.capacity?.storage === size,
        { timeoutMs: 180_000 },
      );
    },
    componentLogs() {
      const logs = (component: string): string[] =>
        cluster
          .kubectl([
            '-n',
            RELEASE_NS,
            'logs',
            '-l',
            `app.kubernetes.io/component=${component}`,
            '--all-containers',
            '--tail=-1',
          ])
          .split('\n');
      return [...logs('controller'), ...logs('node')];
    },
    leftovers: async () => [],
    async stop() {
      await unmountAll();
      rest.close();
    },
  };
  return target;
}

export function startE2eTarget(localNodes: readonly string[]): Promise<E2eTarget> {
  return e2eMode() === 'cluster' ? startClusterTarget() : startLocalTarget(localNodes);
}
