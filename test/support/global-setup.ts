// SPDX-License-Identifier: Apache-2.0
// Integration-run lifecycle of the test control plane and of the real node. Both are started lazily by the
// first test file that needs them (useCluster() in test/support/cluster.ts, useRealCluster() in
// test/support/real-node.ts) and torn down here once, after the last file, whether the tests passed or not.
// Leftovers of a crashed earlier run are stopped first.
import { execFileSync } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { CLUSTER_SCRIPT, clusterEnv, TEST_CLUSTER_DIR } from './cluster-env.js';
import { nodeClusterEnv, realTarget, teardownLocal } from './real-node.js';

function down(): void {
  execFileSync(CLUSTER_SCRIPT, ['down'], { env: clusterEnv(), stdio: ['ignore', 'ignore', 'inherit'] });
}

/**
 * The real node's control plane and node, when a file started them (local target only).
 * LOOPSNAP_KEEP_NODE=1 keeps them from one run to the next (for working on test/node/; not for CI).
 */
function downRealNode(): void {
  if (process.env.LOOPSNAP_KEEP_NODE === '1') return;
  if (realTarget() !== 'local' || !existsSync(nodeClusterEnv().LOOPSNAP_CLUSTER_DIR ?? '')) return;
  teardownLocal();
}

export function setup(): () => void {
  down();
  downRealNode();
  // Fresh etcd data for every run: tests never see objects from an earlier run.
  rmSync(join(TEST_CLUSTER_DIR, 'etcd'), { recursive: true, force: true });
  return () => {
    try {
      downRealNode();
    } finally {
      down();
    }
  };
}
