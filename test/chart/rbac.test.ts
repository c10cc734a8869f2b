// SPDX-License-Identifier: Apache-2.0
// Least privilege is real: no rendered role grants a wildcard, and the controller and node plugins run
// under exactly the chart's RBAC (tokens of the ServiceAccounts `helm install` created) with the flags and
// TLS Secrets of the installed release, while the provisioning, snapshot, restore and clone flows run end
// to end (real engine, FUSE, loop devices, ext4; the kubelet stand-in calls NodeStage/NodePublish and plays
// the scheduler's part of setting volume.kubernetes.io/selected-node). Any 403 in a component's log fails.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KubeRest } from '../../common/src/kube-rest.js';
import { cleanupDir, isRoot, leftoversUnder, PluginProcess } from '../csi/plugin.js';
import { checksumFiles, writeFiles } from '../csi/volumes.js';
import { ControllerProcess, ensureBuilt, freePort } from '../support/controller-harness.js';
import { KubeletStandIn } from '../support/kubelet.js';
import { waitFor } from '../support/wait.js';
import { containerArgs, localizeArgs, secretFiles, serviceAccountKubeconfig } from './lib/chart-components.js';
import { CHART_DIR, cleanStderr, find, type K8sObject, only, parseManifests, render, runTool } from './lib/helm.js';
import { MATRIX } from './lib/matrix.js';
import { usePrivateCluster } from './lib/private-cluster.js';

interface Rule {
  apiGroups?: string[];
  resources?: string[];
  verbs: string[];
  nonResourceURLs?: string[];
  resourceNames?: string[];
}

describe('RBAC rules', () => {
  it.each(MATRIX)('grant no wildcard verbs, resources or groups with $name', ({ values }) => {
    const { objects } = render({ values });
    const roles = [...find(objects, 'Role'), ...find(objects, 'ClusterRole')];
    if ((values.rbac as { create?: boolean } | undefined)?.create === false) expect(roles).toEqual([]);
    else expect(roles.length).toBe(3);
    for (const r of roles) {
      for (const rule of (r as K8sObject & { rules: Rule[] }).rules) {
        const where = `${r.kind} ${r.metadata.name}: ${JSON.stringify(rule)}`;
        expect(rule.verbs, where).not.toContain('*');
        expect(rule.resources ?? [], where).not.toContain('*');
        expect(rule.apiGroups ?? [], where).not.toContain('*');
        expect(rule.resources?.some((x) => x.endsWith('/*')) ?? false, where).toBe(false);
        expect(rule.nonResourceURLs, where).toBeUndefined();
        expect(rule.verbs, where).not.toContain('escalate');
        expect(rule.verbs, where).not.toContain('bind');
        expect(rule.verbs, where).not.toContain('impersonate');
      }
    }
  });

  it('give the node plugin nothing cluster-wide and nothing outside its namespace', () => {
    const { objects } = render();
    const bindings = [...find(objects, 'ClusterRoleBinding'), ...find(objects, 'RoleBinding')] as Array<
      K8sObject & { subjects: Array<{ name: string }>; roleRef: { kind: string; name: string } }
    >;
    const nodeBindings = bindings.filter((b) => b.subjects.some((s) => s.name === 'loopsnap-node'));
    expect(nodeBindings.map((b) => `${b.kind}/${b.roleRef.kind}`)).toEqual(['RoleBinding/Role']);
    const role = only(objects, 'Role', 'loopsnap-node') as K8sObject & { rules: Rule[] };
    expect(role.rules).toEqual([
      { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['get', 'create', 'update'] },
    ]);
  });
});

type Obj = {
  metadata: { name: string; annotations?: Record<string, string> };
  spec: { volumeName?: string; capacity?: { storage?: string } };
  status?: {
    phase?: string;
    conditions?: Array<{ type: string }>;
    readyToUse?: boolean;
    boundVolumeSnapshotContentName?: string;
    error?: { message?: string };
  };
};

const NS = 'loopsnap';
const APPS = 'apps';
const NODES = ['node-a', 'node-b'];

describe.skipIf(!isRoot)('components under the chart RBAC (root: node plugins with FUSE and loop devices)', () => {
  const cluster = usePrivateCluster();
  const plugins = new Map<string, PluginProcess>();
  const controllers: ControllerProcess[] = [];
  let dir = '';
  let rest: KubeRest | undefined;
  let kubelet: KubeletStandIn;
  let ctlKubeconfig = '';
  let nodeKubeconfig = '';

  // The later --kubeconfig wins over the admin one tryKubectl passes first.
  const kubectlAs = (kubeconfig: string, args: readonly string[]) =>
    cluster.tryKubectl(['--kubeconfig', kubeconfig, ...args]);
  const get = (path: string) => rest!.get<Obj>(path).catch(() => undefined);
  const pvc = (name: string) => get(`/api/v1/namespaces/${APPS}/persistentvolumeclaims/${name}`);
  const vs = (name: string) => get(`/apis/snapshot.storage.k8s.io/v1/namespaces/${APPS}/volumesnapshots/${name}`);
  const bound = (name: string) =>
    waitFor(`PVC ${name} bound`, async () => ((await pvc(name))?.status?.phase === 'Bound' ? pvc(name) : undefined), {
      timeoutMs: 90_000,
    });
  const ready = (name: string) =>
    waitFor(
      `VolumeSnapshot ${name} ready`,
      async () => ((await vs(name))?.status?.readyToUse === true ? vs(name) : undefined),
      {
        timeoutMs: 120_000,
      },
    );
  /** A claim as a pod on `node` would get it: the scheduler's selected-node annotation included. */
  const claimYaml = (
    name: string,
    node: string,
    dataSource?: { kind: string; name: string; apiGroup?: string },
    volumeMode = 'Filesystem',
  ) =>
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'PersistentVolumeClaim',
      metadata: { name, namespace: APPS, annotations: { 'volume.kubernetes.io/selected-node': node } },
      spec: {
        storageClassName: 'loopsnap',
        accessModes: ['ReadWriteOnce'],
        resources: { requests: { storage: '64Mi' } },
        volumeMode,
        ...(dataSource ? { dataSource } : {}),
      },
    });
  const snapshotYaml = (name: string, claim: string, cls?: string) =>
    JSON.stringify({
      apiVersion: 'snapshot.storage.k8s.io/v1',
      kind: 'VolumeSnapshot',
      metadata: { name, namespace: APPS },
      spec: { ...(cls ? { volumeSnapshotClassName: cls } : {}), source: { persistentVolumeClaimName: claim } },
    });
  const apply = (json: string) => cluster.kubectl(['apply', '-f', '-'], json);
  const forbiddenLines = () =>
    [...controllers.flatMap((c) => c.lines), ...[...plugins.values()].flatMap((p) => p.lines)]
      .map((l) => JSON.stringify(l))
      .filter((l) => /forbidden|"statusCode":403|\b403\b/i.test(l));

  beforeAll(async () => {
    await ensureBuilt();
    dir = mkdtempSync(join(tmpdir(), 'loopsnap-chart-rbac-'));
    const r = runTool('helm', [
      'install',
      'loopsnap',
      CHART_DIR,
      '-n',
      NS,
      '--create-namespace',
      '--kubeconfig',
      cluster.kubeconfigPath,
    ]);
    if (r.code !== 0) throw new Error(`helm install failed: ${cleanStderr(r.stderr)}`);
    cluster.kubectl(['create', 'namespace', APPS]);
    const manifest = parseManifests(
      runTool('helm', ['get', 'manifest', 'loopsnap', '-n', NS, '--kubeconfig', cluster.kubeconfigPath]).stdout,
    );
    ctlKubeconfig = serviceAccountKubeconfig(cluster, NS, 'loopsnap-controller', join(dir, 'controller.kubeconfig'));
    nodeKubeconfig = serviceAccountKubeconfig(cluster, NS, 'loopsnap-node', join(dir, 'node.kubeconfig'));
    const nodeTls = secretFiles(cluster, NS, 'loopsnap-node-tls', dir);
    const ctlTls = secretFiles(cluster, NS, 'loopsnap-controller-tls', dir);
    rest = await KubeRest.fromKubeConfig(cluster.kc);
    kubelet = new KubeletStandIn(rest, plugins);

    const dsArgs = containerArgs(only(manifest, 'DaemonSet'), 'node-plugin');
    for (const node of NODES) {
      const port = await freePort();
      const args = localizeArgs(dsArgs, {
        // PluginProcess gives each plugin its own socket, state dir and node id.
        'node-id': null,
        endpoint: null,
        'state-dir': null,
        'log-level': null,
        'tcp-endpoint': `127.0.0.1:${port}`,
        'advertise-endpoint': `127.0.0.1:${port}`,
        'tls-cert-file': nodeTls.cert,
        'tls-key-file': nodeTls.key,
        'tls-client-ca-file': nodeTls.ca,
        'http-endpoint': `127.0.0.1:${await freePort()}`,
        'in-cluster': `--kubeconfig=${nodeKubeconfig}`,
      });
      plugins.set(node, await PluginProcess.start({ nodeId: node, extraArgs: args }));
    }
    await kubelet.registerNodes(NODES);

    const depArgs = containerArgs(only(manifest, 'Deployment'), 'controller');
    for (let i = 0; i < 2; i++) {
      const args = localizeArgs(depArgs, {
        'leader-election-identity': `replica-${i}`,
        // ControllerProcess serves metrics on a free local port.
        'http-endpoint': null,
        'log-level': null,
        'tls-ca-file': ctlTls.ca,
        'tls-cert-file': ctlTls.cert,
        'tls-key-file': ctlTls.key,
      });
      controllers.push(
        await ControllerProcess.start(
          [...args, '--kubeconfig', ctlKubeconfig, '--retry-interval-max', '3s'],
          join(dir, `controller-${i}.log`),
        ),
      );
    }
  }, 600_000);

  afterAll(async () => {
    await kubelet?.unmountAll().catch(() => undefined);
    for (const c of controllers) await c.stop().catch(() => undefined);
    for (const p of plugins.values()) await p.stop().catch(() => undefined);
    for (const p of plugins.values()) await cleanupDir(p.dir).catch(() => undefined);
    rest?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 300_000);

  it('the tokens carry only the chart RBAC (checked with kubectl auth can-i)', () => {
    const can = (kubeconfig: string, args: string[]) => kubectlAs(kubeconfig, ['auth', 'can-i', ...args]).stdout.trim();
    expect(can(ctlKubeconfig, ['list', 'volumesnapshots', '-A'])).toBe('yes');
    expect(can(ctlKubeconfig, ['create', 'persistentvolumes'])).toBe('yes');
    expect(can(ctlKubeconfig, ['update', 'persistentvolumes'])).toBe('no');
    expect(can(ctlKubeconfig, ['get', 'secrets', '-n', NS])).toBe('no');
    expect(can(ctlKubeconfig, ['create', 'pods', '-n', APPS])).toBe('no');
    expect(can(ctlKubeconfig, ['update', 'leases/loopsnap-controller-leader', '-n', NS])).toBe('yes');
    expect(can(ctlKubeconfig, ['update', 'leases/loopsnap-node-node-a', '-n', NS])).toBe('no');
    expect(can(nodeKubeconfig, ['update', 'leases', '-n', NS])).toBe('yes');
    expect(can(nodeKubeconfig, ['update', 'leases', '-n', 'default'])).toBe('no');
    expect(can(nodeKubeconfig, ['list', 'persistentvolumes'])).toBe('no');
    expect(can(nodeKubeconfig, ['get', 'secrets', '-n', NS])).toBe('no');
  });

  it('node plugins register and one controller replica leads', async () => {
    const leader = await waitFor(
      'a leading controller',
      async () => {
        for (const c of controllers) if (await c.isLeader()) return c;
        return undefined;
      },
      { timeoutMs: 60_000 },
    );
    await waitFor(
      'both nodes ready in the registry',
      async () => {
        const m = await leader.http('/metrics');
        const line = m?.body.split('\n').find((l) => l.startsWith('loopsnap_nodes_ready '));
        return line !== undefined && Number(line.split(' ')[1]) === NODES.length;
      },
      { timeoutMs: 60_000 },
    );
    const leases = JSON.parse(cluster.kubectl(['-n', NS, 'get', 'leases', '-o', 'json'])) as { items: K8sObject[] };
    expect(leases.items.map((l) => l.metadata.name).sort()).toEqual(
      ['loopsnap-controller-leader', 'loopsnap-node-node-a', 'loopsnap-node-node-b'].sort(),
    );
  });

  it('provisions, snapshots, restores and clones through the chart StorageClass and VolumeSnapshotClasses', async () => {
    apply(claimYaml('data', 'node-a'));
    await bound('data');
    const m = await kubelet.mount(APPS, 'data');
    expect(m.nodeId).toBe('node-a');
    const sums = await writeFiles(m.targetPath, [1 << 20, 4096, 200_000]);
    apply(snapshotYaml('snap', 'data'));
    const snap = await ready('snap');
    const content = JSON.parse(
      cluster.kubectl(['get', 'volumesnapshotcontent', snap.status!.boundVolumeSnapshotContentName!, '-o', 'json']),
    ) as { spec: { volumeSnapshotClassName: string; driver: string } };
    expect(content.spec).toMatchObject({ volumeSnapshotClassName: 'loopsnap', driver: 'csi.loopsnap.dev' });
    await writeFiles(m.targetPath, [1 << 20]);
    apply(
      claimYaml('restored', 'node-a', { kind: 'VolumeSnapshot', name: 'snap', apiGroup: 'snapshot.storage.k8s.io' }),
    );
    await bound('restored');
    const r = await kubelet.mount(APPS, 'restored');
    expect(await checksumFiles(r.targetPath, Object.keys(sums))).toEqual(sums);
    apply(claimYaml('cloned', 'node-a', { kind: 'PersistentVolumeClaim', name: 'data' }));
    await bound('cloned');
    const c = await kubelet.mount(APPS, 'cloned');
    expect(Object.keys(await checksumFiles(c.targetPath, Object.keys(sums)))).toEqual(Object.keys(sums));
  });

  // The chart's third class, loopsnap-clone, needs the engine's independent images (csi/src/driver
  // snapshot-service.ts refuses the method until then); its RBAC path is the same as these two.
  it.each([['loopsnap'], ['loopsnap-meta-bitmap']])('takes a snapshot with the chart class %s', async (cls) => {
    apply(snapshotYaml(`snap-${cls}`, 'data', cls));
    await ready(`snap-${cls}`);
  });

  it('expands a claim: the controller grows the PV and marks the claim for the node (raw block, see e2e 1-9)', async () => {
    apply(claimYaml('grow', 'node-b', undefined, 'Block'));
    const claim = await bound('grow');
    cluster.kubectl([
      '-n',
      APPS,
      'patch',
      'pvc',
      'grow',
      '--type=merge',
      '-p',
      '{"spec":{"resources":{"requests":{"storage":"128Mi"}}}}',
    ]);
    await waitFor(
      'PV capacity 128Mi',
      async () => (await get(`/api/v1/persistentvolumes/${claim.spec.volumeName}`))?.spec.capacity?.storage === '128Mi',
    );
    await waitFor('FileSystemResizePending on the claim', async () =>
      (await pvc('grow'))?.status?.conditions?.some((c) => c.type === 'FileSystemResizePending'),
    );
    await kubelet.finishExpansion(APPS, 'grow');
  });

  it('publishes CSIStorageCapacity in the release namespace and records Events on the objects', async () => {
    const caps = await waitFor(
      'CSIStorageCapacity objects for both nodes',
      () => {
        const list = JSON.parse(cluster.kubectl(['-n', NS, 'get', 'csistoragecapacities', '-o', 'json'])) as {
          items: unknown[];
        };
        return list.items.length >= NODES.length ? list.items : undefined;
      },
      { timeoutMs: 60_000 },
    );
    expect(caps.length).toBe(NODES.length);
    const events = JSON.parse(cluster.kubectl(['-n', APPS, 'get', 'events', '-o', 'json'])) as {
      items: Array<{ source?: { component?: string }; reportingComponent?: string }>;
    };
    expect(events.items.some((e) => (e.reportingComponent ?? e.source?.component ?? '').includes('loopsnap'))).toBe(
      true,
    );
  });

  it('deletes volumes and snapshots when their objects go', async () => {
    await kubelet.unmountAll();
    cluster.kubectl(['-n', APPS, 'delete', 'volumesnapshot', '--all', '--wait=false']);
    cluster.kubectl(['-n', APPS, 'delete', 'pvc', '--all', '--wait=false']);
    await waitFor(
      'PVs and snapshot contents gone',
      () => {
        const pvs = JSON.parse(cluster.kubectl(['get', 'pv', '-o', 'json'])) as { items: unknown[] };
        const contents = JSON.parse(cluster.kubectl(['get', 'volumesnapshotcontents', '-o', 'json'])) as {
          items: unknown[];
        };
        return pvs.items.length === 0 && contents.items.length === 0;
      },
      { timeoutMs: 120_000 },
    );
    // The plugin's own FUSE mount stays while it runs; no volume keeps a loop device or a mount.
    for (const p of plugins.values()) {
      const left = (await leftoversUnder(join(p.dir, 'state'))).filter(
        (x) => x !== `mount ${join(p.dir, 'state', 'fuse')}`,
      );
      expect(left).toEqual([]);
    }
  });

  it('no component was ever refused by the API server', () => {
    expect(forbiddenLines()).toEqual([]);
  });
});
