// SPDX-License-Identifier: Apache-2.0
// A kubeconfig that authenticates as a ServiceAccount with a freshly minted token (TokenRequest API), so that
// `kubectl auth can-i` answers for exactly the RBAC that account has, and nothing else.
import { writeFileSync } from 'node:fs';
import type { KubeConfig } from '@kubernetes/client-node';
import { stringify } from 'yaml';

export function serviceAccountKubeconfig(
  cluster: { readonly kc: KubeConfig; kubectl(args: readonly string[]): string },
  namespace: string,
  serviceAccount: string,
  file: string,
): string {
  const token = cluster.kubectl(['-n', namespace, 'create', 'token', serviceAccount, '--duration=2h']).trim();
  const c = cluster.kc.getCurrentCluster();
  if (!c) throw new Error('admin kubeconfig has no current cluster');
  const kubeconfig = {
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [
      {
        name: 'test',
        cluster: {
          server: c.server,
          ...(c.caData ? { 'certificate-authority-data': c.caData } : { 'certificate-authority': c.caFile }),
        },
      },
    ],
    users: [{ name: serviceAccount, user: { token } }],
    contexts: [{ name: serviceAccount, context: { cluster: 'test', user: serviceAccount, namespace } }],
    'current-context': serviceAccount,
  };
  writeFileSync(file, stringify(kubeconfig), { mode: 0o600 });
  return file;
}
