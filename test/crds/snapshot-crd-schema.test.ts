// SPDX-License-Identifier: Apache-2.0
// Our snapshot.storage.k8s.io CRDs against upstream's (external-snapshotter client module, taken from the Go
// module cache at test time): every enforced or displayed part must match, field by field.
import { describe, expect, it } from 'vitest';
import { type CrdLike, countKey, diffCrds, normalize } from '../support/crd-diff.js';
import { loadCrds, OUR_CRD_DIR, SNAPSHOT_CRD_NAMES } from '../support/crd-files.js';
import { upstreamSnapshotCrdDir } from '../support/go-modules.js';

const ours = loadCrds(OUR_CRD_DIR);
const upstream = loadCrds(upstreamSnapshotCrdDir());

function versions(crd: CrdLike): Array<Record<string, unknown>> {
  return ((crd.spec as { versions?: Array<Record<string, unknown>> }).versions ?? []).map(
    (v) => normalize(v) as Record<string, unknown>,
  );
}

describe.each(SNAPSHOT_CRD_NAMES)('%s', (name) => {
  const o = ours.get(name);
  const u = upstream.get(name);

  it('exists in crds/ and upstream', () => {
    expect(o, `crds/ has no ${name}`).toBeDefined();
    expect(u, `upstream has no ${name}`).toBeDefined();
  });

  it('has the same names, scope, versions, schemas, CEL rules, subresources and printer columns', () => {
    const diffs = diffCrds(o!, u!);
    expect(
      diffs.map((d) => `${d.path}: ours=${JSON.stringify(d.ours)} upstream=${JSON.stringify(d.upstream)}`),
    ).toEqual([]);
  });

  it('compares non-trivial content (not a vacuous pass)', () => {
    const served = versions(u!).find((v) => v.served === true);
    expect(served?.name).toBe('v1');
    expect(countKey(served?.schema, 'type')).toBeGreaterThan(5);
    expect(countKey(served?.additionalPrinterColumns, 'jsonPath')).toBeGreaterThanOrEqual(3);
    // Our file must carry descriptions for `kubectl explain`, even though they are not compared.
    expect(countKey(versions(o!)[0]?.schema, 'type')).toBe(countKey(served?.schema, 'type'));
  });
});

it('upstream VolumeSnapshot and VolumeSnapshotContent carry CEL rules that we compare', () => {
  for (const n of ['volumesnapshots.snapshot.storage.k8s.io', 'volumesnapshotcontents.snapshot.storage.k8s.io']) {
    expect(countKey(upstream.get(n)?.spec, 'rule'), n).toBeGreaterThanOrEqual(5);
  }
});

it('every property of our served schemas has a description (kubectl explain)', () => {
  const missing: string[] = [];
  const walk = (node: unknown, path: string) => {
    if (node === null || typeof node !== 'object') return;
    const n = node as { description?: string; properties?: Record<string, unknown>; type?: string };
    if (n.properties) {
      for (const [k, v] of Object.entries(n.properties)) {
        const child = v as { description?: string };
        if (!['apiVersion', 'kind', 'metadata'].includes(k) || path !== '') {
          if (!child.description && k !== 'metadata') missing.push(`${path}.${k}`);
        }
        walk(v, `${path}.${k}`);
      }
    }
  };
  for (const name of SNAPSHOT_CRD_NAMES) {
    const spec = ours.get(name)?.spec as { versions: Array<{ name: string; schema: { openAPIV3Schema: unknown } }> };
    const v1 = spec.versions.find((v) => v.name === 'v1');
    walk(v1?.schema.openAPIV3Schema, name);
  }
  expect(missing).toEqual([]);
});
