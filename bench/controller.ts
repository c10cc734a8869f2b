// SPDX-License-Identifier: Apache-2.0
// `npm run bench -- controller --json`: snapshot and restore latency through the whole stack, on a private
// control plane (its own directory and ports) with two real node plugins and one controller replica.
//
//   snapshot_ready_p50_ms / _p99_ms  kubectl apply of a VolumeSnapshot -> readyToUse seen by a watch (50, sequential)
//   burst_200_ready_s                200 VolumeSnapshots (4 source PVCs x 50) created at once -> all readyToUse
//   restore_pvc_bound_ms             kubectl apply of a PVC restored from a ready snapshot -> Bound (median of 5)
//   kubectl_apply_baseline_p50_ms    kubectl apply of a ConfigMap -> seen by a watch: the floor any kubectl-driven
//                                    latency pays here (process start, TLS, admission); ratios are against it
//
// Flags: --snapshots N (default 50), --burst N (default 200), --keep (leave the control plane running).
import { execFile, execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { KubeConfig, Watch } from '@kubernetes/client-node';
import { KubeRest } from '../common/src/kube-rest.js';
import type { ClusterHandle } from '../test/support/cluster.js';
import { LoopsnapEnv } from '../test/support/loopsnap-env.js';
import { isRoot } from '../test/support/node-plugin.js';
import { REPO_ROOT } from '../test/support/paths.js';
import type { BenchContext, BenchSuite } from './suite.js';

const execFileP = promisify(execFile);

const BENCH_CLUSTER_ENV: Record<string, string> = {
  LOOPSNAP_CLUSTER_DIR: join(REPO_ROOT, '.loopsnap', 'bench-controller'),
  LOOPSNAP_PORT_APISERVER: '18443',
  LOOPSNAP_PORT_ETCD: '14379',
  LOOPSNAP_PORT_ETCD_PEER: '14380',
  LOOPSNAP_PORT_KCM: '10757',
};
const CLUSTER = join(REPO_ROOT, 'hack', 'cluster.sh');

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank] as number;
}

const round = (n: number, digits = 1): number => Math.round(n * 10 ** digits) / 10 ** digits;

/**
 * Remembers when each object of a namespaced collection first satisfied a predicate: the time the watch event
 * arrived. The watch is restarted whenever it ends, and a list every 2 s catches anything a broken watch
 * missed (such objects get the list's time, never an earlier one).
 */
class Arrivals<T extends { metadata?: { name?: string } }> {
  private readonly seen = new Map<string, number>();
  private readonly waiters = new Map<string, Array<(t: number) => void>>();
  private ctl: AbortController | undefined;
  private poll: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    private readonly kc: KubeConfig,
    private readonly rest: KubeRest,
    private readonly path: string,
    private readonly done: (o: T) => boolean,
  ) {}

  private mark(obj: T, t: number): void {
    const name = obj.metadata?.name;
    if (!name || this.seen.has(name) || !this.done(obj)) return;
    this.seen.set(name, t);
    for (const w of this.waiters.get(name) ?? []) w(t);
    this.waiters.delete(name);
  }

  private async watch(): Promise<void> {
    if (this.stopped) return;
    this.ctl = await new Watch(this.kc).watch(
      this.path,
      {},
      (_type: string, obj: T) => this.mark(obj, performance.now()),
      () => {
        if (!this.stopped) setTimeout(() => void this.watch().catch(() => undefined), 100);
      },
    );
  }

  async start(): Promise<void> {
    await this.watch();
    this.poll = setInterval(() => {
      this.rest.get<{ items: T[] }>(this.path).then(
        (l) => {
          const t = performance.now();
          for (const o of l.items) this.mark(o, t);
        },
        () => undefined,
      );
    }, 2000);
  }

  stop(): void {
    this.stopped = true;
    if (this.poll) clearInterval(this.poll);
    this.ctl?.abort();
  }

  when(name: string, timeoutMs = 120_000): Promise<number> {
    const t = this.seen.get(name);
    if (t !== undefined) return Promise.resolve(t);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${name}: not done after ${timeoutMs} ms`)), timeoutMs);
      const list = this.waiters.get(name) ?? [];
      list.push((at) => {
        clearTimeout(timer);
        resolve(at);
      });
      this.waiters.set(name, list);
    });
  }
}

export function clusterHandle(kubeconfigPath: string, namespace: string): ClusterHandle {
  const kc = new KubeConfig();
  kc.loadFromFile(kubeconfigPath);
  const bin = execFileSync(join(REPO_ROOT, 'hack', 'build-tools.sh'), ['--bin-dir'])
    .toString()
    .trim();
  const kubectlPath = join(bin, 'kubectl');
  return {
    kubeconfigPath,
    kc,
    namespace,
    kubectlPath,
    kubectl(args, opts) {
      const full = ['--kubeconfig', kubeconfigPath, ...(opts?.namespaced === false ? [] : ['-n', namespace]), ...args];
      return execFileSync(kubectlPath, full, {
        stdio: ['pipe', 'pipe', 'pipe'],
        timeout: 120_000,
        ...(opts?.input === undefined ? {} : { input: opts.input }),
      }).toString();
    },
  };
}

const vsYaml = (name: string, claim: string) =>
  `apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\nmetadata: {name: ${name}}\nspec: {source: {persistentVolumeClaimName: ${claim}}}\n`;
const pvcYaml = (name: string, snap?: string) =>
  `apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: ${name}}\nspec: {storageClassName: loopsnap, accessModes: [ReadWriteOnce], resources: {requests: {storage: 64Mi}}${snap ? `, dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: ${snap}}` : ''}}\n`;

async function run(ctx: BenchContext): Promise<Record<string, number | string | boolean | null>> {
  if (!isRoot) throw new Error('the controller benchmark runs real node plugins: it needs root (loop devices, FUSE)');
  const arg = (flag: string, def: number): number => {
    const i = ctx.args.indexOf(flag);
    return i >= 0 ? Number(ctx.args[i + 1]) : def;
  };
  const nSeq = arg('--snapshots', 50);
  const nBurst = arg('--burst', 200);
  const env0 = { ...process.env, ...BENCH_CLUSTER_ENV };
  ctx.log('[controller] starting a private control plane');
  const kubeconfigPath = execFileSync(CLUSTER, ['up'], {
    env: env0,
    stdio: ['ignore', 'pipe', 'inherit'],
    timeout: 900_000,
  })
    .toString()
    .trim()
    .split('\n')
    .pop() as string;
  const ns = `bench-${Date.now().toString(36)}`;
  const kc = new KubeConfig();
  kc.loadFromFile(kubeconfigPath);
  const rest = await KubeRest.fromKubeConfig(kc);
  await rest.create('/api/v1/namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } });
  const cluster = clusterHandle(kubeconfigPath, ns);
  const kubectlApply = (yaml: string) =>
    new Promise<void>((resolve, reject) => {
      const c = execFile(cluster.kubectlPath, ['--kubeconfig', kubeconfigPath, '-n', ns, 'apply', '-f', '-'], (err) =>
        err ? reject(err) : resolve(),
      );
      c.stdin?.end(yaml);
    });
  let env: LoopsnapEnv | undefined;
  const snaps = new Arrivals<{ metadata?: { name?: string }; status?: { readyToUse?: boolean } }>(
    kc,
    rest,
    `/apis/snapshot.storage.k8s.io/v1/namespaces/${ns}/volumesnapshots`,
    (o) => o.status?.readyToUse === true,
  );
  const claims = new Arrivals<{ metadata?: { name?: string }; status?: { phase?: string } }>(
    kc,
    rest,
    `/api/v1/namespaces/${ns}/persistentvolumeclaims`,
    (o) => o.status?.phase === 'Bound',
  );
  const maps = new Arrivals(kc, rest, `/api/v1/namespaces/${ns}/configmaps`, () => true);
  try {
    ctx.log('[controller] starting two node plugins and the controller');
    env = await LoopsnapEnv.start(cluster, {
      nodes: ['bench-a', 'bench-b'],
      controllers: 1,
      controllerLogLevel: 'info',
      pluginLogLevel: 'warn',
      controllerArgs: ['--retry-interval-max', '10s'],
    });
    await Promise.all([snaps.start(), claims.start(), maps.start()]);
    const sources = ['src-0', 'src-1', 'src-2', 'src-3'];
    await kubectlApply(sources.map((s) => pvcYaml(s)).join('---\n'));
    for (const s of sources) await claims.when(s);

    ctx.log('[controller] baseline: kubectl apply of a ConfigMap -> watch event');
    const base: number[] = [];
    for (let i = 0; i < 20; i++) {
      const name = `base-${i}`;
      const t0 = performance.now();
      await kubectlApply(`apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ${name}}\ndata: {k: v}\n`);
      base.push((await maps.when(name)) - t0);
    }

    ctx.log(`[controller] ${nSeq} sequential snapshots: kubectl apply -> readyToUse`);
    const seq: number[] = [];
    for (let i = 0; i < nSeq; i++) {
      const name = `seq-${i}`;
      const t0 = performance.now();
      await kubectlApply(vsYaml(name, sources[i % 2] as string));
      seq.push((await snaps.when(name)) - t0);
    }

    ctx.log('[controller] restores: kubectl apply of a PVC from a snapshot -> Bound');
    const restores: number[] = [];
    for (let i = 0; i < 5; i++) {
      const name = `restore-${i}`;
      const t0 = performance.now();
      await kubectlApply(pvcYaml(name, `seq-${i}`));
      restores.push((await claims.when(name)) - t0);
    }

    ctx.log(`[controller] burst: ${nBurst} VolumeSnapshots created at once`);
    const t0 = performance.now();
    const names = Array.from({ length: nBurst }, (_, i) => `burst-${i}`);
    const path = `/apis/snapshot.storage.k8s.io/v1/namespaces/${ns}/volumesnapshots`;
    await Promise.all(
      names.map((name, i) =>
        rest.create(path, {
          apiVersion: 'snapshot.storage.k8s.io/v1',
          kind: 'VolumeSnapshot',
          metadata: { name },
          spec: { source: { persistentVolumeClaimName: sources[i % sources.length] } },
        }),
      ),
    );
    const created = performance.now();
    const last = Math.max(...(await Promise.all(names.map((n) => snaps.when(n, 300_000)))));
    const burstS = (last - t0) / 1000;

    const sortedSeq = [...seq].sort((a, b) => a - b);
    const sortedBase = [...base].sort((a, b) => a - b);
    const p50 = percentile(sortedSeq, 50);
    const baseP50 = percentile(sortedBase, 50);
    const restoreMs = percentile(
      [...restores].sort((a, b) => a - b),
      50,
    );
    return {
      snapshot_ready_p50_ms: round(p50),
      snapshot_ready_p99_ms: round(percentile(sortedSeq, 99)),
      burst_200_ready_s: round(burstS, 2),
      restore_pvc_bound_ms: round(restoreMs),
      kubectl_apply_baseline_p50_ms: round(baseP50),
      snapshot_ready_p50_over_baseline: round(p50 / baseP50, 2),
      snapshot_ready_p50_minus_baseline_ms: round(p50 - baseP50),
      burst_create_s: round((created - t0) / 1000, 2),
      burst_snapshots: nBurst,
      sequential_snapshots: nSeq,
      p50_target_ms: 500,
      burst_target_s: 30,
      p50_target_met: p50 <= 500,
      burst_target_met: burstS <= 30,
    };
  } finally {
    snaps.stop();
    claims.stop();
    maps.stop();
    ctx.log('[controller] cleaning up');
    await env?.stop().catch((err: unknown) => ctx.log(`[controller] cleanup: ${(err as Error).message}`));
    await rest.delete(`/api/v1/namespaces/${ns}`).catch(() => undefined);
    rest.close();
    if (!ctx.args.includes('--keep')) {
      await execFileP(CLUSTER, ['down'], { env: env0 }).catch(() => undefined);
    }
  }
}

export const controllerSuite: BenchSuite = {
  description: 'VolumeSnapshot ready latency, 200-snapshot burst and restore time through controller + node plugins',
  run,
};
