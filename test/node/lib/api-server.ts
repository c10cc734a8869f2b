// SPDX-License-Identifier: Apache-2.0
// The API server of the real cluster killed (SIGKILL) and back. Locally it is a process of hack/cluster.sh
// (its pid file in the node cluster's dir), started again by `hack/cluster.sh up`; on a kind cluster it is
// the static pod of the control-plane node, which that node's kubelet restarts by itself.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from '../../support/paths.js';
import { nodeClusterEnv, type RealCluster } from '../../support/real-node.js';
import { waitFor } from '../../support/wait.js';
import { getJson } from './objects.js';

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

export async function restartApiServer(c: RealCluster): Promise<void> {
  if (c.target === 'local') {
    const env = nodeClusterEnv();
    const pid = Number(readFileSync(join(env.LOOPSNAP_CLUSTER_DIR ?? '', 'run', 'kube-apiserver.pid'), 'utf8').trim());
    process.kill(pid, 'SIGKILL');
    await waitFor('the API server gone', () => !alive(pid), { timeoutMs: 30_000 });
    execFileSync(join(REPO_ROOT, 'hack', 'cluster.sh'), ['up'], {
      env,
      stdio: ['ignore', 'ignore', 'inherit'],
      timeout: 300_000,
    });
  } else {
    type Nodes = { items: Array<{ metadata: { name: string; labels?: Record<string, string> } }> };
    const cp = getJson<Nodes>(c, ['nodes']).items.find(
      (n) => n.metadata.labels?.['node-role.kubernetes.io/control-plane'] !== undefined,
    );
    if (!cp || !c.nodes.includes(cp.metadata.name)) throw new Error('no control-plane node with an inspector pod');
    // Detached, a second later: the exec that starts it goes through the API server.
    c.onNode(cp.metadata.name, "setsid sh -c 'sleep 1; kill -9 $(pidof kube-apiserver)' >/dev/null 2>&1 &");
    await waitFor('the API server gone', () => c.tryKubectl(['get', '--raw', '/readyz']).code !== 0, {
      timeoutMs: 60_000,
      intervalMs: 200,
    });
  }
  await waitFor('the API server answering again', () => c.tryKubectl(['get', '--raw', '/readyz']).code === 0, {
    timeoutMs: 180_000,
    intervalMs: 500,
  });
}
