// SPDX-License-Identifier: Apache-2.0
// The chart against a real control plane of this file's own (lib/private-cluster.ts): `helm install` on a
// cluster without snapshot CRDs (the README's one command), upgrade (TLS material kept), uninstall (CRDs
// kept, the rest gone), `kubectl apply --dry-run=server` of every manifest of the value matrix, and the
// refusal to install over snapshot CRDs that do not serve v1. There is no kubelet or scheduler here, so the
// pods stay Pending; what runs in them is tested by least-privilege.test.ts and metrics.test.ts.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { goModuleDir, pinnedVersion } from '../support/go-modules.js';
import { CHART_DIR, cleanStderr, type K8sObject, parseManifests, render, runTool } from './lib/helm.js';
import { MATRIX } from './lib/matrix.js';
import { usePrivateCluster } from './lib/private-cluster.js';

const NS = 'loopsnap';
const SNAPSHOT_CRDS = [
  'volumesnapshotclasses.snapshot.storage.k8s.io',
  'volumesnapshotcontents.snapshot.storage.k8s.io',
  'volumesnapshots.snapshot.storage.k8s.io',
];

describe('helm install, upgrade and uninstall on a real control plane', () => {
  const cluster = usePrivateCluster();
  const helm = (args: readonly string[]) => {
    const r = runTool('helm', [...args, '--kubeconfig', cluster.kubeconfigPath]);
    if (r.code !== 0) throw new Error(`helm ${args[0]} failed: ${cleanStderr(r.stderr)}`);
    return r.stdout;
  };
  const getJson = <T>(args: readonly string[]): T => JSON.parse(cluster.kubectl([...args, '-o', 'json'])) as T;
  const secretData = (name: string) =>
    getJson<{ data: Record<string, string> }>(['-n', NS, 'get', 'secret', name]).data;
  const crdNames = () =>
    getJson<{ items: K8sObject[] }>(['get', 'crd'])
      .items.map((c) => c.metadata.name)
      .filter((n) => n.includes('snapshot'));

  it('installs with one command on a cluster that has no snapshot CRDs, CRDs first', () => {
    expect(crdNames()).toEqual([]);
    const out = helm(['install', 'loopsnap', CHART_DIR, '-n', NS, '--create-namespace']);
    expect(out).toMatch(/STATUS: deployed/);
    expect(out).toMatch(/kubectl get volumesnapshot data-snap-1/);
    expect(crdNames().sort()).toEqual(SNAPSHOT_CRDS);
    cluster.kubectl(['wait', '--for=condition=Established', '--timeout=60s', ...SNAPSHOT_CRDS.map((c) => `crd/${c}`)]);
    const classes = getJson<{ items: Array<K8sObject & { parameters: { method: string } }> }>([
      'get',
      'volumesnapshotclass',
    ]).items;
    expect(classes.map((c) => c.parameters.method).sort()).toEqual(['clone', 'meta-bitmap', 'save-volume']);
    cluster.kubectl(['get', 'csidriver', 'csi.loopsnap.dev']);
    cluster.kubectl(['get', 'storageclass', 'loopsnap']);
    const manifest = parseManifests(helm(['get', 'manifest', 'loopsnap', '-n', NS]));
    for (const o of manifest) {
      const ns = o.metadata.namespace ? ['-n', o.metadata.namespace] : [];
      const [group, version] = o.apiVersion.includes('/') ? o.apiVersion.split('/') : ['', o.apiVersion];
      const resource = group ? `${o.kind}.${version}.${group}` : o.kind;
      const r = cluster.tryKubectl([...ns, 'get', resource, o.metadata.name]);
      expect(r.code, `${o.kind} ${o.metadata.name}: ${r.stderr}`).toBe(0);
    }
    const ds = getJson<K8sObject & { spec: { template: { spec: { serviceAccountName: string } } } }>([
      '-n',
      NS,
      'get',
      'daemonset',
      'loopsnap-node',
    ]);
    expect(ds.spec.template.spec.serviceAccountName).toBe('loopsnap-node');
  });

  it('keeps the generated TLS material across an upgrade, so the pods are not restarted for it', () => {
    const node = secretData('loopsnap-node-tls');
    const ctl = secretData('loopsnap-controller-tls');
    const checksum = () =>
      getJson<{ spec: { template: { metadata: { annotations: Record<string, string> } } } }>([
        '-n',
        NS,
        'get',
        'deployment',
        'loopsnap-controller',
      ]).spec.template.metadata.annotations['checksum/tls'];
    const before = checksum();
    helm(['upgrade', 'loopsnap', CHART_DIR, '-n', NS, '--reuse-values', '--set', 'controller.logLevel=debug']);
    expect(secretData('loopsnap-node-tls')).toEqual(node);
    expect(secretData('loopsnap-controller-tls')).toEqual(ctl);
    expect(checksum()).toBe(before);
    const args = getJson<{ spec: { template: { spec: { containers: Array<{ args: string[] }> } } } }>([
      '-n',
      NS,
      'get',
      'deployment',
      'loopsnap-controller',
    ]).spec.template.spec.containers[0]!.args;
    expect(args).toContain('--log-level=debug');
  });

  it('uninstalls everything but the CRDs', () => {
    helm(['uninstall', 'loopsnap', '-n', NS, '--wait']);
    expect(crdNames().sort()).toEqual(SNAPSHOT_CRDS);
    expect(cluster.tryKubectl(['get', 'csidriver', 'csi.loopsnap.dev']).code).not.toBe(0);
    expect(getJson<{ items: unknown[] }>(['get', 'volumesnapshotclass']).items).toEqual([]);
    expect(
      getJson<{ items: unknown[] }>(['get', 'clusterrole', '-l', 'app.kubernetes.io/part-of=loopsnap']).items,
    ).toEqual([]);
    expect(
      getJson<{ items: unknown[] }>([
        '-n',
        NS,
        'get',
        'secret,serviceaccount,role,deployment,daemonset',
        '-l',
        'app.kubernetes.io/instance=loopsnap',
      ]).items,
    ).toEqual([]);
  });

  it('re-installs over the CRDs it left behind (Helm skips existing CRDs)', () => {
    expect(helm(['install', 'loopsnap', CHART_DIR, '-n', NS])).toMatch(/STATUS: deployed/);
    helm(['uninstall', 'loopsnap', '-n', NS, '--wait']);
  });

  describe('kubectl apply --dry-run=server of every rendered manifest', () => {
    it('installs the CRDs of the third-party kinds the matrix renders (prometheus-operator, cert-manager)', () => {
      const promOp = goModuleDir(
        `github.com/prometheus-operator/prometheus-operator@${pinnedVersion('PROMETHEUS_OPERATOR_VERSION')}`,
      );
      const certManager = goModuleDir(`github.com/cert-manager/cert-manager@${pinnedVersion('CERT_MANAGER_VERSION')}`);
      const crdDir = join(promOp, 'example', 'prometheus-operator-crd');
      cluster.kubectl([
        'apply',
        '--server-side',
        '-f',
        join(crdDir, 'monitoring.coreos.com_servicemonitors.yaml'),
        '-f',
        join(crdDir, 'monitoring.coreos.com_prometheusrules.yaml'),
        '-f',
        join(certManager, 'deploy', 'crds'),
      ]);
      cluster.kubectl(['wait', '--for=condition=Established', '--timeout=60s', 'crd', '--all']);
      cluster.kubectl(['create', 'namespace', 'dry-run']);
    });

    it.each(MATRIX)('accepts every object of $name', ({ values }) => {
      const { text, objects } = render({ values, includeCrds: true, namespace: 'dry-run' });
      const r = cluster.tryKubectl(['apply', '--dry-run=server', '-o', 'name', '-f', '-'], text);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(r.stdout.trim().split('\n').length).toBe(objects.length);
    });

    it('refuses an object the API server finds invalid (the check is real)', () => {
      const { text } = render({ namespace: 'dry-run' });
      const broken = text.replace('volumeBindingMode: WaitForFirstConsumer', 'volumeBindingMode: Sometimes');
      const r = cluster.tryKubectl(['apply', '--dry-run=server', '-f', '-'], broken);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/volumeBindingMode/);
    });
  });

  it('refuses to install over snapshot CRDs that do not serve v1', () => {
    cluster.kubectl(['delete', 'crd', ...SNAPSHOT_CRDS, '--wait=true', '--ignore-not-found']);
    const old = {
      apiVersion: 'apiextensions.k8s.io/v1',
      kind: 'CustomResourceDefinition',
      metadata: {
        name: 'volumesnapshots.snapshot.storage.k8s.io',
        annotations: {
          'api-approved.kubernetes.io': 'https://github.com/kubernetes-csi/external-snapshotter/pull/419',
        },
      },
      spec: {
        group: 'snapshot.storage.k8s.io',
        scope: 'Namespaced',
        names: {
          kind: 'VolumeSnapshot',
          plural: 'volumesnapshots',
          singular: 'volumesnapshot',
          listKind: 'VolumeSnapshotList',
        },
        versions: [
          {
            name: 'v1beta1',
            served: true,
            storage: true,
            schema: { openAPIV3Schema: { type: 'object', 'x-kubernetes-preserve-unknown-fields': true } },
          },
        ],
      },
    };
    cluster.kubectl(['apply', '-f', '-'], JSON.stringify(old));
    const r = runTool('helm', [
      'install',
      'old',
      CHART_DIR,
      '-n',
      'old',
      '--create-namespace',
      '--kubeconfig',
      cluster.kubeconfigPath,
    ]);
    expect(r.code).not.toBe(0);
    expect(cleanStderr(r.stderr)).toMatch(/volumesnapshots\.snapshot\.storage\.k8s\.io does not serve v1/);
    expect(
      parse(cluster.kubectl(['get', 'crd', 'volumesnapshots.snapshot.storage.k8s.io', '-o', 'yaml'])).spec.versions,
    ).toHaveLength(1);
  });
});
