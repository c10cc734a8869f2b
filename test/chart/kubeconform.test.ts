// SPDX-License-Identifier: Apache-2.0
// Every manifest the chart renders (defaults and the value matrix, CRDs included) passes kubeconform in strict
// mode against schemas generated here for the pinned Kubernetes version (lib/schema-cache.ts): the
// k8s.io/kubernetes module's swagger.json, our CRDs and the prometheus-operator / cert-manager CRDs.
// The generated schemas are checked for strictness first, so "valid" cannot mean "not checked".
import { beforeAll, describe, expect, it } from 'vitest';
import { render, runTool } from './lib/helm.js';
import { MATRIX } from './lib/matrix.js';
import { ensureSchemaTree, type SchemaTree } from './lib/schema-cache.js';

interface KubeconformReport {
  resources: Array<{ kind: string; name: string; status: string; msg: string }>;
  summary: { valid: number; invalid: number; errors: number; skipped: number };
}

let tree: SchemaTree;

function kubeconform(manifests: string): KubeconformReport {
  const r = runTool(
    'kubeconform',
    [
      '-strict',
      '-summary',
      '-output',
      'json',
      '-kubernetes-version',
      tree.kubernetesVersion,
      '-schema-location',
      tree.location,
      '-',
    ],
    { input: manifests },
  );
  try {
    return JSON.parse(r.stdout) as KubeconformReport;
  } catch (err) {
    throw new Error(`kubeconform printed no report (exit ${r.code}): ${r.stderr || r.stdout}`, { cause: err });
  }
}

beforeAll(() => {
  tree = ensureSchemaTree();
}, 600_000);

describe('generated schemas', () => {
  it('cover the pinned version, every kind the chart can render and our CRDs', () => {
    expect(tree.kubernetesVersion).toMatch(/^1\.33\.\d+$/);
    for (const f of [
      'apps/deployment_v1.json',
      'apps/daemonset_v1.json',
      'v1/service_v1.json',
      'v1/secret_v1.json',
      'v1/configmap_v1.json',
      'policy/poddisruptionbudget_v1.json',
      'rbac.authorization.k8s.io/clusterrole_v1.json',
      'storage.k8s.io/csidriver_v1.json',
      'storage.k8s.io/storageclass_v1.json',
      'apiextensions.k8s.io/customresourcedefinition_v1.json',
      'snapshot.storage.k8s.io/volumesnapshotclass_v1.json',
      'monitoring.coreos.com/servicemonitor_v1.json',
      'monitoring.coreos.com/prometheusrule_v1.json',
      'cert-manager.io/certificate_v1.json',
      'cert-manager.io/issuer_v1.json',
    ]) {
      expect(tree.files, f).toContain(f);
    }
  });

  it.each([
    {
      name: 'a misspelt Deployment field',
      doc: 'apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replica: 2\n  selector: {matchLabels: {a: b}}\n  template: {metadata: {labels: {a: b}}, spec: {containers: [{name: c, image: i}]}}\n',
      msg: /additional properties 'replica'/,
    },
    {
      name: 'a string where an integer belongs',
      doc: 'apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: "80"}]}\n',
      msg: /want integer/,
    },
    {
      name: 'a misspelt VolumeSnapshotClass field (CRD schema)',
      doc: 'apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotClass\nmetadata: {name: x}\ndriver: d\ndeletionPolicy: Delete\nparamaters: {}\n',
      msg: /additional properties 'paramaters'/,
    },
    {
      name: 'a bad enum in a ServiceMonitor (third-party CRD schema)',
      doc: 'apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata: {name: x}\nspec: {selector: {}, endpoints: [{port: m, scheme: ftp}]}\n',
      msg: /scheme/,
    },
  ])('reject $name', ({ doc, msg }) => {
    const report = kubeconform(doc);
    expect(report.summary.invalid).toBe(1);
    expect(report.resources[0]?.msg).toMatch(msg);
  });

  it('accept int-or-string ports, numeric quantities and an unknown-fields-preserving CRD field', () => {
    const report = kubeconform(
      [
        'apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80, targetPort: metrics}, {port: 81, targetPort: 8081}]}',
        'apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: i, resources: {limits: {cpu: 1, memory: 1Gi}}}]}',
      ].join('\n---\n'),
    );
    expect(report.summary).toEqual({ valid: 2, invalid: 0, errors: 0, skipped: 0 });
  });
});

describe('chart manifests', () => {
  it.each(MATRIX)('pass kubeconform -strict with $name', ({ values }) => {
    const { text, objects } = render({ values, includeCrds: true });
    const report = kubeconform(text);
    expect(report.resources.map((r) => `${r.kind}/${r.name}: ${r.msg}`)).toEqual([]);
    expect(report.summary).toEqual({ valid: objects.length, invalid: 0, errors: 0, skipped: 0 });
  });
});
