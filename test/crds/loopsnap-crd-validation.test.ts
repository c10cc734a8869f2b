// SPDX-License-Identifier: Apache-2.0
// Our own loopsnap.dev CRDs (VolumeRestore, VolumeRefresh) on a real kube-apiserver: the validation corpus in
// loopsnap-corpus/ (required fields, name formats, exactly-one-of, immutable spec), the status subresource
// (phase enum, conditions shape, spec untouched through /status), printer columns and kubectl explain.
import { join } from 'node:path';
import { CustomObjectsApi } from '@kubernetes/client-node';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadCorpus, runCase } from '../support/cel-corpus.js';
import { useCluster } from '../support/cluster.js';
import { installOurCrds } from '../support/crds-install.js';
import { OUR_CRD_DIR } from '../support/crd-files.js';

const cluster = useCluster('crd-ls');
const cases = loadCorpus(join(import.meta.dirname, 'loopsnap-corpus'));
const group = 'loopsnap.dev';
const version = 'v1alpha1';

beforeAll(() => installOurCrds(cluster, join(OUR_CRD_DIR, 'loopsnap.dev')));

describe('loopsnap.dev validation corpus', () => {
  it('has accepted, rejected and transition cases for both kinds', () => {
    expect(cases.filter((c) => c.name.startsWith('vr-') && c.expectedError).length).toBeGreaterThan(5);
    expect(cases.filter((c) => c.name.startsWith('rf-') && c.expectedError).length).toBeGreaterThan(4);
    expect(cases.filter((c) => c.expectedError === undefined).length).toBeGreaterThan(5);
    expect(cases.filter((c) => c.kind === 'transition').length).toBeGreaterThanOrEqual(3);
  });

  it.each(cases.map((c) => [c.name, c] as const))('%s', (_name, c) => {
    const out = runCase(c, (args) => cluster.kubectl(args));
    if (c.expectedError === undefined) expect(out, out.output).toMatchObject({ accepted: true });
    else {
      expect(out.accepted, out.output).toBe(false);
      expect(out.output).toContain(c.expectedError);
    }
  });

  it('defaults keepRestorePoint to false', () => {
    cluster.kubectl(['apply', '-f', '-'], {
      input: `apiVersion: ${group}/${version}\nkind: VolumeRestore\nmetadata: {name: defaults}\nspec: {pvcName: data, volumeSnapshotName: s}\n`,
    });
    const got = JSON.parse(cluster.kubectl(['get', 'volumerestore', 'defaults', '-o', 'json'])) as {
      spec: Record<string, unknown>;
    };
    expect(got.spec).toEqual({ pvcName: 'data', volumeSnapshotName: 's', keepRestorePoint: false });
  });
});

describe('status subresource', () => {
  it.each([
    ['volumerestores', 'VolumeRestore', 'Restoring', { volumeSnapshotName: 's' }],
    ['volumerefreshes', 'VolumeRefresh', 'Refreshing', { fromSource: true }],
  ] as const)(
    '%s: accepts a full status, rejects a bad phase and a malformed condition',
    async (plural, kind, active, spec) => {
      const api = cluster.kc.makeApiClient(CustomObjectsApi);
      const ns = cluster.namespace;
      const name = `status-${plural}`;
      await api.createNamespacedCustomObject({
        group,
        version,
        namespace: ns,
        plural,
        body: { apiVersion: `${group}/${version}`, kind, metadata: { name }, spec: { pvcName: 'data', ...spec } },
      });
      const patch = (status: Record<string, unknown>) =>
        api.patchNamespacedCustomObjectStatus({
          group,
          version,
          namespace: ns,
          plural,
          name,
          body: [{ op: 'add', path: '/status', value: status }],
        });
      const now = '2026-01-02T03:04:05Z';
      const ok = (await patch({
        phase: active,
        progress: '10/100',
        blocksDone: 10,
        blocksTotal: 100,
        blockSizeBytes: 4096,
        startTime: now,
        nodeName: 'node-a',
        volumeHandle: 'vol-0123',
        operationId: 'op-1',
        observedGeneration: 1,
        conditions: [
          { type: 'Accepted', status: 'True', reason: 'Accepted', message: 'ok', lastTransitionTime: now },
          { type: 'Progressing', status: 'True', reason: 'Copying', message: '10%', lastTransitionTime: now },
        ],
      })) as { status: { phase: string; blocksDone: number }; spec: { pvcName: string } };
      expect(ok.status).toMatchObject({ phase: active, blocksDone: 10 });
      await expect(patch({ phase: 'Exploded' })).rejects.toThrow(/phase/);
      await expect(
        patch({
          conditions: [{ type: 'Accepted', status: 'Maybe', reason: 'x', message: '', lastTransitionTime: now }],
        }),
      ).rejects.toThrow(/status/);
      await expect(patch({ blocksDone: -1 })).rejects.toThrow(/blocksDone/);
      // The spec cannot be changed through /status.
      await api.patchNamespacedCustomObjectStatus({
        group,
        version,
        namespace: ns,
        plural,
        name,
        body: [{ op: 'replace', path: '/spec/pvcName', value: 'other' }],
      });
      const again = (await api.getNamespacedCustomObject({ group, version, namespace: ns, plural, name })) as {
        spec: { pvcName: string };
      };
      expect(again.spec.pvcName).toBe('data');
    },
  );
});

describe('kubectl ergonomics', () => {
  it('explain shows the field descriptions', () => {
    const spec = cluster.kubectl(['explain', 'volumerestore.spec'], { namespaced: false });
    expect(spec).toMatch(/keepRestorePoint/);
    expect(spec).toMatch(/lineage/);
    const refresh = cluster.kubectl(['explain', 'volumerefresh.spec.fromSource'], { namespaced: false });
    expect(refresh).toMatch(/fresh\s+internal\s+snapshot/);
    const status = cluster.kubectl(['explain', 'volumerestore.status.restorePointSnapshot'], { namespaced: false });
    expect(status).toMatch(/undoes\s+this\s+restore/);
  });

  it('get shows PVC, SNAPSHOT, PHASE, PROGRESS and AGE (and more with -o wide)', () => {
    cluster.kubectl(['apply', '-f', '-'], {
      input:
        `apiVersion: ${group}/${version}\nkind: VolumeRestore\nmetadata: {name: columns}\nspec: {pvcName: data, volumeSnapshotName: snap}\n---\n` +
        `apiVersion: ${group}/${version}\nkind: VolumeRefresh\nmetadata: {name: columns}\nspec: {pvcName: data, fromSource: true}\n`,
    });
    const header = (args: string[]) => (cluster.kubectl(args).split('\n')[0] ?? '').split(/\s+/).filter(Boolean);
    expect(header(['get', 'volumerestore', 'columns'])).toEqual([
      'NAME',
      'PVC',
      'SNAPSHOT',
      'PHASE',
      'PROGRESS',
      'AGE',
    ]);
    expect(header(['get', 'vrs', 'columns', '-o', 'wide'])).toEqual([
      'NAME',
      'PVC',
      'SNAPSHOT',
      'PHASE',
      'PROGRESS',
      'RESTOREPOINT',
      'NODE',
      'AGE',
    ]);
    expect(header(['get', 'volumerefresh', 'columns'])).toEqual([
      'NAME',
      'PVC',
      'SNAPSHOT',
      'PHASE',
      'PROGRESS',
      'AGE',
    ]);
    expect(cluster.kubectl(['get', 'loopsnap', '-o', 'name']).split('\n').filter(Boolean).sort()).toEqual(
      expect.arrayContaining(['volumerefresh.loopsnap.dev/columns', 'volumerestore.loopsnap.dev/columns']),
    );
  });
});
