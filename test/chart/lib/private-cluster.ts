// SPDX-License-Identifier: Apache-2.0
// A control plane of the test file's own (hack/cluster.sh, fresh etcd), for tests that install the chart
// for real: `helm install` creates cluster-scoped objects (CRDs, CSIDriver csi.loopsnap.dev, StorageClass
// loopsnap, ClusterRoles) that must neither meet the shared test cluster's leftovers nor leave any behind,
// and the snapshot CRDs must be absent at first so that the chart's own CRD install is exercised.
// Directory .loopsnap/chart-cluster-<slot>; ports of the slot's test cluster + 5 (the slot's block of ten
// leaves them free). Stopped and purged after the file, also when tests fail.
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import { afterAll, beforeAll } from 'vitest';
import { CLUSTER_SCRIPT, TEST_CLUSTER_ENV } from '../../support/cluster-env.js';
import { toolBin } from '../../support/cluster.js';
import { REPO_ROOT } from '../../support/paths.js';

export interface PrivateCluster {
  readonly kubeconfigPath: string;
  readonly kc: KubeConfig;
  /** kubectl against this cluster; returns stdout, throws with stderr. */
  kubectl(args: readonly string[], input?: string): string;
  /** kubectl without throwing: exit code and output. */
  tryKubectl(args: readonly string[], input?: string): { code: number; stdout: string; stderr: string };
}

function env(): NodeJS.ProcessEnv {
  const shift = (key: keyof typeof TEST_CLUSTER_ENV): string => String(Number(TEST_CLUSTER_ENV[key]) + 5);
  const slotDir = TEST_CLUSTER_ENV.LOOPSNAP_CLUSTER_DIR ?? '';
  const suffix = slotDir.match(/test-cluster(-\d+)?$/)?.[1] ?? '';
  return {
    ...process.env,
    LOOPSNAP_CLUSTER_DIR: join(REPO_ROOT, '.loopsnap', `chart-cluster${suffix}`),
    LOOPSNAP_PORT_APISERVER: shift('LOOPSNAP_PORT_APISERVER'),
    LOOPSNAP_PORT_ETCD: shift('LOOPSNAP_PORT_ETCD'),
    LOOPSNAP_PORT_ETCD_PEER: shift('LOOPSNAP_PORT_ETCD_PEER'),
    LOOPSNAP_PORT_KCM: shift('LOOPSNAP_PORT_KCM'),
  };
}

function script(cmd: 'up' | 'down' | 'purge'): string {
  return execFileSync(CLUSTER_SCRIPT, [cmd], { env: env(), stdio: ['ignore', 'pipe', 'inherit'], timeout: 600_000 })
    .toString()
    .trim();
}

export interface RunningPrivateCluster extends PrivateCluster {
  /** Stops the control plane and deletes its directory. */
  stop(): void;
}

function kubectlRunner(kubeconfig: () => string): Pick<PrivateCluster, 'kubectl' | 'tryKubectl'> {
  const kubectlPath = toolBin('kubectl');
  const tryKubectl = (args: readonly string[], input?: string) => {
    try {
      const stdout = execFileSync(kubectlPath, ['--kubeconfig', kubeconfig(), ...args], {
        input,
        stdio: ['pipe', 'pipe', 'pipe'],
        timeout: 180_000,
        maxBuffer: 64 * 1024 * 1024,
      }).toString();
      return { code: 0, stdout, stderr: '' };
    } catch (err) {
      const e = err as { status?: number; stdout?: Buffer; stderr?: Buffer; message: string };
      return { code: e.status ?? 1, stdout: e.stdout?.toString() ?? '', stderr: e.stderr?.toString() ?? e.message };
    }
  };
  return {
    tryKubectl,
    kubectl(args, input) {
      const r = tryKubectl(args, input);
      if (r.code !== 0) throw new Error(`kubectl ${args.join(' ')} failed: ${r.stderr.trim()}`);
      return r.stdout;
    },
  };
}

/** kubectl helpers for a kubeconfig. */
function clusterFromKubeconfig(kubeconfigPath: string): PrivateCluster {
  const kc = new KubeConfig();
  kc.loadFromFile(kubeconfigPath);
  return { kubeconfigPath, kc, ...kubectlRunner(() => kubeconfigPath) };
}

/** Starts a fresh private control plane (a crashed earlier run's leftovers are purged first). */
function startPrivateCluster(): RunningPrivateCluster {
  script('purge');
  const kubeconfig = script('up').split('\n').pop() ?? '';
  return {
    ...clusterFromKubeconfig(kubeconfig),
    stop() {
      script('purge');
      rmSync(env().LOOPSNAP_CLUSTER_DIR ?? '', { recursive: true, force: true });
    },
  };
}

/** A private control plane for the test file: started before its tests, purged after them. */
export function usePrivateCluster(): PrivateCluster {
  let running: RunningPrivateCluster | undefined;
  const must = (): RunningPrivateCluster => {
    if (!running) throw new Error('private cluster not started: use it inside tests or hooks');
    return running;
  };
  beforeAll(() => {
    running = startPrivateCluster();
  }, 600_000);
  afterAll(() => {
    running?.stop();
  }, 120_000);
  return {
    get kubeconfigPath() {
      return must().kubeconfigPath;
    },
    get kc() {
      return must().kc;
    },
    tryKubectl: (args, input) => must().tryKubectl(args, input),
    kubectl: (args, input) => must().kubectl(args, input),
  };
}
