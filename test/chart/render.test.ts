// SPDX-License-Identifier: Apache-2.0
// charts/loopsnap rendered with helm: lint and template for the defaults and the value matrix, bad values
// refused at install time (values.schema.json and the templates' own checks), and what the defaults install.
import { execFileSync } from 'node:child_process';
import { lstatSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, realpathSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { ensureBuilt } from '../support/controller-harness.js';
import { REPO_ROOT } from '../support/paths.js';
import {
  CHART_DIR,
  cleanStderr,
  find,
  helmLint,
  helmTemplate,
  type K8sObject,
  KUBE_VERSION,
  only,
  parseManifests,
  render,
  runTool,
} from './lib/helm.js';
import { MATRIX } from './lib/matrix.js';

type Container = {
  name: string;
  image: string;
  imagePullPolicy?: string;
  args?: string[];
  env?: Array<{ name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string } } }>;
  command?: string[];
  securityContext?: Record<string, unknown>;
  volumeMounts?: Array<{ name: string; mountPath: string; mountPropagation?: string }>;
};
type PodSpec = {
  containers: Container[];
  serviceAccountName: string;
  volumes: Array<{ name: string; hostPath?: { path: string }; secret?: { secretName: string } }>;
  hostNetwork?: boolean;
  dnsPolicy?: string;
  priorityClassName?: string;
};

function podSpec(o: K8sObject): PodSpec {
  return (o.spec as { template: { spec: PodSpec } }).template.spec;
}

function container(o: K8sObject, name: string): Container {
  const c = podSpec(o).containers.find((x) => x.name === name);
  if (!c) throw new Error(`no container ${name} in ${o.kind} ${o.metadata.name}`);
  return c;
}

function env(c: Container, name: string): string | undefined {
  const e = c.env?.find((x) => x.name === name);
  return e === undefined ? undefined : (e.value ?? `fieldRef:${e.valueFrom?.fieldRef?.fieldPath ?? ''}`);
}

function hostPathOf(o: K8sObject, volume: string): string | undefined {
  return podSpec(o).volumes.find((v) => v.name === volume)?.hostPath?.path;
}

function flag(c: Container, name: string): string | undefined {
  const a = c.args?.find((x) => x.startsWith(`--${name}=`) || x === `--${name}`);
  return a === undefined ? undefined : a.includes('=') ? a.slice(a.indexOf('=') + 1) : 'true';
}

describe('helm lint and template', () => {
  it.each(MATRIX)('lints cleanly (--strict) with $name', ({ values }) => {
    const r = helmLint(values);
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toMatch(/1 chart\(s\) linted, 0 chart\(s\) failed/);
  });

  it.each(MATRIX)('renders parseable manifests with labels on every object with $name', ({ values }) => {
    const { objects } = render({ values, includeCrds: true });
    expect(objects.length).toBeGreaterThan(0);
    for (const o of objects) {
      expect(o.apiVersion, `${o.kind} ${o.metadata.name}`).toBeTruthy();
      expect(o.metadata.name, o.kind).toMatch(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/);
      expect(o.metadata.name.length, o.metadata.name).toBeLessThanOrEqual(
        o.kind === 'CustomResourceDefinition' ? 253 : 63,
      );
      if (o.kind !== 'CustomResourceDefinition' || o.metadata.name.endsWith('.loopsnap.dev')) {
        expect(o.metadata.labels?.['app.kubernetes.io/part-of'], `${o.kind} ${o.metadata.name}`).toBe('loopsnap');
      }
    }
    const keys = objects.map((o) => `${o.kind}/${o.metadata.namespace ?? ''}/${o.metadata.name}`);
    expect(new Set(keys).size, 'duplicate objects').toBe(keys.length);
  });
});

describe('what the defaults install', () => {
  const { objects } = render({ includeCrds: true });

  it('lists exactly the expected kinds', () => {
    const kinds = [...new Set(objects.map((o) => o.kind))].sort();
    expect(kinds).toEqual(
      [
        'ClusterRole',
        'ClusterRoleBinding',
        'CSIDriver',
        'CustomResourceDefinition',
        'DaemonSet',
        'Deployment',
        'PodDisruptionBudget',
        'Role',
        'RoleBinding',
        'Secret',
        'Service',
        'ServiceAccount',
        'StorageClass',
        'VolumeSnapshotClass',
      ].sort(),
    );
  });

  it('runs 2 controller replicas with leader election, a PDB and the chart ServiceAccount', () => {
    const d = only(objects, 'Deployment');
    expect((d.spec as { replicas: number }).replicas).toBe(2);
    const c = container(d, 'controller');
    expect(c.command).toEqual(['loopsnap-controller']);
    expect(flag(c, 'leader-election')).toBe('true');
    expect(flag(c, 'leader-election-id')).toBe('loopsnap-controller-leader');
    expect(flag(c, 'namespace')).toBe('loopsnap');
    expect(flag(c, 'registry-namespace')).toBe('loopsnap');
    expect(flag(c, 'tls-server-name')).toBe('loopsnap-node.loopsnap.svc');
    expect(c.securityContext).toMatchObject({ readOnlyRootFilesystem: true, allowPrivilegeEscalation: false });
    expect(podSpec(d).serviceAccountName).toBe('loopsnap-controller');
    const pdb = only(objects, 'PodDisruptionBudget');
    expect((pdb.spec as { minAvailable: number }).minAvailable).toBe(1);
  });

  it('runs a privileged node plugin with host mounts that registers itself with the kubelet', () => {
    const ds = only(objects, 'DaemonSet');
    const plugin = container(ds, 'node-plugin');
    expect(plugin.command).toEqual(['loopsnap-node']);
    expect(plugin.securityContext?.privileged).toBe(true);
    expect(flag(plugin, 'endpoint')).toBe('unix:///csi/csi.sock');
    expect(flag(plugin, 'in-cluster')).toBe('true');
    expect(flag(plugin, 'advertise-endpoint')).toBe('$(POD_IP):9820');
    const mounts = Object.fromEntries((plugin.volumeMounts ?? []).map((m) => [m.mountPath, m.mountPropagation ?? '']));
    expect(mounts).toMatchObject({
      '/csi': '',
      '/dev': '',
      '/var/lib/loopsnap': 'Bidirectional',
      '/var/lib/kubelet/pods': 'Bidirectional',
      '/var/lib/kubelet/plugins': 'Bidirectional',
      '/var/lib/kubelet/plugins_registry': '',
    });
    const hostPaths = podSpec(ds)
      .volumes.map((v) => v.hostPath?.path)
      .filter(Boolean);
    expect(hostPaths.sort()).toEqual(
      [
        '/dev',
        '/var/lib/kubelet/plugins',
        '/var/lib/kubelet/plugins/csi.loopsnap.dev',
        '/var/lib/kubelet/plugins_registry',
        '/var/lib/kubelet/pods',
        '/var/lib/loopsnap',
      ].sort(),
    );
    expect(podSpec(ds).containers.map((c) => c.name)).toEqual(['node-plugin']);
    expect(flag(plugin, 'kubelet-registration-socket')).toBe(
      '/var/lib/kubelet/plugins_registry/csi.loopsnap.dev-reg.sock',
    );
    expect(flag(plugin, 'kubelet-registration-path')).toBe('/var/lib/kubelet/plugins/csi.loopsnap.dev/csi.sock');
    expect(podSpec(ds).priorityClassName).toBe('system-node-critical');
  });

  it('declares the CSIDriver without attach, with pod info and capacity tracking', () => {
    const d = only(objects, 'CSIDriver', 'csi.loopsnap.dev');
    expect(d.spec).toMatchObject({
      attachRequired: false,
      podInfoOnMount: true,
      storageCapacity: true,
      volumeLifecycleModes: ['Persistent'],
    });
  });

  it('creates one VolumeSnapshotClass per method, exactly one of them the default', () => {
    const classes = find(objects, 'VolumeSnapshotClass') as Array<
      K8sObject & { driver: string; parameters: { method: string } }
    >;
    expect(classes.map((c) => c.parameters.method).sort()).toEqual(['clone', 'meta-bitmap', 'save-volume']);
    expect(classes.every((c) => c.driver === 'csi.loopsnap.dev')).toBe(true);
    const defaults = classes.filter(
      (c) => c.metadata.annotations?.['snapshot.storage.kubernetes.io/is-default-class'] === 'true',
    );
    expect(defaults.map((c) => c.parameters.method)).toEqual(['save-volume']);
    const sc = only(objects, 'StorageClass') as K8sObject & Record<string, unknown>;
    expect(sc).toMatchObject({ provisioner: 'csi.loopsnap.dev', volumeBindingMode: 'WaitForFirstConsumer' });
  });

  it('generates mutual-TLS material: a CA signing a server certificate for the node plugins and a client certificate', async () => {
    const { X509Certificate } = await import('node:crypto');
    const secrets = find(objects, 'Secret') as Array<K8sObject & { data: Record<string, string> }>;
    expect(secrets.map((s) => s.metadata.name).sort()).toEqual(['loopsnap-controller-tls', 'loopsnap-node-tls']);
    const pem = (s: K8sObject & { data: Record<string, string> }, k: string): string =>
      Buffer.from(s.data[k]!, 'base64').toString();
    const node = secrets.find((s) => s.metadata.name === 'loopsnap-node-tls')!;
    const ctl = secrets.find((s) => s.metadata.name === 'loopsnap-controller-tls')!;
    expect(pem(node, 'ca.crt')).toBe(pem(ctl, 'ca.crt'));
    const ca = new X509Certificate(pem(node, 'ca.crt'));
    const server = new X509Certificate(pem(node, 'tls.crt'));
    const client = new X509Certificate(pem(ctl, 'tls.crt'));
    expect(server.verify(ca.publicKey)).toBe(true);
    expect(client.verify(ca.publicKey)).toBe(true);
    expect(server.checkHost('loopsnap-node.loopsnap.svc')).toBe('loopsnap-node.loopsnap.svc');
    expect(server.checkPrivateKey((await import('node:crypto')).createPrivateKey(pem(node, 'tls.key')))).toBe(true);
  });
});

describe('registration with the kubelet', () => {
  /** The host path behind a container path, through the container's hostPath mounts. */
  const onHost = (o: K8sObject, c: Container, path: string): string | undefined => {
    const m = (c.volumeMounts ?? [])
      .filter((x) => path === x.mountPath || path.startsWith(`${x.mountPath}/`))
      .sort((a, b) => b.mountPath.length - a.mountPath.length)[0];
    const host = m && hostPathOf(o, m.name);
    return host === undefined ? undefined : `${host}${path.slice(m!.mountPath.length)}`;
  };

  it.each([
    ['the defaults', {}, '/var/lib/kubelet'],
    ['a k0s kubelet dir (trailing slash)', { node: { kubeletDir: '/var/lib/k0s/kubelet/' } }, '/var/lib/k0s/kubelet'],
  ])(
    'with %s the node plugin serves the registration socket the kubelet watches, naming the CSI socket as the kubelet sees it',
    (_n, values, kubelet) => {
      const ds = only(render({ values }).objects, 'DaemonSet');
      const plugin = container(ds, 'node-plugin');
      const sock = flag(plugin, 'kubelet-registration-socket');
      expect(sock).toBe(`${kubelet}/plugins_registry/csi.loopsnap.dev-reg.sock`);
      // Inside the container the socket lies where it lies on the host, in the kubelet's plugins_registry.
      expect(onHost(ds, plugin, sock!)).toBe(sock);
      const csiSocket = flag(plugin, 'endpoint')!.replace(/^unix:\/\//, '');
      expect(flag(plugin, 'kubelet-registration-path')).toBe(`${kubelet}/plugins/csi.loopsnap.dev/csi.sock`);
      expect(onHost(ds, plugin, csiSocket)).toBe(flag(plugin, 'kubelet-registration-path'));
      // Staging and target paths are confined below it (issue 15 finding 3).
      expect(flag(plugin, 'kubelet-dir')).toBe(kubelet);
      // Every kubelet path derives from node.kubeletDir.
      const kubeletPaths = podSpec(ds)
        .volumes.map((v) => v.hostPath?.path ?? '')
        .filter((p) => p.includes('kubelet'));
      expect(kubeletPaths.length).toBe(4);
      for (const p of kubeletPaths) expect(p.startsWith(`${kubelet}/`), p).toBe(true);
      if (kubelet !== '/var/lib/kubelet') expect(JSON.stringify(ds)).not.toContain('/var/lib/kubelet/');
    },
  );

  it('node.registrar.enabled runs node-driver-registrar instead, and the node plugin does not register too', () => {
    const ds = only(render({ values: { node: { registrar: { enabled: true } } } }).objects, 'DaemonSet');
    expect(podSpec(ds).containers.map((c) => c.name)).toEqual(['node-plugin', 'node-driver-registrar']);
    const reg = container(ds, 'node-driver-registrar');
    expect(reg.image).toBe('registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.17.0');
    expect(flag(reg, 'csi-address')).toBe('/csi/csi.sock');
    expect(flag(reg, 'kubelet-registration-path')).toBe('/var/lib/kubelet/plugins/csi.loopsnap.dev/csi.sock');
    expect(flag(reg, 'http-endpoint')).toBe(':9809');
    expect(onHost(ds, reg, '/registration')).toBe('/var/lib/kubelet/plugins_registry');
    const plugin = container(ds, 'node-plugin');
    expect(flag(plugin, 'kubelet-registration-socket')).toBeUndefined();
    expect(flag(plugin, 'kubelet-registration-path')).toBeUndefined();
    expect((plugin.volumeMounts ?? []).map((m) => m.name)).not.toContain('registration-dir');
  });
});

describe('nodes without kube-proxy or a pod network', () => {
  const components = (values: Record<string, unknown>): { plugin: Container; ctl: Container; objects: K8sObject[] } => {
    const { objects } = render({ values });
    return {
      objects,
      plugin: container(only(objects, 'DaemonSet'), 'node-plugin'),
      ctl: container(only(objects, 'Deployment'), 'controller'),
    };
  };

  it('apiServer.host/port give both components KUBERNETES_SERVICE_HOST/PORT; unset, neither has them', () => {
    const set = components({ apiServer: { host: '127.0.0.1', port: 6443 } });
    for (const c of [set.plugin, set.ctl]) {
      expect(env(c, 'KUBERNETES_SERVICE_HOST'), c.name).toBe('127.0.0.1');
      expect(env(c, 'KUBERNETES_SERVICE_PORT'), c.name).toBe('6443');
    }
    const unset = components({});
    for (const c of [unset.plugin, unset.ctl]) {
      expect(
        c.env?.map((e) => e.name).filter((n) => n.startsWith('KUBERNETES_')),
        c.name,
      ).toEqual([]);
    }
  });

  it('on the host network the node plugin binds its TCP ports to the pod IP (the node IP), never 0.0.0.0', () => {
    const { objects, plugin } = components({ node: { hostNetwork: true, registrar: { enabled: true } } });
    const ds = only(objects, 'DaemonSet');
    expect(podSpec(ds)).toMatchObject({ hostNetwork: true, dnsPolicy: 'ClusterFirstWithHostNet' });
    expect(flag(plugin, 'tcp-endpoint')).toBe('$(POD_IP):9820');
    expect(flag(plugin, 'http-endpoint')).toBe('$(POD_IP):9821');
    expect(env(plugin, 'POD_IP')).toBe('fieldRef:status.podIP');
    const reg = container(ds, 'node-driver-registrar');
    expect(flag(reg, 'http-endpoint')).toBe('$(POD_IP):9809');
    expect(env(reg, 'POD_IP')).toBe('fieldRef:status.podIP');
    for (const c of podSpec(ds).containers) {
      for (const a of c.args ?? []) expect(a, `${c.name} ${a}`).not.toMatch(/=(0\.0\.0\.0)?:\d+$/);
    }
  });

  it('in its own network namespace the node plugin binds every interface, as before', () => {
    const { objects, plugin } = components({});
    expect(podSpec(only(objects, 'DaemonSet')).hostNetwork).toBe(false);
    expect(flag(plugin, 'tcp-endpoint')).toBe('0.0.0.0:9820');
    expect(flag(plugin, 'http-endpoint')).toBe('0.0.0.0:9821');
  });

  it('controller.hostNetwork binds the metrics endpoint to the pod IP; off, to every interface', () => {
    const on = components({ controller: { hostNetwork: true } });
    const d = only(on.objects, 'Deployment');
    expect(podSpec(d)).toMatchObject({ hostNetwork: true, dnsPolicy: 'ClusterFirstWithHostNet' });
    expect(flag(on.ctl, 'http-endpoint')).toBe('$(POD_IP):9810');
    expect(env(on.ctl, 'POD_IP')).toBe('fieldRef:status.podIP');
    const off = components({});
    expect(podSpec(only(off.objects, 'Deployment')).hostNetwork).toBeUndefined();
    expect(flag(off.ctl, 'http-endpoint')).toBe(':9810');
    expect(env(off.ctl, 'POD_IP')).toBeUndefined();
  });

  it('the node plugin runs under its keeper and surges on upgrade, so volumes stay up (ADR 0011)', () => {
    const on = components({});
    const ds = only(on.objects, 'DaemonSet');
    expect(flag(on.plugin, 'keeper')).toBe('true');
    expect((ds.spec as { updateStrategy: unknown }).updateStrategy).toEqual({
      type: 'RollingUpdate',
      rollingUpdate: { maxSurge: 1, maxUnavailable: 0 },
    });
    expect(flag(components({ node: { keeper: false } }).plugin, 'keeper')).toBeUndefined();
  });

  it('on the host network no node plugin port is declared (a surging pod shares the node), probes by number', () => {
    type Probed = Container & {
      ports?: unknown[];
      livenessProbe: { httpGet: { port: unknown } };
      readinessProbe: { httpGet?: { port: unknown }; exec?: { command: string[] } };
    };
    const host = components({ node: { hostNetwork: true } }).plugin as Probed;
    expect(host.ports).toBeUndefined();
    expect(host.livenessProbe.httpGet.port).toBe(9821);
    // Under the keeper, ready only once this pod's own server serves (the old pod's answers HTTP meanwhile).
    expect(host.readinessProbe.exec?.command).toEqual(['test', '-e', '/tmp/loopsnap-serving']);
    expect(flag(host, 'keeper-ready-file')).toBe('/tmp/loopsnap-serving');
    const own = components({ node: { keeper: false } }).plugin as Probed;
    expect(own.ports).toHaveLength(2);
    expect(own.readinessProbe.httpGet?.port).toBe(9821);
  });

  it('controller.updateStrategy replaces the rolling update of the defaults', () => {
    const strategy = (values: Record<string, unknown>): unknown =>
      (only(render({ values }).objects, 'Deployment').spec as { strategy: unknown }).strategy;
    expect(strategy({})).toEqual({ type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 1, maxSurge: 1 } });
    expect(strategy({ controller: { replicas: 1, podDisruptionBudget: { enabled: false } } })).toEqual({
      type: 'RollingUpdate',
      rollingUpdate: { maxUnavailable: 0, maxSurge: 1 },
    });
    expect(strategy({ controller: { updateStrategy: { type: 'Recreate' } } })).toEqual({ type: 'Recreate' });
  });

  it('image.pullPolicy reaches both components', () => {
    const { plugin, ctl } = components({ image: { pullPolicy: 'Never' } });
    expect(plugin.imagePullPolicy).toBe('Never');
    expect(ctl.imagePullPolicy).toBe('Never');
  });
});

describe('CRDs come from the repository crds/ directory', () => {
  it('the snapshot CRDs are the subchart crds/ symlink to crds/snapshot.storage.k8s.io', () => {
    const link = join(CHART_DIR, 'charts', 'snapshot-crds', 'crds');
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    expect(realpathSync(link)).toBe(realpathSync(join(REPO_ROOT, 'crds', 'snapshot.storage.k8s.io')));
    expect(readlinkSync(link).startsWith('..')).toBe(true);
    const files = join(CHART_DIR, 'files', 'crds');
    expect(lstatSync(files).isSymbolicLink()).toBe(true);
    expect(realpathSync(files)).toBe(realpathSync(join(REPO_ROOT, 'crds')));
  });

  it('helm template --include-crds emits every snapshot CRD file unchanged', () => {
    const dir = join(REPO_ROOT, 'crds', 'snapshot.storage.k8s.io');
    const { objects } = render({ includeCrds: true });
    const files = readdirSync(dir).filter((f) => f.endsWith('.yaml'));
    expect(files.length).toBe(3);
    for (const f of files) {
      for (const doc of parseAllDocuments(readFileSync(join(dir, f), 'utf8'))) {
        const want = doc.toJS() as K8sObject;
        expect(only(objects, 'CustomResourceDefinition', want.metadata.name)).toEqual(want);
      }
    }
  });

  it('helm package stores the linked files: the packaged chart renders the same objects', () => {
    const dir = mkdtempSync(join(tmpdir(), 'loopsnap-package-'));
    try {
      const r = runTool('helm', ['package', CHART_DIR, '-d', dir]);
      expect(r.code, r.stderr).toBe(0);
      const tgz = join(
        dir,
        readdirSync(dir).find((f) => f.endsWith('.tgz'))!,
      );
      const listing = execFileSync('tar', ['tzf', tgz]).toString();
      expect(listing).toContain('loopsnap/charts/snapshot-crds/crds/volumesnapshots.yaml');
      expect(listing).not.toContain('loopsnap/files/crds/snapshot.storage.k8s.io/');
      // Each render makes new TLS material: leave out the Secrets and the pods' checksum of them.
      const strip = (objs: K8sObject[]): unknown =>
        JSON.parse(
          JSON.stringify(
            objs.filter((o) => o.kind !== 'Secret'),
            (k, v: unknown) => (k === 'checksum/tls' ? undefined : v),
          ),
        );
      const fromDir = render({ includeCrds: true }).objects;
      const packaged = parseManifests(
        runTool('helm', [
          'template',
          'loopsnap',
          tgz,
          '-n',
          'loopsnap',
          '--kube-version',
          KUBE_VERSION,
          '--include-crds',
        ]).stdout,
      );
      expect(strip(packaged)).toEqual(strip(fromDir));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('snapshotCrds.install=false leaves the snapshot CRDs out', () => {
    const { objects } = render({ includeCrds: true, values: { snapshotCrds: { install: false } } });
    expect(
      find(objects, 'CustomResourceDefinition').filter((c) => c.metadata.name.endsWith('.snapshot.storage.k8s.io')),
    ).toEqual([]);
  });

  it('renders every crds/loopsnap.dev file as a template with the keep policy, and none when crds.install=false', () => {
    const dir = join(REPO_ROOT, 'crds', 'loopsnap.dev');
    const expected: K8sObject[] = [];
    try {
      for (const f of readdirSync(dir).filter((x) => /\.ya?ml$/.test(x))) {
        for (const doc of parseAllDocuments(readFileSync(join(dir, f), 'utf8'))) {
          const o = doc.toJS() as K8sObject | null;
          if (o) expected.push(o);
        }
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    const { objects } = render();
    const ours = find(objects, 'CustomResourceDefinition');
    expect(ours.map((o) => o.metadata.name).sort()).toEqual(expected.map((o) => o.metadata.name).sort());
    for (const want of expected) {
      const got = only(ours, 'CustomResourceDefinition', want.metadata.name);
      expect(got.metadata.annotations?.['helm.sh/resource-policy']).toBe('keep');
      expect(got.metadata.labels?.['app.kubernetes.io/part-of']).toBe('loopsnap');
      const strip = (o: K8sObject): unknown => ({ ...o, metadata: { name: o.metadata.name } });
      expect(strip(got)).toEqual(strip(want));
    }
    expect(find(render({ values: { crds: { install: false } } }).objects, 'CustomResourceDefinition')).toEqual([]);
  });
});

describe('bad values fail at install time with a reason', () => {
  const bad: Array<{ name: string; args: string[]; values?: Record<string, unknown>; reason: RegExp }> = [
    { name: 'an unknown top-level field', args: ['--set', 'replicas=3'], reason: /additional properties 'replicas'/ },
    {
      name: 'an unknown nested field',
      args: ['--set', 'node.statedir=/x'],
      reason: /additional properties 'statedir'/,
    },
    { name: 'zero controller replicas', args: ['--set', 'controller.replicas=0'], reason: /controller\/replicas/ },
    { name: 'a relative state dir', args: ['--set', 'node.stateDir=var/lib/x'], reason: /node\/stateDir/ },
    { name: 'an unknown TLS source', args: ['--set', 'tls.source=vault'], reason: /tls\/source/ },
    { name: 'a bad log level', args: ['--set', 'node.logLevel=verbose'], reason: /node\/logLevel/ },
    { name: 'a bad duration', args: ['--set', 'controller.timeout=1 minute'], reason: /controller\/timeout/ },
    { name: 'a string port', args: ['--set-string', 'node.grpcPort=http'], reason: /node\/grpcPort/ },
    { name: 'an unknown file system', args: ['--set', 'storageClass.fsType=btrfs'], reason: /storageClass\/fsType/ },
    {
      name: 'a StorageClass parameter the node plugin refuses',
      args: ['--set', 'storageClass.parameters.speed=fast'],
      reason: /does not match pattern/,
    },
    {
      name: 'an unknown snapshot method',
      args: [
        '--set',
        'volumeSnapshotClasses.classes[0].name=x',
        '--set',
        'volumeSnapshotClasses.classes[0].method=zfs',
      ],
      reason: /method/,
    },
    {
      name: 'tls.source=secret without Secret names',
      args: ['--set', 'tls.source=secret'],
      reason: /tls\/secret|nodeSecretName/,
    },
    {
      name: 'two default VolumeSnapshotClasses',
      args: [],
      values: {
        volumeSnapshotClasses: {
          classes: [
            { name: 'a', method: 'clone', default: true },
            { name: 'b', method: 'save-volume', default: true },
          ],
        },
      },
      reason: /at most one class may have default: true/,
    },
    {
      name: 'two VolumeSnapshotClasses with one name',
      args: [],
      values: {
        volumeSnapshotClasses: {
          classes: [
            { name: 'a', method: 'clone' },
            { name: 'a', method: 'save-volume' },
          ],
        },
      },
      reason: /the name "a" appears twice/,
    },
    {
      name: 'two replicas without leader election',
      args: ['--set', 'controller.leaderElection.enabled=false'],
      reason: /needs controller.replicas=1/,
    },
    {
      name: 'a PDB that blocks every drain',
      args: ['--set', 'controller.podDisruptionBudget.minAvailable=2'],
      reason: /minAvailable must be smaller than controller.replicas/,
    },
    {
      name: 'a ServiceMonitor without metrics Services',
      args: ['--set', 'metrics.serviceMonitor.enabled=true', '--set', 'metrics.service.enabled=false'],
      reason: /needs metrics.service.enabled/,
    },
    {
      name: 'an unknown registrar field',
      args: ['--set', 'node.registrar.enable=true'],
      reason: /additional properties 'enable'/,
    },
    { name: 'a bad pull policy', args: ['--set', 'image.pullPolicy=Sometimes'], reason: /image\/pullPolicy/ },
    {
      name: 'an API server host without a port',
      args: ['--set', 'apiServer.host=127.0.0.1'],
      reason: /apiServer.host needs apiServer.port/,
    },
    {
      name: 'an API server port without a host',
      args: ['--set', 'apiServer.port=6443'],
      reason: /apiServer.port needs apiServer.host/,
    },
    { name: 'an API server port out of range', args: ['--set', 'apiServer.port=70000'], reason: /apiServer\/port/ },
    {
      name: 'a Recreate strategy with rolling-update parameters',
      args: [
        '--set',
        'controller.updateStrategy.type=Recreate',
        '--set',
        'controller.updateStrategy.rollingUpdate.maxSurge=1',
      ],
      reason: /controller.updateStrategy.rollingUpdate goes only with type RollingUpdate, not Recreate/,
    },
    {
      name: 'an existing ServiceAccount without a name',
      args: ['--set', 'node.serviceAccount.create=false'],
      reason: /node.serviceAccount.name is required/,
    },
  ];

  it.each(bad)('refuses $name', ({ args, values, reason }) => {
    const r = helmTemplate({ args, ...(values ? { values } : {}) });
    expect(r.code).not.toBe(0);
    expect(cleanStderr(r.stderr)).toMatch(reason);
  });
});

describe('the chart and the components agree', () => {
  it('every flag the chart passes is one the component knows (an unknown flag would crash-loop the pod)', async () => {
    await ensureBuilt();
    const help = (main: string): string =>
      execFileSync(process.execPath, [join(REPO_ROOT, 'dist', main), '--help'], {
        stdio: ['ignore', 'pipe', 'pipe'],
      }).toString();
    const nodeHelp = help('csi/src/main.js');
    const ctlHelp = help('controller/src/main.js');
    for (const { values } of MATRIX) {
      const { objects } = render({ values });
      const ds = only(objects, 'DaemonSet');
      const known = (help: string, arg: string): boolean =>
        new RegExp(`^\\s+--${arg.slice(2).split('=')[0]}(?=[\\s=]|$)`, 'm').test(help);
      for (const a of container(ds, 'node-plugin').args ?? []) expect(known(nodeHelp, a), a).toBe(true);
      for (const a of container(only(objects, 'Deployment'), 'controller').args ?? []) {
        expect(known(ctlHelp, a), a).toBe(true);
      }
    }
  });
});
