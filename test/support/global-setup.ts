// SPDX-License-Identifier: Apache-2.0
// Integration-run lifecycle of the test control plane. It is started lazily by the first test file that
// calls useCluster() (test/support/cluster.ts) and torn down here once, after the last file, whether the
// tests passed or not. A control plane left over from a crashed earlier run is stopped first.
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { CLUSTER_SCRIPT, clusterEnv, TEST_CLUSTER_DIR } from './cluster-env.js';

function down(): void {
  execFileSync(CLUSTER_SCRIPT, ['down'], { env: clusterEnv(), stdio: ['ignore', 'ignore', 'inherit'] });
}

export function setup(): () => void {
  down();
  // Fresh etcd data for every run: tests never see objects from an earlier run.
  rmSync(join(TEST_CLUSTER_DIR, 'etcd'), { recursive: true, force: true });
  return () => down();
}
