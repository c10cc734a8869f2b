// SPDX-License-Identifier: Apache-2.0
// Gives an integration test file a ready, real control plane and a namespace of its own.
//
//   const cluster = useCluster();            // at the top of a describe/file
//   cluster.kc / cluster.namespace / cluster.kubectl(['get', 'ns'])
//
// The control plane is shared by every file of a run (started on first use, stopped by global-setup.ts);
// each file's namespace is deleted after its tests, even when they fail.
import { type ExecFileSyncOptions, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import { afterAll, beforeAll } from 'vitest';
import { CLUSTER_SCRIPT, clusterEnv } from './cluster-env.js';
import { REPO_ROOT } from './paths.js';

export interface ClusterHandle {
  readonly kubeconfigPath: string;
  readonly kc: KubeConfig;
  readonly namespace: string;
  readonly kubectlPath: string;
  /** Runs kubectl against the test cluster; returns stdout; throws with stderr on a non-zero exit. */
  kubectl(args: readonly string[], opts?: { input?: string; namespaced?: boolean }): string;
}

let started: string | undefined;

/** Brings the shared test control plane up (idempotent) and returns the kubeconfig path. */
export function ensureCluster(): string {
  if (started) return started;
  const out = execFileSync(CLUSTER_SCRIPT, ['up'], {
    env: clusterEnv(),
    stdio: ['ignore', 'pipe', 'inherit'],
    timeout: 900_000,
  });
  started = out.toString().trim().split('\n').pop() ?? '';
  return started;
}

export function toolBin(name: string): string {
  const dir = execFileSync(join(REPO_ROOT, 'hack', 'build-tools.sh'), ['--bin-dir'])
    .toString()
    .trim();
  return join(dir, name);
}

export function useCluster(prefix = 'test'): ClusterHandle {
  const state: { kubeconfigPath?: string; kc?: KubeConfig; namespace?: string } = {};
  const kubectlPath = toolBin('kubectl');
  const handle: ClusterHandle = {
    get kubeconfigPath() {
      return must(state.kubeconfigPath);
    },
    get kc() {
      return must(state.kc);
    },
    get namespace() {
      return must(state.namespace);
    },
    kubectlPath,
    kubectl(args, opts) {
      const full = ['--kubeconfig', must(state.kubeconfigPath)];
      if (opts?.namespaced !== false) full.push('-n', must(state.namespace));
      const execOpts: ExecFileSyncOptions = { stdio: ['pipe', 'pipe', 'pipe'], timeout: 120_000 };
      if (opts?.input !== undefined) execOpts.input = opts.input;
      try {
        return execFileSync(kubectlPath, [...full, ...args], execOpts).toString();
      } catch (err) {
        const e = err as { stderr?: Buffer; message: string };
        throw new Error(`kubectl ${args.join(' ')} failed: ${e.stderr?.toString().trim() || e.message}`, {
          cause: err,
        });
      }
    },
  };

  beforeAll(async () => {
    state.kubeconfigPath = ensureCluster();
    const kc = new KubeConfig();
    kc.loadFromFile(state.kubeconfigPath);
    state.kc = kc;
    const ns = `${prefix}-${randomBytes(4).toString('hex')}`;
    await kc.makeApiClient(CoreV1Api).createNamespace({ body: { metadata: { name: ns } } });
    state.namespace = ns;
  }, 900_000);

  afterAll(async () => {
    if (state.kc && state.namespace) {
      await state.kc
        .makeApiClient(CoreV1Api)
        .deleteNamespace({ name: state.namespace })
        .catch(() => undefined);
    }
  });

  return handle;
}

function must<T>(v: T | undefined): T {
  if (v === undefined) throw new Error('cluster not ready: use the handle inside tests or hooks');
  return v;
}
