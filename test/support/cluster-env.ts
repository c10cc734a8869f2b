// SPDX-License-Identifier: Apache-2.0
// Where the test control plane lives: its own directory and ports, so that a developer's `npm start`
// cluster (ports 16443/12379/12380/10557) and a test run never touch each other. LOOPSNAP_TEST_SLOT (0-9,
// default 0) shifts directory and ports so that several test runs can share one machine.
import { join } from 'node:path';
import { REPO_ROOT } from './paths.js';

function slot(): number {
  const raw = process.env.LOOPSNAP_TEST_SLOT ?? '0';
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0 || n > 9) throw new Error(`LOOPSNAP_TEST_SLOT must be 0-9, got ${raw}`);
  return n;
}

const s = slot();

export const TEST_CLUSTER_DIR = join(REPO_ROOT, '.loopsnap', s === 0 ? 'test-cluster' : `test-cluster-${s}`);

export const TEST_CLUSTER_ENV: Readonly<Record<string, string>> = {
  LOOPSNAP_CLUSTER_DIR: TEST_CLUSTER_DIR,
  LOOPSNAP_PORT_APISERVER: String(17443 + s * 10),
  LOOPSNAP_PORT_ETCD: String(13379 + s * 10),
  LOOPSNAP_PORT_ETCD_PEER: String(13380 + s * 10),
  LOOPSNAP_PORT_KCM: String(10657 + s * 10),
};

export const CLUSTER_SCRIPT = join(REPO_ROOT, 'hack', 'cluster.sh');

export function clusterEnv(): NodeJS.ProcessEnv {
  return { ...process.env, ...TEST_CLUSTER_ENV };
}
