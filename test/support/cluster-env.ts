// SPDX-License-Identifier: Apache-2.0
// Where the test control plane lives: its own directory and ports, so that a developer's `npm start`
// cluster (ports 16443/12379/12380/10557) and a test run never touch each other.
import { join } from 'node:path';
import { REPO_ROOT } from './paths.js';

export const TEST_CLUSTER_DIR = join(REPO_ROOT, '.loopsnap', 'test-cluster');

export const TEST_CLUSTER_ENV: Readonly<Record<string, string>> = {
  LOOPSNAP_CLUSTER_DIR: TEST_CLUSTER_DIR,
  LOOPSNAP_PORT_APISERVER: '17443',
  LOOPSNAP_PORT_ETCD: '13379',
  LOOPSNAP_PORT_ETCD_PEER: '13380',
  LOOPSNAP_PORT_KCM: '10657',
};

export const CLUSTER_SCRIPT = join(REPO_ROOT, 'hack', 'cluster.sh');

export function clusterEnv(): NodeJS.ProcessEnv {
  return { ...process.env, ...TEST_CLUSTER_ENV };
}
