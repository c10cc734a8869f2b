// SPDX-License-Identifier: Apache-2.0
// Builds (once, then reuses) the kubeconform schema tree for the pinned Kubernetes version:
//   <root>/v<K8S_VERSION>-standalone-strict/<group>/<kind>_<version>.json
// from the k8s.io/kubernetes module's swagger.json, our CRDs (crds/**) and the CRDs of the third-party kinds
// the chart can render (ServiceMonitor/PrometheusRule from prometheus-operator, Certificate/Issuer from
// cert-manager), all read from the Go module cache. Nothing is downloaded prebuilt. The tree's directory
// name carries a hash of every input, so a changed CRD or pin gives a fresh tree.
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { goModuleDir, pinnedVersion } from '../../support/go-modules.js';
import { REPO_ROOT } from '../../support/paths.js';
import { type Schema, schemasFromCrd, schemasFromSwagger } from './json-schemas.js';

export interface SchemaTree {
  /** Directory holding v<version>-standalone-strict/. */
  readonly root: string;
  /** Kubernetes version without the leading v, as kubeconform's -kubernetes-version wants it. */
  readonly kubernetesVersion: string;
  /** The -schema-location template that resolves into this tree. */
  readonly location: string;
  /** Relative paths of every schema file. */
  readonly files: readonly string[];
}

function yamlFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...yamlFiles(p));
    else if (/\.ya?ml$/.test(e.name)) out.push(p);
  }
  return out.sort();
}

/** Every CRD file the chart's manifests may need a schema for. */
export function crdSourceFiles(): string[] {
  const promOp = goModuleDir(
    `github.com/prometheus-operator/prometheus-operator@${pinnedVersion('PROMETHEUS_OPERATOR_VERSION')}`,
  );
  const certManager = goModuleDir(`github.com/cert-manager/cert-manager@${pinnedVersion('CERT_MANAGER_VERSION')}`);
  return [
    ...yamlFiles(join(REPO_ROOT, 'crds')),
    ...yamlFiles(join(promOp, 'example', 'prometheus-operator-crd')).filter((f) =>
      /_(servicemonitors|prometheusrules)\.yaml$/.test(f),
    ),
    ...yamlFiles(join(certManager, 'deploy', 'crds')),
  ];
}

export function ensureSchemaTree(): SchemaTree {
  const k8s = pinnedVersion('K8S_VERSION');
  const swaggerPath = join(goModuleDir(`k8s.io/kubernetes@${k8s}`), 'api', 'openapi-spec', 'swagger.json');
  const crdFiles = crdSourceFiles();
  const hash = createHash('sha256');
  hash.update(readFileSync(new URL('./json-schemas.ts', import.meta.url)));
  hash.update(readFileSync(new URL(import.meta.url)));
  hash.update(readFileSync(swaggerPath));
  for (const f of crdFiles) hash.update(f).update(readFileSync(f));
  const root = join(REPO_ROOT, '.loopsnap', 'kubeconform', hash.digest('hex').slice(0, 16));
  const version = k8s.replace(/^v/, '');
  const treeDir = join(root, `v${version}-standalone-strict`);
  const location = `${root}/{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json`;
  const index = join(root, 'files.json');
  if (existsSync(index)) {
    return { root, kubernetesVersion: version, location, files: JSON.parse(readFileSync(index, 'utf8')) as string[] };
  }
  const schemas: Array<{ path: string; schema: Schema }> = [];
  schemas.push(
    ...schemasFromSwagger(JSON.parse(readFileSync(swaggerPath, 'utf8')) as { definitions: Record<string, Schema> }),
  );
  for (const f of crdFiles) {
    for (const doc of parseAllDocuments(readFileSync(f, 'utf8'))) {
      const crd = doc.toJS() as Parameters<typeof schemasFromCrd>[0] | null;
      if (crd) schemas.push(...schemasFromCrd(crd));
    }
  }
  const tmp = `${root}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  for (const s of schemas) {
    const p = join(tmp, `v${version}-standalone-strict`, s.path);
    mkdirSync(dirname(p), { recursive: true });
    writeFileSync(p, JSON.stringify(s.schema));
  }
  const files = schemas.map((s) => s.path).sort();
  writeFileSync(join(tmp, 'files.json'), JSON.stringify(files));
  rmSync(root, { recursive: true, force: true });
  renameSync(tmp, root);
  if (!existsSync(treeDir)) throw new Error(`schema tree ${treeDir} was not written`);
  return { root, kubernetesVersion: version, location, files };
}
