// SPDX-License-Identifier: Apache-2.0
// `npm run bench -- restore --json`: in-place restore through the whole stack (kubectl -> controller -> node
// agent -> engine), on a private control plane with two real node plugins and one controller replica.
//
//   restore_first_read_ms   kubectl apply of a VolumeRestore -> first read of restored data through a freshly
//                           staged volume (NodeStage answers ABORTED until the node has switched the volume
//                           (online mode) or copied it (copy mode))
//   restore_wall_ms         kubectl apply -> status.phase Completed seen
//   restore_copy_mb_s       bytes the copy processed / (phase Restoring seen -> phase Completed seen, polled
//                           every 20 ms; status times have one-second resolution)
//   restore_mode            online or copy, from status.message (ADR 0009)
//   restore_end_to_end_mb_s same bytes / restore_wall_ms
//   baseline_copy_mb_s      dd of a file of the same size on the same disk (1 MiB blocks, fsync), same run
//   copy_vs_baseline        restore_copy_mb_s / baseline_copy_mb_s
//   refresh_wall_ms         kubectl apply of a VolumeRefresh (onto a snapshot of the source) -> Completed
//
// Flags: --mib N (data written, default 512), --keep (leave the control plane running).
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { KubeConfig } from '@kubernetes/client-node';
import { KubeRest } from '../common/src/kube-rest.js';
import { readAt, sha256, writeDurable } from '../test/csi/volumes.js';
import { LoopsnapEnv } from '../test/support/loopsnap-env.js';
import { isRoot } from '../test/support/node-plugin.js';
import { REPO_ROOT } from '../test/support/paths.js';
import { clusterHandle } from './controller.js';
import type { BenchContext, BenchSuite } from './suite.js';

const execFileP = promisify(execFile);
const BENCH_CLUSTER_ENV: Record<string, string> = {
  LOOPSNAP_CLUSTER_DIR: join(REPO_ROOT, '.loopsnap', 'bench-restore'),
  LOOPSNAP_PORT_APISERVER: '18543',
  LOOPSNAP_PORT_ETCD: '14479',
  LOOPSNAP_PORT_ETCD_PEER: '14480',
  LOOPSNAP_PORT_KCM: '10857',
};
const CLUSTER = join(REPO_ROOT, 'hack', 'cluster.sh');
const round = (n: number, digits = 1): number => Math.round(n * 10 ** digits) / 10 ** digits;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Op {
  status?: {
    phase?: string;
    blocksTotal?: number;
    blockSizeBytes?: number;
    startTime?: string;
    completionTime?: string;
    message?: string;
  };
}

async function run(ctx: BenchContext): Promise<Record<string, number | string | boolean | null>> {
  if (!isRoot) throw new Error('the restore benchmark runs real node plugins: it needs root (loop devices, FUSE)');
  const i = ctx.args.indexOf('--mib');
  const mib = i >= 0 ? Number(ctx.args[i + 1]) : 512;
  const env0 = { ...process.env, ...BENCH_CLUSTER_ENV };
  ctx.log('[restore] starting a private control plane');
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
  let env: LoopsnapEnv | undefined;
  const size = `${Math.ceil((mib * 1.25) / 64) * 64}Mi`;
  const apply = (yaml: string): void => void cluster.kubectl(['apply', '-f', '-'], { input: yaml });
  const get = (path: string) =>
    rest.get<Op & { status?: { readyToUse?: boolean; phase?: string } }>(path).catch(() => undefined);
  const waitUntil = async <T>(what: string, f: () => Promise<T | undefined>, timeoutMs = 600_000): Promise<T> => {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const v = await f();
      if (v !== undefined) return v;
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await sleep(20);
    }
  };
  const vsYaml = (name: string, claim: string) =>
    `apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\nmetadata: {name: ${name}}\nspec: {volumeSnapshotClassName: loopsnap-save-volume, source: {persistentVolumeClaimName: ${claim}}}\n`;
  const ready = (name: string) =>
    waitUntil(`snapshot ${name}`, async () =>
      (await get(`/apis/snapshot.storage.k8s.io/v1/namespaces/${ns}/volumesnapshots/${name}`))?.status?.readyToUse
        ? true
        : undefined,
    );
  const phase = (plural: string, name: string, want: string) =>
    waitUntil(`${plural} ${name} ${want}`, async () => {
      const o = await get(`/apis/loopsnap.dev/v1alpha1/namespaces/${ns}/${plural}/${name}`);
      if (o?.status?.phase === 'Failed') throw new Error(`${name} failed: ${o.status.message}`);
      return o?.status?.phase === want ? o : undefined;
    });
  const chunk = 32 << 20;
  const total = mib << 20;
  try {
    ctx.log('[restore] starting two node plugins and the controller');
    env = await LoopsnapEnv.start(cluster, {
      nodes: ['bench-a', 'bench-b'],
      controllerLogLevel: 'info',
      pluginLogLevel: 'warn',
    });
    const e = env;
    apply(
      `apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: vol}\nspec: {storageClassName: loopsnap, volumeMode: Block, accessModes: [ReadWriteOnce], resources: {requests: {storage: ${size}}}}\n`,
    );
    await waitUntil('PVC bound', async () =>
      (await get(`/api/v1/namespaces/${ns}/persistentvolumeclaims/vol`))?.status?.phase === 'Bound' ? true : undefined,
    );
    ctx.log(`[restore] writing ${mib} MiB, snapshot, overwriting ${mib} MiB`);
    let m = await e.kubelet.mount(ns, 'vol');
    const first = randomBytes(1 << 20);
    await writeDurable(m.targetPath, 0, first);
    for (let off = 1 << 20; off < total; off += chunk)
      await writeDurable(m.targetPath, off, randomBytes(Math.min(chunk, total - off)));
    apply(vsYaml('snap', 'vol'));
    await ready('snap');
    for (let off = 0; off < total; off += chunk)
      await writeDurable(m.targetPath, off, randomBytes(Math.min(chunk, total - off)));
    await e.kubelet.unmount(ns, 'vol');

    ctx.log('[restore] VolumeRestore');
    const t0 = performance.now();
    apply(
      `apiVersion: loopsnap.dev/v1alpha1\nkind: VolumeRestore\nmetadata: {name: r}\nspec: {pvcName: vol, volumeSnapshotName: snap}\n`,
    );
    let runningAt = 0;
    let completedAt = 0;
    const watchRunning = setInterval(() => {
      void get(`/apis/loopsnap.dev/v1alpha1/namespaces/${ns}/volumerestores/r`).then((o) => {
        const now = performance.now();
        if (runningAt === 0 && o?.status?.phase === 'Restoring') runningAt = now;
        if (completedAt === 0 && o?.status?.phase === 'Completed') completedAt = now;
      });
    }, 20);
    // First read: stage as soon as the node lets us, read block 0.
    const firstRead = await waitUntil('first read of restored data', async () => {
      try {
        m = await e.kubelet.mount(ns, 'vol');
      } catch {
        return undefined;
      }
      const got = await readAt(m.targetPath, 0, first.length);
      if (sha256(got) === sha256(first)) return performance.now() - t0;
      await e.kubelet.unmount(ns, 'vol');
      return undefined;
    });
    const done = await phase('volumerestores', 'r', 'Completed');
    const wall = performance.now() - t0;
    await waitUntil('the poller saw Completed', async () => (completedAt > 0 ? true : undefined));
    clearInterval(watchRunning);
    await e.kubelet.unmount(ns, 'vol');
    const st = done.status ?? {};
    const bytes = (st.blocksTotal ?? 0) * (st.blockSizeBytes ?? 0);
    const nodeSeconds = Math.max(0.001, (completedAt - (runningAt || t0)) / 1000);
    const mode = /online/.test(st.message ?? '') ? 'online' : 'copy';

    ctx.log('[restore] VolumeRefresh of a restored copy onto the snapshot');
    apply(
      `apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: copy}\nspec: {storageClassName: loopsnap, volumeMode: Block, accessModes: [ReadWriteOnce], resources: {requests: {storage: ${size}}}, dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: snap}}\n`,
    );
    await waitUntil('copy bound', async () =>
      (await get(`/api/v1/namespaces/${ns}/persistentvolumeclaims/copy`))?.status?.phase === 'Bound' ? true : undefined,
    );
    const c = await e.kubelet.mount(ns, 'copy');
    for (let off = 0; off < total; off += chunk)
      await writeDurable(c.targetPath, off, randomBytes(Math.min(chunk, total - off)));
    await e.kubelet.unmount(ns, 'copy');
    const t1 = performance.now();
    apply(
      `apiVersion: loopsnap.dev/v1alpha1\nkind: VolumeRefresh\nmetadata: {name: f}\nspec: {pvcName: copy, volumeSnapshotName: snap}\n`,
    );
    await phase('volumerefreshes', 'f', 'Completed');
    const refreshWall = performance.now() - t1;

    ctx.log('[restore] baseline: dd of the same size on the same disk');
    const a = join(e.plugins.get('bench-a')?.dir ?? '/tmp', 'baseline-src');
    const b = `${a}-dst`;
    await execFileP('dd', ['if=/dev/urandom', `of=${a}`, 'bs=1M', `count=${mib}`, 'conv=fsync', 'status=none']);
    await execFileP('sh', ['-c', 'echo 1 > /proc/sys/vm/drop_caches']).catch(() => undefined);
    const tb = performance.now();
    await execFileP('dd', [`if=${a}`, `of=${b}`, 'bs=1M', 'conv=fsync', 'status=none']);
    const baseline = mib / ((performance.now() - tb) / 1000);
    await rm(a, { force: true });
    await rm(b, { force: true });
    const copyMbS = bytes / 1e6 / nodeSeconds;
    return {
      data_mib: mib,
      restore_first_read_ms: round(firstRead),
      restore_wall_ms: round(wall),
      restore_copy_mb_s: round(copyMbS),
      restore_end_to_end_mb_s: round(bytes / 1e6 / (wall / 1000)),
      baseline_copy_mb_s: round((baseline * (1 << 20)) / 1e6),
      copy_vs_baseline: round(copyMbS / ((baseline * (1 << 20)) / 1e6), 2),
      refresh_wall_ms: round(refreshWall),
      restore_mode: mode,
    };
  } finally {
    if (env) {
      try {
        cluster.kubectl(['delete', 'volumerestores,volumerefreshes', '--all', '--wait=true']);
      } catch {
        // best effort: env.stop() drains the rest
      }
      await env.stop().catch(() => undefined);
    }
    rest.close();
    if (!ctx.args.includes('--keep')) {
      execFileSync(CLUSTER, ['down'], { env: env0, stdio: ['ignore', 'ignore', 'inherit'] });
    }
  }
}

export const restoreSuite: BenchSuite = {
  description: 'in-place restore and refresh through kubectl, controller, node agent and engine',
  run,
};
