// SPDX-License-Identifier: Apache-2.0
// The foundation chain on a control plane of its own (own directory and ports): hack/cluster.sh up →
// CRDs applied → a VolumeSnapshotClass created and read back with @kubernetes/client-node → kubectl sees it
// → hack/cluster.sh down leaves no process and no listening port behind.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { CustomObjectsApi, KubeConfig, VersionApi } from '@kubernetes/client-node';
import { afterAll, describe, expect, it } from 'vitest';
import { toolBin } from '../support/cluster.js';
import { CLUSTER_SCRIPT } from '../support/cluster-env.js';
import { SNAPSHOT_CRD_DIR } from '../support/crds-install.js';
import { pinnedVersion } from '../support/go-modules.js';
import { REPO_ROOT } from '../support/paths.js';

const dir = mkdtempSync(join(REPO_ROOT, '.loopsnap', 'smoke-'));
const slot = Number(process.env.LOOPSNAP_TEST_SLOT ?? '0') * 10;
const ports = {
  api: String(18443 + slot),
  etcd: String(14379 + slot),
  peer: String(14380 + slot),
  kcm: String(10757 + slot),
};
const env = {
  ...process.env,
  LOOPSNAP_CLUSTER_DIR: dir,
  LOOPSNAP_PORT_APISERVER: ports.api,
  LOOPSNAP_PORT_ETCD: ports.etcd,
  LOOPSNAP_PORT_ETCD_PEER: ports.peer,
  LOOPSNAP_PORT_KCM: ports.kcm,
};
const script = (cmd: string) =>
  execFileSync(CLUSTER_SCRIPT, [cmd], { env, stdio: ['ignore', 'pipe', 'pipe'], timeout: 900_000 }).toString();
const pids = (): number[] =>
  ['etcd', 'kube-apiserver', 'kube-controller-manager'].map((c) =>
    Number(readFileSync(join(dir, 'run', `${c}.pid`), 'utf8')),
  );
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};
const listening = (port: string) =>
  execFileSync('ss', ['-Hltn', `sport = :${port}`])
    .toString()
    .trim() !== '';

afterAll(() => {
  script('down');
  rmSync(dir, { recursive: true, force: true });
});

describe('control plane smoke', () => {
  let started: number[] = [];
  let kubeconfig = '';

  it('comes up, is idempotent, and reports the pinned version', async () => {
    kubeconfig = script('up').trim().split('\n').pop() ?? '';
    expect(kubeconfig).toBe(join(dir, 'kubeconfig'));
    started = pids();
    expect(started.every(alive)).toBe(true);
    expect(script('up').trim()).toBe(kubeconfig); // second call: same processes, no error
    expect(pids()).toEqual(started);
    const kc = new KubeConfig();
    kc.loadFromFile(kubeconfig);
    const v = await kc.makeApiClient(VersionApi).getCode();
    expect(v.gitVersion).toBe(pinnedVersion('K8S_VERSION'));
    const readyz = execFileSync(toolBin('kubectl'), ['--kubeconfig', kubeconfig, 'get', '--raw', '/readyz']).toString();
    expect(readyz.trim()).toBe('ok');
  });

  it('serves our CRDs; a VolumeSnapshotClass round-trips through client-node and kubectl', async () => {
    const kubectl = (...args: string[]) =>
      execFileSync(toolBin('kubectl'), ['--kubeconfig', kubeconfig, ...args], {
        stdio: ['ignore', 'pipe', 'pipe'],
      }).toString();
    kubectl('apply', '-f', SNAPSHOT_CRD_DIR);
    kubectl(
      'wait',
      '--for=condition=Established',
      '--timeout=60s',
      'crd/volumesnapshotclasses.snapshot.storage.k8s.io',
    );
    const kc = new KubeConfig();
    kc.loadFromFile(kubeconfig);
    const api = kc.makeApiClient(CustomObjectsApi);
    const body = {
      apiVersion: 'snapshot.storage.k8s.io/v1',
      kind: 'VolumeSnapshotClass',
      metadata: { name: 'smoke' },
      driver: 'csi.loopsnap.dev',
      deletionPolicy: 'Delete',
      parameters: { method: 'meta-bitmap' },
    };
    await api.createClusterCustomObject({
      group: 'snapshot.storage.k8s.io',
      version: 'v1',
      plural: 'volumesnapshotclasses',
      body,
    });
    const got = (await api.getClusterCustomObject({
      group: 'snapshot.storage.k8s.io',
      version: 'v1',
      plural: 'volumesnapshotclasses',
      name: 'smoke',
    })) as typeof body;
    expect(got).toMatchObject({
      driver: 'csi.loopsnap.dev',
      deletionPolicy: 'Delete',
      parameters: { method: 'meta-bitmap' },
    });
    const listed = kubectl(
      'get',
      'volumesnapshotclasses',
      '-o',
      'custom-columns=NAME:.metadata.name,DRIVER:.driver',
      '--no-headers',
    );
    expect(listed.trim().split(/\s+/)).toEqual(['smoke', 'csi.loopsnap.dev']);
  });

  it('runs kube-controller-manager for real: a namespace deletion completes', () => {
    const kubectl = (...args: string[]) =>
      execFileSync(toolBin('kubectl'), ['--kubeconfig', kubeconfig, ...args], {
        stdio: ['ignore', 'pipe', 'pipe'],
      }).toString();
    kubectl('create', 'namespace', 'smoke-gone');
    kubectl('create', 'configmap', 'x', '-n', 'smoke-gone');
    kubectl('delete', 'namespace', 'smoke-gone', '--wait=true', '--timeout=90s');
    expect(() => kubectl('get', 'namespace', 'smoke-gone')).toThrow(/NotFound/);
  });

  it('tears down without leaving a process or a port behind', () => {
    script('down');
    expect(started.filter(alive)).toEqual([]);
    expect(Object.values(ports).filter(listening)).toEqual([]);
    script('down'); // idempotent
  });
});
