// SPDX-License-Identifier: Apache-2.0
// The values the chart tests render: the defaults and a matrix of non-default settings that together reach
// every template branch (monitoring on, each TLS source, minimal and fully customised installs).

export interface MatrixCase {
  readonly name: string;
  readonly values: Record<string, unknown>;
}

export const MATRIX: readonly MatrixCase[] = [
  { name: 'defaults', values: {} },
  {
    name: 'monitoring with a save pool quota',
    values: {
      node: { saveQuotaBytes: 8 * 1024 ** 3 },
      metrics: {
        service: { annotations: { 'prometheus.io/scrape': 'true' } },
        serviceMonitor: {
          enabled: true,
          labels: { release: 'kube-prometheus-stack' },
          interval: '15s',
          metricRelabelings: [{ action: 'drop', regex: 'nodejs_gc_.*', sourceLabels: ['__name__'] }],
        },
        prometheusRule: {
          enabled: true,
          labels: { release: 'kube-prometheus-stack' },
          additionalAlertLabels: { team: 'storage' },
        },
        grafanaDashboard: { enabled: true, annotations: { grafana_folder: 'Storage' } },
      },
    },
  },
  {
    name: 'cert-manager with a chart-made CA',
    values: { tls: { source: 'cert-manager' }, metrics: { prometheusRule: { enabled: true } } },
  },
  {
    name: 'cert-manager with a ClusterIssuer',
    values: {
      tls: {
        source: 'cert-manager',
        serverName: 'node.loopsnap.example.com',
        certManager: {
          issuerRef: { name: 'corp-ca', kind: 'ClusterIssuer', group: 'cert-manager.io' },
          duration: '8760h',
        },
      },
    },
  },
  {
    name: 'existing TLS Secrets',
    values: {
      tls: { source: 'secret', secret: { nodeSecretName: 'my-node-tls', controllerSecretName: 'my-ctl-tls' } },
    },
  },
  {
    name: 'minimal: one replica, nothing optional',
    values: {
      controller: { replicas: 1, leaderElection: { enabled: false }, podDisruptionBudget: { enabled: false } },
      csiDriver: { create: false },
      storageClass: { create: false },
      volumeSnapshotClasses: { create: false },
      crds: { install: false },
      snapshotCrds: { install: false },
      rbac: { create: false },
      metrics: { service: { enabled: false } },
    },
  },
  {
    name: 'a node without kube-proxy: host network, API server override',
    values: {
      apiServer: { host: '127.0.0.1', port: 6443 },
      image: { repository: 'loopsnap', tag: 'dev', pullPolicy: 'Never' },
      controller: {
        replicas: 1,
        hostNetwork: true,
        updateStrategy: { type: 'Recreate' },
        podDisruptionBudget: { enabled: false },
      },
      node: { hostNetwork: true, stateDir: '/var/lib/kubelet/loopsnap' },
    },
  },
  {
    name: 'customised everything',
    values: {
      fullnameOverride: 'snaps',
      commonLabels: { 'example.com/team': 'storage' },
      image: { repository: 'registry.example.com/loopsnap', digest: `sha256:${'a'.repeat(64)}`, pullPolicy: 'Always' },
      imagePullSecrets: [{ name: 'regcred' }],
      controller: {
        replicas: 3,
        podDisruptionBudget: { minAvailable: 2 },
        leaderElection: { leaseDuration: '30s', renewDeadline: '20s', retryPeriod: '5s' },
        workerThreads: 4,
        logLevel: 'debug',
        extraArgs: ['--snapshot-name-prefix=snap'],
        extraEnv: [{ name: 'NODE_OPTIONS', value: '--max-old-space-size=256' }],
        resources: { requests: { cpu: '100m', memory: '200Mi' }, limits: { cpu: 1, memory: '1Gi' } },
        tolerations: [{ key: 'dedicated', operator: 'Equal', value: 'storage', effect: 'NoSchedule' }],
        affinity: {
          nodeAffinity: {
            requiredDuringSchedulingIgnoredDuringExecution: {
              nodeSelectorTerms: [
                { matchExpressions: [{ key: 'node-role.kubernetes.io/control-plane', operator: 'DoesNotExist' }] },
              ],
            },
          },
        },
        topologySpreadConstraints: [
          {
            maxSkew: 1,
            topologyKey: 'topology.kubernetes.io/zone',
            whenUnsatisfiable: 'ScheduleAnyway',
            labelSelector: { matchLabels: { 'app.kubernetes.io/component': 'controller' } },
          },
        ],
        priorityClassName: '',
        podAnnotations: { 'example.com/audit': 'on' },
        serviceAccount: { name: 'snaps-ctl', annotations: { 'example.com/role': 'ctl' } },
      },
      node: {
        stateDir: '/mnt/fast/loopsnap',
        kubeletDir: '/var/lib/k0s/kubelet/',
        hostNetwork: true,
        grpcPort: 19820,
        metricsPort: 19821,
        defaultFsType: 'xfs',
        maxVolumesPerNode: 64,
        fuseWorkers: 4,
        nodeSelector: { 'example.com/storage': 'true' },
        tolerations: [],
        priorityClassName: '',
        extraArgs: ['--block-size-bytes=4096'],
        updateStrategy: { type: 'OnDelete' },
        registrar: { enabled: true, image: { tag: 'v2.16.0' }, logVerbosity: 5 },
      },
      csiDriver: { fsGroupPolicy: 'ReadWriteOnceWithFSType', storageCapacity: false, podInfoOnMount: false },
      storageClass: {
        name: 'fast-snaps',
        isDefault: true,
        reclaimPolicy: 'Retain',
        volumeBindingMode: 'Immediate',
        allowVolumeExpansion: false,
        fsType: 'xfs',
        hydrate: true,
        parameters: { 'csi.storage.k8s.io/provisioner-secret-name': 'none' },
        mountOptions: ['noatime'],
      },
      volumeSnapshotClasses: {
        deletionPolicy: 'Retain',
        classes: [
          { name: 'snaps-cow', method: 'save-volume' },
          { name: 'snaps-full', method: 'clone', default: true },
        ],
      },
      crds: { keep: false },
      tls: { helm: { validityDays: 365 } },
    },
  },
];
