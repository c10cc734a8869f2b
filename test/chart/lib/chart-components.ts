// SPDX-License-Identifier: Apache-2.0
// Runs the chart's components on this machine the way their pods would run them: with the flags rendered in
// the installed release, the ServiceAccount tokens of the chart's own ServiceAccounts (TokenRequest API, so
// every API call is authorized by the chart's RBAC and nothing else) and the TLS material of the chart's
// Secrets. Only what a pod gets from its node is swapped for local equivalents (pod IP, host paths, the
// in-cluster config, ports).
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import type { K8sObject } from './helm.js';
import type { PrivateCluster } from './private-cluster.js';

/** A kubeconfig that authenticates as `namespace/serviceAccount` with a freshly minted token. */
export function serviceAccountKubeconfig(
  cluster: PrivateCluster,
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

/** Writes tls.crt, tls.key and ca.crt of a Secret into `dir`; returns their paths. */
export function secretFiles(
  cluster: PrivateCluster,
  namespace: string,
  name: string,
  dir: string,
): { cert: string; key: string; ca: string } {
  const s = JSON.parse(cluster.kubectl(['-n', namespace, 'get', 'secret', name, '-o', 'json'])) as {
    data: Record<string, string>;
  };
  const out = { cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`), ca: join(dir, `${name}.ca.crt`) };
  for (const [k, f] of [
    ['tls.crt', out.cert],
    ['tls.key', out.key],
    ['ca.crt', out.ca],
  ] as const) {
    const v = s.data[k];
    if (!v) throw new Error(`Secret ${namespace}/${name} has no ${k}`);
    writeFileSync(f, Buffer.from(v, 'base64'), { mode: 0o600 });
  }
  return out;
}

export function containerArgs(o: K8sObject, container: string): string[] {
  const spec = (o.spec as { template: { spec: { containers: Array<{ name: string; args?: string[] }> } } }).template
    .spec;
  const c = spec.containers.find((x) => x.name === container);
  if (!c) throw new Error(`${o.kind} ${o.metadata.name} has no container ${container}`);
  return c.args ?? [];
}

function flagName(arg: string): string {
  return arg.slice(2).split('=')[0] ?? '';
}

/**
 * Rewrites rendered flags: `replace` maps a flag name to its local value, to a whole other flag (a value
 * starting with --), or to null (dropped); every other flag is kept as rendered. Throws when a flag still refers to something only a pod has ($(VAR)).
 */
export function localizeArgs(args: readonly string[], replace: Readonly<Record<string, string | null>>): string[] {
  const out: string[] = [];
  const seen = new Set<string>();
  for (const a of args) {
    const name = flagName(a);
    if (name in replace) {
      seen.add(name);
      const v = replace[name];
      if (v === null || v === undefined) continue;
      out.push(v.startsWith('--') ? v : `--${name}=${v}`);
      continue;
    }
    if (a.includes('$(')) throw new Error(`rendered flag ${a} needs a pod environment; localize it`);
    out.push(a);
  }
  const unused = Object.keys(replace).filter((k) => !seen.has(k));
  if (unused.length > 0) throw new Error(`the chart no longer renders ${unused.map((u) => `--${u}`).join(', ')}`);
  return out;
}
