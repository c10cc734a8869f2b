// SPDX-License-Identifier: Apache-2.0
// `npm run bench -- node --json`: the user-visible steps on the real node (kubelet + containerd, the chart
// from the image built here; test/support/real-node.ts) against the same steps with the kubelet stand-in
// (node plugin and controller as processes, test/support/loopsnap-env.ts), in the same run, iterations
// alternating between the two. Medians over --runs (default 5); each ratio is real / stand-in.
//
//   pod_running_ms        apply of a new claim + a pod using it -> pod Ready (real) | claim + selected node ->
//                         NodeStage + NodePublish returned (stand-in)
//   snapshot_ready_ms     apply of a VolumeSnapshot of a volume being written -> readyToUse
//   restore_running_ms    apply of a claim restored from that snapshot + a second pod -> pod Ready (real) |
//                         claim -> staged and published (stand-in)
//
// The writer: a pod appending 16 KiB files (real), this process appending 16 KiB files to the published path
// (stand-in). State is polled through the API every 25 ms on both sides.
import { execFileSync } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { KubeConfig } from '@kubernetes/client-node';
import { KubeRest } from '../common/src/kube-rest.js';
import { LoopsnapEnv } from '../test/support/loopsnap-env.js';
import { isRoot } from '../test/support/node-plugin.js';
import { REPO_ROOT } from '../test/support/paths.js';
import { bringUpLocal, teardownLocal } from '../test/support/real-node.js';
import { clusterHandle } from './controller.js';
import type { BenchContext, BenchSuite } from './suite.js';

const STANDIN_ENV: Record<string, string> = {
  LOOPSNAP_CLUSTER_DIR: join(REPO_ROOT, '.loopsnap', 'bench-node'),
  LOOPSNAP_PORT_APISERVER: '18643',
  LOOPSNAP_PORT_ETCD: '14579',
  LOOPSNAP_PORT_ETCD_PEER: '14580',
  LOOPSNAP_PORT_KCM: '10957',
};
const CLUSTER = join(REPO_ROOT, 'hack', 'cluster.sh');
const POLL_MS = 25;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const round = (n: number): number => Math.round(n);

type Step = 'pod_running_ms' | 'snapshot_ready_ms' | 'restore_running_ms';
type Timings = Record<Step, number[]>;
const emptyTimings = (): Timings => ({ pod_running_ms: [], snapshot_ready_ms: [], restore_running_ms: [] });

interface Obj {
  status?: { phase?: string; readyToUse?: boolean; conditions?: Array<{ type: string; status: string }> };
}

async function until(what: string, f: () => Promise<boolean>, timeoutMs = 300_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await f().catch(() => false))) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(POLL_MS);
  }
}

const claimYaml = (name: string, storageClass: string, snapshot?: string): string =>
  JSON.stringify({
    apiVersion: 'v1',
    kind: 'PersistentVolumeClaim',
    metadata: { name },
    spec: {
      storageClassName: storageClass,
      accessModes: ['ReadWriteOnce'],
      resources: { requests: { storage: '64Mi' } },
      ...(snapshot
        ? { dataSource: { apiGroup: 'snapshot.storage.k8s.io', kind: 'VolumeSnapshot', name: snapshot } }
        : {}),
    },
  });

const snapshotYaml = (name: string, claim: string): string =>
  JSON.stringify({
    apiVersion: 'snapshot.storage.k8s.io/v1',
    kind: 'VolumeSnapshot',
    metadata: { name },
    spec: { source: { persistentVolumeClaimName: claim } },
  });

const podYaml = (name: string, claim: string, image: string, script: string): string =>
  JSON.stringify({
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name },
    spec: {
      terminationGracePeriodSeconds: 1,
      containers: [
        { name: 'w', image, command: ['sh', '-c', script], volumeMounts: [{ name: 'v', mountPath: '/data' }] },
      ],
      volumes: [{ name: 'v', persistentVolumeClaim: { claimName: claim } }],
    },
  });

const POD_WRITER = 'i=0; while :; do i=$((i+1)); head -c 16384 /dev/urandom > /data/f-$i; sleep 0.01; done';

/** One iteration on the real node, in namespace `ns` (created and deleted here). */
async function realIteration(kubeconfig: string, rest: KubeRest, image: string, ns: string, t: Timings): Promise<void> {
  const c = clusterHandle(kubeconfig, ns);
  c.kubectl(['create', 'namespace', ns], { namespaced: false });
  const apply = (json: string): void => void c.kubectl(['apply', '-f', '-'], { input: json });
  const podReady = (name: string) => async () =>
    (await rest.get<Obj>(`/api/v1/namespaces/${ns}/pods/${name}`)).status?.conditions?.some(
      (k) => k.type === 'Ready' && k.status === 'True',
    ) === true;
  try {
    let t0 = performance.now();
    apply(claimYaml('data', 'loopsnap'));
    apply(podYaml('writer', 'data', image, POD_WRITER));
    await until('writer Ready', podReady('writer'));
    t.pod_running_ms.push(performance.now() - t0);
    await until('writer writing', async () => c.kubectl(['exec', 'writer', '--', 'ls', '/data']).includes('f-20'));
    t0 = performance.now();
    apply(snapshotYaml('snap', 'data'));
    await until(
      'snapshot ready',
      async () =>
        (await rest.get<Obj>(`/apis/snapshot.storage.k8s.io/v1/namespaces/${ns}/volumesnapshots/snap`)).status
          ?.readyToUse === true,
    );
    t.snapshot_ready_ms.push(performance.now() - t0);
    t0 = performance.now();
    apply(claimYaml('restored', 'loopsnap', 'snap'));
    apply(podYaml('reader', 'restored', image, 'exec sleep 86400'));
    await until('reader Ready', podReady('reader'));
    t.restore_running_ms.push(performance.now() - t0);
  } finally {
    c.kubectl(['delete', 'namespace', ns, '--wait=true', '--timeout=300s'], { namespaced: false });
  }
}

/** The same steps with the stand-in: the node plugin's published path is the "pod". */
async function standInIteration(env: LoopsnapEnv, node: string, t: Timings, tag: string): Promise<void> {
  const ns = env.namespace;
  const apply = (json: string): void => void env.kubectl(['apply', '-f', '-'], json);
  const claim = (name: string, snapshot?: string): string => {
    const o = JSON.parse(claimYaml(name, 'loopsnap-wffc', snapshot)) as { metadata: Record<string, unknown> };
    // What the scheduler writes once it placed the claim's first pod.
    o.metadata.annotations = { 'volume.kubernetes.io/selected-node': node };
    return JSON.stringify(o);
  };
  const bound = (name: string) => async () =>
    (await env.rest.get<Obj>(`/api/v1/namespaces/${ns}/persistentvolumeclaims/${name}`)).status?.phase === 'Bound';
  const data = `data-${tag}`;
  const restored = `restored-${tag}`;
  const snap = `snap-${tag}`;
  let t0 = performance.now();
  apply(claim(data));
  await until('claim bound', bound(data));
  const m = await env.kubelet.mount(ns, data);
  t.pod_running_ms.push(performance.now() - t0);
  let writing = true;
  let written = 0;
  const dir = join(m.targetPath, 'w');
  await mkdir(dir, { recursive: true });
  const writer = (async () => {
    for (; writing; written++) {
      await writeFile(join(dir, `f-${written}`), randomBytes(16384));
      await sleep(10);
    }
  })();
  try {
    await until('writer writing', async () => written >= 20);
    t0 = performance.now();
    apply(snapshotYaml(snap, data));
    await until(
      'snapshot ready',
      async () =>
        (await env.rest.get<Obj>(`/apis/snapshot.storage.k8s.io/v1/namespaces/${ns}/volumesnapshots/${snap}`)).status
          ?.readyToUse === true,
    );
    t.snapshot_ready_ms.push(performance.now() - t0);
  } finally {
    writing = false;
    await writer;
  }
  t0 = performance.now();
  apply(claim(restored, snap));
  await until('restored claim bound', bound(restored));
  await env.kubelet.mount(ns, restored);
  t.restore_running_ms.push(performance.now() - t0);
  await env.kubelet.unmount(ns, restored);
  await env.kubelet.unmount(ns, data);
}

async function run(ctx: BenchContext): Promise<Record<string, number | string | boolean | null>> {
  if (!isRoot) throw new Error('the node benchmark runs a kubelet and node plugins: it needs root');
  const i = ctx.args.indexOf('--runs');
  const runs = i >= 0 ? Number(ctx.args[i + 1]) : 5;
  ctx.log('[node] bringing up the real node, the image and the chart');
  const kubeconfig = await bringUpLocal();
  const kc = new KubeConfig();
  kc.loadFromFile(kubeconfig);
  const rest = await KubeRest.fromKubeConfig(kc);
  const image = execFileSync(join(REPO_ROOT, 'hack', 'image.sh'), ['ref', 'busybox'])
    .toString()
    .trim();
  ctx.log('[node] starting the stand-in: a private control plane, one node plugin, one controller');
  const standInEnv = { ...process.env, ...STANDIN_ENV };
  const standInKubeconfig = execFileSync(CLUSTER, ['up'], { env: standInEnv, stdio: ['ignore', 'pipe', 'inherit'] })
    .toString()
    .trim()
    .split('\n')
    .pop() as string;
  const standInNs = `bench-${Date.now().toString(36)}`;
  const handle = clusterHandle(standInKubeconfig, standInNs);
  handle.kubectl(['create', 'namespace', standInNs], { namespaced: false });
  let env: LoopsnapEnv | undefined;
  const real = emptyTimings();
  const standIn = emptyTimings();
  try {
    env = await LoopsnapEnv.start(handle, { nodes: ['bench-a'], controllerLogLevel: 'warn', pluginLogLevel: 'warn' });
    for (let r = 0; r < runs; r++) {
      ctx.log(`[node] run ${r + 1}/${runs}: real node`);
      await realIteration(kubeconfig, rest, image, `bench-node-${r}`, real);
      ctx.log(`[node] run ${r + 1}/${runs}: stand-in`);
      await standInIteration(env, 'bench-a', standIn, String(r));
    }
  } finally {
    await env?.stop().catch(() => undefined);
    rest.close();
    execFileSync(CLUSTER, ['purge'], { env: standInEnv, stdio: ['ignore', 'ignore', 'inherit'] });
    if (!ctx.args.includes('--keep')) teardownLocal();
  }
  const out: Record<string, number | string | boolean | null> = { runs };
  for (const step of Object.keys(real) as Step[]) {
    const a = median(real[step]);
    const b = median(standIn[step]);
    out[`real_${step}`] = round(a);
    out[`standin_${step}`] = round(b);
    out[`${step.replace(/_ms$/, '')}_real_vs_standin`] = Math.round((a / b) * 100) / 100;
    ctx.log(`[node] ${step}: real ${real[step].map(round).join(' ')} | stand-in ${standIn[step].map(round).join(' ')}`);
  }
  return out;
}

export const nodeSuite: BenchSuite = {
  description: 'pod Running, snapshot ready, restore Running: real kubelet node vs the kubelet stand-in',
  run,
};
