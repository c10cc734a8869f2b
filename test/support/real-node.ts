// SPDX-License-Identifier: Apache-2.0
// A cluster with real kubelets and the chart installed from the image, for test/node/: real pods mount the
// claims and the kubelet calls NodeStage/NodePublish/NodeExpand itself. Two targets, same test files:
//
//   local    (default; root) a control plane of its own (.loopsnap/node-cluster, ports of the slot + 7) and
//            this machine's real node (hack/node.sh), the image built and imported by hack/image.sh, the chart
//            installed with the node's values (hack/node.sh values). Started by the first file that needs it,
//            torn down once by global-setup.ts (workloads, chart, node, control plane, in that order).
//   cluster  (LOOPSNAP_E2E_TARGET=cluster, KUBECONFIG; hack/kind-e2e.sh) a cluster where the chart is
//            installed as release `loopsnap` in namespace `loopsnap`.
//
// What is observed on a node (mounts, loop devices, files under the state dir) goes through an inspector pod
// (privileged, host PID namespace; commands run with nsenter in the mount namespace of the node's kubelet) in both
// targets, so both check the same things.
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { parse } from 'yaml';
import { KubeRest } from '../../common/src/kube-rest.js';
import { TEST_CLUSTER_ENV } from './cluster-env.js';
import { toolBin } from './cluster.js';
import { REPO_ROOT } from './paths.js';
import { waitFor } from './wait.js';

export const RELEASE = 'loopsnap';
export const RELEASE_NS = 'loopsnap';
export const CHART_DIR = join(REPO_ROOT, 'charts', 'loopsnap');
const NODE_SCRIPT = join(REPO_ROOT, 'hack', 'node.sh');
const CLUSTER_SCRIPT = join(REPO_ROOT, 'hack', 'cluster.sh');
const IMAGE_SCRIPT = join(REPO_ROOT, 'hack', 'image.sh');

export type RealTarget = 'local' | 'cluster';

export function realTarget(): RealTarget {
  const m = process.env.LOOPSNAP_E2E_TARGET ?? 'local';
  if (m !== 'local' && m !== 'cluster') throw new Error(`LOOPSNAP_E2E_TARGET must be local or cluster, got ${m}`);
  return m;
}

/** Environment of the local target's scripts: its own cluster directory and ports (slot ports + 7). */
export function nodeClusterEnv(): NodeJS.ProcessEnv {
  const shift = (key: keyof typeof TEST_CLUSTER_ENV, by = 7): string => String(Number(TEST_CLUSTER_ENV[key]) + by);
  const suffix = (TEST_CLUSTER_ENV.LOOPSNAP_CLUSTER_DIR ?? '').match(/test-cluster(-\d+)?$/)?.[1] ?? '';
  return {
    ...process.env,
    LOOPSNAP_CLUSTER_DIR: join(REPO_ROOT, '.loopsnap', `node-cluster${suffix}`),
    LOOPSNAP_PORT_APISERVER: shift('LOOPSNAP_PORT_APISERVER'),
    LOOPSNAP_PORT_ETCD: shift('LOOPSNAP_PORT_ETCD'),
    LOOPSNAP_PORT_ETCD_PEER: shift('LOOPSNAP_PORT_ETCD_PEER'),
    LOOPSNAP_PORT_KCM: shift('LOOPSNAP_PORT_KCM'),
    LOOPSNAP_PORT_SCHEDULER: shift('LOOPSNAP_PORT_KCM', 8),
  };
}

function script(path: string, args: readonly string[], timeoutMs = 900_000): string {
  try {
    return execFileSync(path, args, {
      env: nodeClusterEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: timeoutMs,
      maxBuffer: 64 * 1024 * 1024,
    })
      .toString()
      .trim();
  } catch (err) {
    const e = err as { stderr?: Buffer; message: string };
    const tail = (e.stderr?.toString() ?? '').trim().split('\n').slice(-15).join('\n');
    throw new Error(`${path.slice(REPO_ROOT.length)} ${args.join(' ')} failed:\n${tail || e.message}`, { cause: err });
  }
}

export interface ToolRun {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

function run(
  tool: string,
  args: readonly string[],
  opts: { input?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): ToolRun {
  const { input, timeoutMs = 300_000, env = process.env } = opts;
  try {
    const stdout = execFileSync(tool, args, {
      input,
      env,
      stdio: ['pipe', 'pipe', 'pipe'],
      timeout: timeoutMs,
      maxBuffer: 64 * 1024 * 1024,
    }).toString();
    return { code: 0, stdout, stderr: '' };
  } catch (err) {
    const e = err as { status?: number | null; stdout?: Buffer; stderr?: Buffer; message: string };
    return { code: e.status ?? 1, stdout: e.stdout?.toString() ?? '', stderr: e.stderr?.toString() ?? e.message };
  }
}

/** Values of the local target's chart install: the node's own plus the image built here. */
function localInstallArgs(): string[] {
  const valuesFile = join(nodeClusterEnv().LOOPSNAP_CLUSTER_DIR ?? '', 'node', 'chart-values.yaml');
  const ref = script(IMAGE_SCRIPT, ['ref', 'loopsnap']);
  const at = ref.lastIndexOf(':');
  return [
    '-f',
    valuesFile,
    '--set',
    `image.repository=${ref.slice(0, at)}`,
    '--set',
    `image.tag=${ref.slice(at + 1)}`,
    '--set',
    'image.pullPolicy=Never',
  ];
}

/**
 * Call first inside a describe: false (and one failing, counted test) when this machine cannot run the local
 * target, which needs root; the describe then returns without its tests.
 */
export function realNodeUsable(): boolean {
  if (realTarget() !== 'local' || process.getuid?.() === 0) return true;
  it('needs root to run a kubelet on this machine', () => {
    expect.fail('the real-node tests need root (run npm test as root)');
  });
  return false;
}

export interface RealCluster {
  readonly target: RealTarget;
  readonly kubeconfigPath: string;
  readonly kc: KubeConfig;
  readonly rest: KubeRest;
  /** The file's own namespace (deleted after the file, with its pods and claims). */
  readonly namespace: string;
  /** Nodes with a Ready node plugin pod. */
  readonly nodes: readonly string[];
  /** Image of the test pods (sh, dd, sha256sum, ...). */
  readonly workloadImage: string;
  kubectl(args: readonly string[], input?: string): string;
  tryKubectl(args: readonly string[], input?: string): ToolRun;
  helm(args: readonly string[]): string;
  /** `helm upgrade --install` of the chart as the target installs it, plus `extra` flags; waits for it. */
  installChart(extra?: readonly string[]): void;
  /** Chart values of the release (defaults included). */
  values(): ChartValues;
  /** Runs `sh -c script` on `node` (in the node's root file system); returns stdout, throws on failure. */
  onNode(node: string, script: string): string;
}

export interface ChartValues {
  node: { kubeletDir: string; stateDir: string };
  driverName: string;
}

/** A shared install is ready when the node plugins are Ready, registered with their kubelet, and lead. */
async function waitInstalled(c: Pick<RealCluster, 'kubectl'>): Promise<string[]> {
  return waitFor(
    'node plugin pods Ready and registered with their kubelets (CSINode), a controller replica leading',
    () => {
      type Pod = {
        spec: { nodeName?: string };
        status: { conditions?: Array<{ type: string; status: string }> };
      };
      const pods = (
        JSON.parse(
          c.kubectl(['-n', RELEASE_NS, 'get', 'pods', '-l', 'app.kubernetes.io/component=node', '-o', 'json']),
        ) as { items: Pod[] }
      ).items;
      const ready = pods
        .filter((p) => p.status.conditions?.some((k) => k.type === 'Ready' && k.status === 'True'))
        .map((p) => p.spec.nodeName ?? '');
      if (ready.length === 0 || ready.length !== pods.length) return undefined;
      const registered = ready.every((n) =>
        c
          .kubectl(['get', 'csinode', n, '-o', 'jsonpath={.spec.drivers[*].name}'])
          .split(' ')
          .includes('csi.loopsnap.dev'),
      );
      const leader = c
        .kubectl([
          '-n',
          RELEASE_NS,
          'get',
          'lease',
          'loopsnap-controller-leader',
          '-o',
          'jsonpath={.spec.holderIdentity}',
        ])
        .trim();
      return registered && leader !== '' ? ready.sort() : undefined;
    },
    { timeoutMs: 300_000, intervalMs: 500 },
  );
}

/** Brings the local target up (idempotent: every step is a no-op when already done). */
function ensureLocal(): string {
  script(NODE_SCRIPT, ['up']);
  const dir = nodeClusterEnv().LOOPSNAP_CLUSTER_DIR ?? '';
  script(IMAGE_SCRIPT, ['build']);
  script(IMAGE_SCRIPT, ['import', '--address', join(dir, 'node', 'run', 'containerd.sock'), 'loopsnap', 'busybox']);
  return join(dir, 'kubeconfig');
}

/**
 * The real cluster for a test file: beforeAll brings it up (local) and makes sure the chart is installed,
 * then creates the file's namespace; afterAll deletes the namespace and waits until its pods are gone.
 */
export function useRealCluster(prefix = 'node'): RealCluster {
  const target = realTarget();
  const state: {
    kubeconfigPath?: string;
    kc?: KubeConfig;
    rest?: KubeRest;
    namespace?: string;
    nodes?: string[];
    workloadImage?: string;
  } = {};
  const kubectlPath = toolBin('kubectl');
  const helmPath = toolBin('helm');
  const inspectors = new Map<string, string>();
  const must = <T>(v: T | undefined): T => {
    if (v === undefined) throw new Error('real cluster not ready: use it inside tests or hooks');
    return v;
  };
  const c: RealCluster = {
    target,
    get kubeconfigPath() {
      return must(state.kubeconfigPath);
    },
    get kc() {
      return must(state.kc);
    },
    get rest() {
      return must(state.rest);
    },
    get namespace() {
      return must(state.namespace);
    },
    get nodes() {
      return must(state.nodes);
    },
    get workloadImage() {
      return must(state.workloadImage);
    },
    tryKubectl: (args, input) => run(kubectlPath, ['--kubeconfig', must(state.kubeconfigPath), ...args], { input }),
    kubectl(args, input) {
      const r = c.tryKubectl(args, input);
      if (r.code !== 0) throw new Error(`kubectl ${args.join(' ')} failed: ${r.stderr.trim()}`);
      return r.stdout;
    },
    helm(args) {
      const r = run(helmPath, [...args, '--kubeconfig', must(state.kubeconfigPath)], { timeoutMs: 900_000 });
      if (r.code !== 0) throw new Error(`helm ${args.join(' ')} failed: ${r.stderr.trim()}`);
      return r.stdout;
    },
    installChart(extra = []) {
      const base = target === 'local' ? localInstallArgs() : ['--reuse-values'];
      c.helm(['upgrade', '--install', RELEASE, CHART_DIR, '-n', RELEASE_NS, '--create-namespace', ...base, ...extra]);
    },
    values() {
      return parse(c.helm(['get', 'values', RELEASE, '-n', RELEASE_NS, '--all', '-o', 'yaml'])) as ChartValues;
    },
    onNode(node, sh) {
      const pod = inspectors.get(node);
      if (!pod) throw new Error(`no inspector pod on node ${node}`);
      // The kubelet's mount namespace is the node's (PID 1's may not be open to containers). The node's own
      // /bin/sh by path: busybox's nsenter would run its own sh, whose applets (losetup without -l, ...)
      // shadow the node's tools.
      const inHost = ['sh', '-c', 'exec nsenter -t "$(pidof kubelet)" -m -- /bin/sh -c "$1"', 'on-node', sh];
      return c.kubectl(['-n', must(state.namespace), 'exec', pod, '--', ...inHost]);
    },
  };

  beforeAll(async () => {
    state.kubeconfigPath =
      target === 'local'
        ? ensureLocal()
        : (process.env.KUBECONFIG?.split(':')[0] ??
          (() => {
            throw new Error('LOOPSNAP_E2E_TARGET=cluster needs KUBECONFIG');
          })());
    state.workloadImage =
      target === 'local'
        ? script(IMAGE_SCRIPT, ['ref', 'busybox'])
        : (process.env.LOOPSNAP_E2E_WORKLOAD_IMAGE ?? 'busybox:1.36');
    const kc = new KubeConfig();
    kc.loadFromFile(state.kubeconfigPath);
    state.kc = kc;
    state.rest = await KubeRest.fromKubeConfig(kc);
    if (target === 'local') c.installChart(['--wait', '--timeout', '10m']);
    state.nodes = await waitInstalled(c);
    const ns = `${prefix}-${randomBytes(4).toString('hex')}`;
    c.kubectl(['create', 'namespace', ns]);
    state.namespace = ns;
    for (const node of state.nodes) {
      const pod = `inspect-${randomBytes(3).toString('hex')}`;
      c.kubectl(['apply', '-f', '-'], JSON.stringify(inspectorPod(ns, pod, node, state.workloadImage)));
      inspectors.set(node, pod);
    }
    for (const pod of inspectors.values()) {
      c.kubectl(['-n', ns, 'wait', '--for=condition=Ready', `pod/${pod}`, '--timeout=180s']);
    }
  }, 1_800_000);

  afterAll(async () => {
    if (state.namespace) {
      c.tryKubectl(['delete', 'namespace', state.namespace, '--wait=true', '--timeout=300s']);
    }
    state.rest?.close();
  }, 600_000);

  return c;
}

function inspectorPod(namespace: string, name: string, node: string, image: string): object {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace, labels: { 'app.kubernetes.io/name': 'loopsnap-test-inspector' } },
    spec: {
      nodeName: node,
      hostPID: true,
      terminationGracePeriodSeconds: 0,
      tolerations: [{ operator: 'Exists' }],
      containers: [
        {
          name: 'inspect',
          image,
          command: ['sleep', '86400'],
          securityContext: { privileged: true },
        },
      ],
    },
  };
}

/** The local target without vitest (bench/node.ts): node, image and chart up and ready; the kubeconfig path. */
export async function bringUpLocal(): Promise<string> {
  const kubeconfig = ensureLocal();
  const helm = run(toolBin('helm'), [
    'upgrade',
    '--install',
    RELEASE,
    CHART_DIR,
    '-n',
    RELEASE_NS,
    '--create-namespace',
    ...localInstallArgs(),
    '--kubeconfig',
    kubeconfig,
  ]);
  if (helm.code !== 0) throw new Error(`helm upgrade --install failed: ${helm.stderr.trim()}`);
  const kubectl = (args: readonly string[]): string => {
    const r = run(toolBin('kubectl'), ['--kubeconfig', kubeconfig, ...args]);
    if (r.code !== 0) throw new Error(`kubectl ${args.join(' ')} failed: ${r.stderr.trim()}`);
    return r.stdout;
  };
  await waitInstalled({ kubectl });
  return kubeconfig;
}

/** Where teardown keeps the node's logs of the last run (CI prints the tail of failures; these explain them). */
export const NODE_LOG_DIR = join(REPO_ROOT, '.loopsnap', 'test-logs', 'node-cluster');

/**
 * Copies the component logs (kubelet, containerd, scheduler, control plane), the pods' logs (node plugin,
 * controller, test pods) and, when the API answers, every Event, to NODE_LOG_DIR before teardown removes them.
 */
function saveLogs(dir: string, kubeconfig: string | undefined): void {
  rmSync(NODE_LOG_DIR, { recursive: true, force: true });
  mkdirSync(NODE_LOG_DIR, { recursive: true });
  for (const [from, to] of [
    [join(dir, 'logs'), 'components'],
    [join(dir, 'node', 'pod-logs'), 'pods'],
  ] as const) {
    if (existsSync(from)) cpSync(from, join(NODE_LOG_DIR, to), { recursive: true, dereference: true });
  }
  if (kubeconfig) {
    const events = run(toolBin('kubectl'), ['--kubeconfig', kubeconfig, 'get', 'events', '-A', '-o', 'wide']);
    writeFileSync(join(NODE_LOG_DIR, 'events.txt'), events.stdout + events.stderr);
  }
}

/** Global teardown of the local target: workloads, chart, node, control plane (no-op when never started). */
export function teardownLocal(): void {
  const env = nodeClusterEnv();
  const dir = env.LOOPSNAP_CLUSTER_DIR ?? '';
  const kubeconfig = join(dir, 'kubeconfig');
  const up = run(CLUSTER_SCRIPT, ['status'], { env, timeoutMs: 30_000 }).code === 0;
  saveLogs(dir, up ? kubeconfig : undefined);
  if (up) {
    // The kubelet tears the pods' volumes down while the node plugin still runs.
    execFileSync(NODE_SCRIPT, ['drain'], { env, stdio: ['ignore', 'ignore', 'inherit'], timeout: 600_000 });
    run(
      toolBin('helm'),
      ['uninstall', RELEASE, '-n', RELEASE_NS, '--wait', '--timeout', '5m', '--kubeconfig', kubeconfig],
      {
        timeoutMs: 600_000,
      },
    );
  }
  execFileSync(NODE_SCRIPT, ['down'], { env, stdio: ['ignore', 'ignore', 'inherit'], timeout: 600_000 });
  execFileSync(CLUSTER_SCRIPT, ['purge'], { env, stdio: ['ignore', 'ignore', 'inherit'], timeout: 300_000 });
  // The next run starts with fresh etcd: volumes in the node plugin's state dir (under the kubelet dir) would
  // be orphans. `down` succeeded, so nothing is mounted below it any more. containerd's images stay.
  rmSync(join(dir, 'node', 'kubelet'), { recursive: true, force: true });
}
