// SPDX-License-Identifier: Apache-2.0
// What the node plugin keeps on a node, read through the file's inspector pod (RealCluster.onNode): its
// records under <stateDir>/csi (volumes, snapshots, operations), what is left of given volumes (mounts, loop
// devices, files), and its processes, which a test may kill -9 as a crash would (the kubelet restarts them).
import { spawn } from 'node:child_process';
import { toolBin } from '../../support/cluster.js';
import type { RealCluster } from '../../support/real-node.js';
import { RELEASE_NS } from '../../support/real-node.js';
import { waitFor } from '../../support/wait.js';
import { getJson } from './objects.js';

export type RecordKind = 'volumes' | 'snapshots' | 'operations';

const stateDirs = new WeakMap<RealCluster, string>();

/** The release's node.stateDir (read once per cluster: `helm get values` is slow to poll with). */
export function stateDirOf(c: RealCluster): string {
  let dir = stateDirs.get(c);
  if (dir === undefined) {
    dir = c.values().node.stateDir;
    stateDirs.set(c, dir);
  }
  return dir;
}

/** The node plugin's records of one kind on `node`, as JSON objects. */
export function recordsOnNode(c: RealCluster, node: string, kind: RecordKind): Array<Record<string, unknown>> {
  const dir = `${stateDirOf(c)}/csi/${kind}`;
  const out = c.onNode(node, `for f in '${dir}'/*.json; do [ -f "$f" ] && { cat "$f"; echo '\x1e'; }; done; true`);
  return out
    .split('\x1e')
    .map((s) => s.trim())
    .filter(Boolean)
    .map((s) => JSON.parse(s) as Record<string, unknown>);
}

/** One record by id (file name), or undefined. */
export function recordOnNode(c: RealCluster, node: string, kind: RecordKind, id: string) {
  const file = `${stateDirOf(c)}/csi/${kind}/${id}.json`;
  const out = c.onNode(node, `cat '${file}' 2>/dev/null || true`).trim();
  return out === '' ? undefined : (JSON.parse(out) as Record<string, unknown>);
}

/**
 * Lines naming any of `ids` (volume or snapshot handles, PV names) among the node's mounts, loop devices'
 * backing files, the plugin's records and the files of its state dir: [] when nothing of them is left.
 */
export function leftoversOnNode(c: RealCluster, node: string, ids: readonly string[]): string[] {
  if (ids.length === 0) return [];
  const stateDir = stateDirOf(c);
  const pattern = ids.map((id) => `-e '${id}'`).join(' ');
  const out = c.onNode(
    node,
    `{ findmnt -rn -o TARGET | sed 's/^/mount /'
losetup -l -n -O BACK-FILE | sed 's/^/loop /'
find '${stateDir}' -mindepth 1 -not -path '${stateDir}/fuse/*' 2>/dev/null | sed 's/^/file /'
} | grep -F ${pattern} || true`,
  );
  return out.split('\n').filter(Boolean);
}

/** The file's inspector pod on `node`. */
function inspectorOn(c: RealCluster, node: string): string {
  type Pods = { items: Array<{ metadata: { name: string }; spec: { nodeName?: string } }> };
  const pods = getJson<Pods>(c, ['-n', c.namespace, 'pods', '-l', 'app.kubernetes.io/name=loopsnap-test-inspector']);
  const p = pods.items.find((x) => x.spec.nodeName === node);
  if (!p) throw new Error(`no inspector pod on node ${node}`);
  return p.metadata.name;
}

/** A script running on a node in the background (watchOnNode). */
export interface NodeWatch {
  /** Resolves when the script has printed its first line (it is set up and watching). */
  readonly started: Promise<void>;
  /** The script's stdout once it ends; rejects when it fails. */
  readonly result: Promise<string>;
}

/** onNode without waiting for the end: the script says it is ready by printing a first line. */
export function watchOnNode(c: RealCluster, node: string, script: string): NodeWatch {
  const inHost = ['sh', '-c', 'exec nsenter -t "$(pidof kubelet)" -m -- sh -c "$1"', 'on-node', script];
  const args = ['--kubeconfig', c.kubeconfigPath, '-n', c.namespace, 'exec', inspectorOn(c, node), '--', ...inHost];
  let out = '';
  let err = '';
  let signal: (() => void) | undefined;
  const started = new Promise<void>((resolve) => (signal = resolve));
  const result = new Promise<string>((resolve, reject) => {
    const p = spawn(toolBin('kubectl'), args, { stdio: ['ignore', 'pipe', 'pipe'] });
    p.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) signal?.();
    });
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('error', reject);
    p.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`on ${node}: ${err.trim() || code}`))));
  });
  return { started: Promise.race([started, result.then(() => undefined)]), result };
}

export interface ReleaseContainer {
  readonly pod: string;
  readonly node: string;
  readonly containerId: string;
  readonly restarts: number;
}

type PodList = {
  items: Array<{
    metadata: { name: string };
    spec: { nodeName?: string };
    status: { containerStatuses?: Array<{ containerID?: string; restartCount: number; ready: boolean }> };
  }>;
};

/** The first container of the release's `component` pod (node: the one on `node`). */
export function releaseContainer(c: RealCluster, component: 'node' | 'controller', node?: string): ReleaseContainer {
  const pods = getJson<PodList>(c, ['-n', RELEASE_NS, 'pods', '-l', `app.kubernetes.io/component=${component}`]);
  const p = pods.items.find((x) => node === undefined || x.spec.nodeName === node);
  const s = p?.status.containerStatuses?.[0];
  if (!p || !s?.containerID) throw new Error(`no running ${component} pod${node ? ` on ${node}` : ''}`);
  return {
    pod: p.metadata.name,
    node: p.spec.nodeName ?? '',
    containerId: s.containerID.replace(/^[a-z]+:\/\//, ''),
    restarts: s.restartCount,
  };
}

/**
 * SIGKILL of every process of the container (found by its id in their cgroup paths), as a crash: nothing
 * is cleaned up. Returns the shell snippet's output (the pids killed); throws when none was found.
 */
export function killScript(containerId: string): string {
  return `pids=''; for p in /proc/[0-9]*; do
  case "$(cat "$p/cgroup" 2>/dev/null)" in *${containerId}*) pids="$pids \${p#/proc/}";; esac
done
[ -n "$pids" ] || { echo "no process of container ${containerId}" >&2; exit 1; }
kill -9 $pids; echo "killed$pids"`;
}

export function killContainer(c: RealCluster, k: ReleaseContainer): void {
  c.onNode(k.node, killScript(k.containerId));
}

/** Waits until the kubelet has restarted the killed container and it is ready again. */
export async function waitRestarted(c: RealCluster, k: ReleaseContainer, timeoutMs = 180_000): Promise<void> {
  await waitFor(
    `${k.pod} restarted and ready`,
    () => {
      const s = getJson<{ status: PodList['items'][0]['status'] }>(c, ['-n', RELEASE_NS, 'pod', k.pod]).status
        .containerStatuses?.[0];
      return s !== undefined && s.restartCount > k.restarts && s.ready;
    },
    { timeoutMs, intervalMs: 500 },
  );
}
