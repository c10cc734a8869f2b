// SPDX-License-Identifier: Apache-2.0
// Our snapshot.storage.k8s.io CRDs on a real kube-apiserver: upstream's own CEL corpus (from the Go module
// cache), our corpus (classes with both deletion policies, required fields, enum values, more immutable-field
// transitions), status-subresource validation, upstream's examples applied unchanged, kubectl explain/get.
import { join } from 'node:path';
import { CustomObjectsApi } from '@kubernetes/client-node';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadCorpus, runCase } from '../support/cel-corpus.js';
import { useCluster } from '../support/cluster.js';
import { installOurCrds, SNAPSHOT_CRD_DIR } from '../support/crds-install.js';
import { goModuleDir, pinnedVersion } from '../support/go-modules.js';

const cluster = useCluster('crd');
const version = pinnedVersion('EXTERNAL_SNAPSHOTTER_CLIENT_VERSION');
const upstreamClient = goModuleDir(`github.com/kubernetes-csi/external-snapshotter/client/v8@${version}`);
const upstreamMain = goModuleDir(`github.com/kubernetes-csi/external-snapshotter/v8@${version}`);

const upstreamCases = ['volumesnapshot', 'volumesnapshotcontent'].flatMap((d) =>
  loadCorpus(join(upstreamClient, 'hack', 'cel-tests', d)).map((c) => ({ ...c, name: `${d}/${c.name}` })),
);
const ourCases = loadCorpus(join(import.meta.dirname, 'corpus'));

beforeAll(() => installOurCrds(cluster, SNAPSHOT_CRD_DIR));

describe('upstream CEL corpus against our CRDs', () => {
  it('is not empty and has both accepted and rejected cases', () => {
    expect(upstreamCases.length).toBeGreaterThan(30);
    expect(upstreamCases.filter((c) => c.expectedError).length).toBeGreaterThan(8);
    expect(upstreamCases.filter((c) => c.kind === 'transition').length).toBeGreaterThan(8);
  });

  it.each(upstreamCases.map((c) => [c.name, c] as const))('%s', (_name, c) => {
    const out = runCase(c, (args) => cluster.kubectl(args));
    if (c.expectedError === undefined) expect(out, out.output).toMatchObject({ accepted: true });
    else {
      expect(out.accepted, out.output).toBe(false);
      expect(out.output).toContain(c.expectedError);
    }
  });
});

describe('our corpus', () => {
  it.each(ourCases.map((c) => [c.name, c] as const))('%s', (_name, c) => {
    const out = runCase(c, (args) => cluster.kubectl(args));
    if (c.expectedError === undefined) expect(out, out.output).toMatchObject({ accepted: true });
    else {
      expect(out.accepted, out.output).toBe(false);
      expect(out.output).toContain(c.expectedError);
    }
  });
});

describe('status subresource', () => {
  const group = 'snapshot.storage.k8s.io';

  it('accepts a valid VolumeSnapshot status and rejects a malformed restoreSize', async () => {
    const api = cluster.kc.makeApiClient(CustomObjectsApi);
    const ns = cluster.namespace;
    const base = { apiVersion: `${group}/v1`, kind: 'VolumeSnapshot', metadata: { name: 'status-vs' } };
    await api.createNamespacedCustomObject({
      group,
      version: 'v1',
      namespace: ns,
      plural: 'volumesnapshots',
      body: { ...base, spec: { source: { persistentVolumeClaimName: 'data' } } },
    });
    const patch = (status: Record<string, unknown>) =>
      api.patchNamespacedCustomObjectStatus({
        group,
        version: 'v1',
        namespace: ns,
        plural: 'volumesnapshots',
        name: 'status-vs',
        body: [{ op: 'add', path: '/status', value: status }],
      });
    const ok = (await patch({ readyToUse: true, restoreSize: '1Gi', creationTime: '2026-11-22T00:00:00Z' })) as {
      status: { restoreSize: string; readyToUse: boolean };
    };
    expect(ok.status).toMatchObject({ readyToUse: true, restoreSize: '1Gi' });
    await expect(patch({ restoreSize: 'lots' })).rejects.toThrow(/restoreSize/);
    // The spec cannot be changed through /status.
    const again = (await api.getNamespacedCustomObject({
      group,
      version: 'v1',
      namespace: ns,
      plural: 'volumesnapshots',
      name: 'status-vs',
    })) as { status: { restoreSize: string } };
    expect(again.status.restoreSize).toBe('1Gi');
  });

  it('accepts nanosecond creationTime on a VolumeSnapshotContent and rejects a negative restoreSize', async () => {
    const api = cluster.kc.makeApiClient(CustomObjectsApi);
    const name = `status-vsc-${cluster.namespace}`;
    await api.createClusterCustomObject({
      group,
      version: 'v1',
      plural: 'volumesnapshotcontents',
      body: {
        apiVersion: `${group}/v1`,
        kind: 'VolumeSnapshotContent',
        metadata: { name },
        spec: {
          deletionPolicy: 'Delete',
          driver: 'csi.loopsnap.dev',
          source: { volumeHandle: 'vol-status' },
          volumeSnapshotRef: { name: 'status-vs', namespace: cluster.namespace },
        },
      },
    });
    const patch = (status: Record<string, unknown>) =>
      api.patchClusterCustomObjectStatus({
        group,
        version: 'v1',
        plural: 'volumesnapshotcontents',
        name,
        body: [{ op: 'add', path: '/status', value: status }],
      });
    const ns = 1_795_000_000_123_456_000; // int64 nanoseconds, exactly representable as a double
    const ok = (await patch({
      creationTime: ns,
      restoreSize: 1048576,
      readyToUse: true,
      snapshotHandle: 'snap-x',
    })) as {
      status: { snapshotHandle: string; restoreSize: number };
    };
    expect(ok.status).toMatchObject({ snapshotHandle: 'snap-x', restoreSize: 1048576 });
    await expect(patch({ restoreSize: -1 })).rejects.toThrow(/restoreSize/);
    await api.deleteClusterCustomObject({ group, version: 'v1', plural: 'volumesnapshotcontents', name });
  });
});

describe('upstream examples apply unchanged', () => {
  const ex = join(upstreamMain, 'examples', 'kubernetes');

  it('accepts snapshotclass-v1.yaml and snapshot-v1.yaml', () => {
    cluster.kubectl(['apply', '-f', join(ex, 'snapshotclass-v1.yaml')]);
    cluster.kubectl(['apply', '-f', join(ex, 'snapshot-v1.yaml')]);
    const got = JSON.parse(cluster.kubectl(['get', 'volumesnapshot', 'new-snapshot-demo-v1', '-o', 'json'])) as {
      spec: { source: { persistentVolumeClaimName: string }; volumeSnapshotClassName: string };
    };
    expect(got.spec).toEqual({
      source: { persistentVolumeClaimName: 'hpvc' },
      volumeSnapshotClassName: 'csi-hostpath-snapclass-v1',
    });
  });

  it('rejects invalid-snapshot-v1.yaml with the upstream message', () => {
    expect(() => cluster.kubectl(['apply', '-f', join(ex, 'invalid-snapshot-v1.yaml')])).toThrow(
      /exactly one of volumeSnapshotContentName and persistentVolumeClaimName must be set/,
    );
  });
});

describe('kubectl ergonomics', () => {
  it('explain shows our field descriptions', () => {
    const out = cluster.kubectl(['explain', 'volumesnapshot.spec.source'], { namespaced: false });
    expect(out).toMatch(/persistentVolumeClaimName/);
    expect(out).toMatch(/exactly one of persistentVolumeClaimName and\s+volumeSnapshotContentName/);
  });

  it('get shows the upstream printer columns', () => {
    cluster.kubectl(['apply', '-f', '-'], {
      input:
        'apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\nmetadata: {name: columns}\nspec: {source: {persistentVolumeClaimName: data}}\n',
    });
    const header = cluster.kubectl(['get', 'volumesnapshot', 'columns']).split('\n')[0] ?? '';
    expect(header.split(/\s+/).filter(Boolean)).toEqual([
      'NAME',
      'READYTOUSE',
      'SOURCEPVC',
      'SOURCESNAPSHOTCONTENT',
      'RESTORESIZE',
      'SNAPSHOTCLASS',
      'SNAPSHOTCONTENT',
      'CREATIONTIME',
      'AGE',
    ]);
  });
});
