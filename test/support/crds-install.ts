// SPDX-License-Identifier: Apache-2.0
import { join } from 'node:path';
import type { ClusterHandle } from './cluster.js';
import { OUR_CRD_DIR } from './crd-files.js';

/** Applies every CRD under crds/ (recursively) and waits until the API server serves them. */
export function installOurCrds(cluster: ClusterHandle, dir = OUR_CRD_DIR): void {
  cluster.kubectl(['apply', '--server-side', '--force-conflicts', '-R', '-f', dir], { namespaced: false });
  cluster.kubectl(
    ['wait', '--for=condition=Established', '--timeout=60s', 'crd', '-l', 'app.kubernetes.io/part-of=loopsnap'],
    {
      namespaced: false,
    },
  );
}

export const SNAPSHOT_CRD_DIR = join(OUR_CRD_DIR, 'snapshot.storage.k8s.io');
