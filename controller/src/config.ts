// SPDX-License-Identifier: Apache-2.0
// Controller configuration: flags (kebab-case, upstream snapshot-controller names where they exist) parsed
// into one frozen, validated Config. main.ts is the only caller; nothing else reads argv or the environment.
import { ControllerError, ErrorCode } from './errors.js';
import { DEFAULT_DRIVER_NAME } from './names.js';

export interface ControllerConfig {
  readonly kubeconfig: string | undefined;
  readonly driverName: string;
  readonly namespace: string;
  readonly registryNamespace: string;
  readonly leaderElection: boolean;
  readonly leaderElectionNamespace: string;
  readonly leaderElectionId: string;
  readonly leaderElectionIdentity: string;
  readonly leaderElectionLeaseDurationMs: number;
  readonly leaderElectionRenewDeadlineMs: number;
  readonly leaderElectionRetryPeriodMs: number;
  readonly workerThreads: number;
  readonly retryIntervalStartMs: number;
  readonly retryIntervalMaxMs: number;
  readonly resyncPeriodMs: number;
  readonly timeoutMs: number;
  readonly readyPollIntervalMs: number;
  readonly snapshotHealthIntervalMs: number;
  readonly volumeHealthIntervalMs: number;
  readonly capacityPollIntervalMs: number;
  readonly httpEndpoint: string | undefined;
  readonly metricsPath: string;
  readonly kubeApiQps: number;
  readonly kubeApiBurst: number;
  readonly tlsCaFile: string | undefined;
  readonly tlsCertFile: string | undefined;
  readonly tlsKeyFile: string | undefined;
  readonly tlsServerName: string | undefined;
  readonly insecureNodeConnections: boolean;
  readonly snapshotNamePrefix: string;
  readonly defaultFsType: string;
  readonly logLevel: string;
}

type Kind = 'string' | 'bool' | 'int' | 'duration';

interface FlagSpec {
  readonly key: keyof ControllerConfig;
  readonly kind: Kind;
  readonly help: string;
  readonly def?: string;
}

/** Every flag, with its default and unit in the help text. */
export const FLAGS: Readonly<Record<string, FlagSpec>> = {
  kubeconfig: { key: 'kubeconfig', kind: 'string', help: 'Path to a kubeconfig; default $KUBECONFIG, then in-cluster' },
  'driver-name': {
    key: 'driverName',
    kind: 'string',
    def: DEFAULT_DRIVER_NAME,
    help: `CSI driver whose objects this controller handles (default ${DEFAULT_DRIVER_NAME})`,
  },
  namespace: {
    key: 'namespace',
    kind: 'string',
    def: 'kube-system',
    help: 'Namespace for CSIStorageCapacity objects (default kube-system)',
  },
  'registry-namespace': {
    key: 'registryNamespace',
    kind: 'string',
    help: "Namespace of the node plugins' loopsnap-node-* Leases (default: --namespace)",
  },
  'leader-election': {
    key: 'leaderElection',
    kind: 'bool',
    def: 'true',
    help: 'Run only while holding the leader Lease (default true)',
  },
  'leader-election-namespace': {
    key: 'leaderElectionNamespace',
    kind: 'string',
    help: 'Namespace of the leader Lease (default: --namespace)',
  },
  'leader-election-id': {
    key: 'leaderElectionId',
    kind: 'string',
    def: 'loopsnap-controller-leader',
    help: 'Name of the leader Lease (default loopsnap-controller-leader)',
  },
  'leader-election-identity': {
    key: 'leaderElectionIdentity',
    kind: 'string',
    help: 'Holder identity (default <hostname>_<pid>)',
  },
  'leader-election-lease-duration': {
    key: 'leaderElectionLeaseDurationMs',
    kind: 'duration',
    def: '15s',
    help: 'Leader Lease duration (default 15s)',
  },
  'leader-election-renew-deadline': {
    key: 'leaderElectionRenewDeadlineMs',
    kind: 'duration',
    def: '10s',
    help: 'Time the leader keeps trying to renew before stepping down (default 10s)',
  },
  'leader-election-retry-period': {
    key: 'leaderElectionRetryPeriodMs',
    kind: 'duration',
    def: '2s',
    help: 'Interval between leader election attempts (default 2s)',
  },
  'worker-threads': {
    key: 'workerThreads',
    kind: 'int',
    def: '10',
    help: 'Concurrent reconciles per controller (default 10)',
  },
  'retry-interval-start': {
    key: 'retryIntervalStartMs',
    kind: 'duration',
    def: '1s',
    help: 'First retry delay after a failure; it doubles with each failure (default 1s)',
  },
  'retry-interval-max': {
    key: 'retryIntervalMaxMs',
    kind: 'duration',
    def: '5m',
    help: 'Maximum retry delay (default 5m)',
  },
  'resync-period': {
    key: 'resyncPeriodMs',
    kind: 'duration',
    def: '10m',
    help: 'Reconcile every object again this often (default 10m)',
  },
  timeout: {
    key: 'timeoutMs',
    kind: 'duration',
    def: '1m',
    help: 'Timeout of one CSI call to a node plugin (default 1m)',
  },
  'ready-poll-interval': {
    key: 'readyPollIntervalMs',
    kind: 'duration',
    def: '500ms',
    help: 'First interval between checks of a snapshot that is not ready yet; doubles up to 10s (default 500ms)',
  },
  'snapshot-health-interval': {
    key: 'snapshotHealthIntervalMs',
    kind: 'duration',
    def: '1m',
    help: 'How often the node is asked whether each ready snapshot still is (a full save pool invalidates snapshots); 0 = never (default 1m)',
  },
  'volume-health-interval': {
    key: 'volumeHealthIntervalMs',
    kind: 'duration',
    def: '1m',
    help: 'How often the node is asked for the condition of each bound volume (abnormal: a Warning event on the claim); 0 = never (default 1m)',
  },
  'capacity-poll-interval': {
    key: 'capacityPollIntervalMs',
    kind: 'duration',
    def: '1m',
    help: 'How often CSIStorageCapacity is refreshed (default 1m)',
  },
  'http-endpoint': {
    key: 'httpEndpoint',
    kind: 'string',
    help: 'host:port for /metrics, /healthz, /readyz (default: off)',
  },
  'metrics-path': {
    key: 'metricsPath',
    kind: 'string',
    def: '/metrics',
    help: 'Path of the metrics endpoint (default /metrics)',
  },
  'kube-api-qps': {
    key: 'kubeApiQps',
    kind: 'int',
    def: '100',
    help: 'Client-side limit of API requests per second (default 100)',
  },
  'kube-api-burst': { key: 'kubeApiBurst', kind: 'int', def: '200', help: 'Burst above --kube-api-qps (default 200)' },
  'tls-ca-file': {
    key: 'tlsCaFile',
    kind: 'string',
    help: "CA that signed the node plugins' server certificates (required)",
  },
  'tls-cert-file': {
    key: 'tlsCertFile',
    kind: 'string',
    help: 'Client certificate presented to node plugins (required)',
  },
  'tls-key-file': { key: 'tlsKeyFile', kind: 'string', help: 'Key of --tls-cert-file (required)' },
  'tls-server-name': {
    key: 'tlsServerName',
    kind: 'string',
    help: 'Name to verify node plugin certificates against (default: the endpoint host)',
  },
  'insecure-node-connections': {
    key: 'insecureNodeConnections',
    kind: 'bool',
    def: 'false',
    help: 'Dial node plugins without TLS; local development only (default false)',
  },
  'snapshot-name-prefix': {
    key: 'snapshotNamePrefix',
    kind: 'string',
    def: 'snapshot',
    help: 'Prefix of snapshot names passed to CreateSnapshot: <prefix>-<VolumeSnapshot UID> (default snapshot)',
  },
  'default-fstype': {
    key: 'defaultFsType',
    kind: 'string',
    def: 'ext4',
    help: `File system when the StorageClass sets no csi.storage.k8s.io/fstype (default ext4)`,
  },
  'log-level': {
    key: 'logLevel',
    kind: 'string',
    def: 'info',
    help: 'trace, debug, info, warn or error (default info)',
  },
};

const UNITS_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** "1m30s", "500ms", "15s", "2h" -> milliseconds. */
export function parseDuration(s: string): number {
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/gy;
  let total = 0;
  let matched = 0;
  for (let m = re.exec(s); m; m = re.exec(s)) {
    total += Number(m[1]) * (UNITS_MS[m[2] as string] as number);
    matched = re.lastIndex;
  }
  if (s.length === 0 || matched !== s.length) throw new Error(`invalid duration "${s}" (examples: 500ms, 15s, 5m)`);
  return total;
}

function bad(msg: string): never {
  throw new ControllerError(ErrorCode.ConfigInvalid, msg);
}

export function usage(): string {
  const lines = Object.entries(FLAGS).map(
    ([name, f]) => `  --${name}${f.kind === 'bool' ? '' : '=<' + f.kind + '>'}\n      ${f.help}`,
  );
  return `usage: loopsnap-controller [flags]\n${lines.join('\n')}\n`;
}

/** Parses argv (without node and script). `env` supplies KUBECONFIG and the default identity. */
export function parseConfig(
  argv: readonly string[],
  env: { KUBECONFIG?: string; hostname: string; pid: number },
): ControllerConfig {
  const raw: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (!arg.startsWith('--')) bad(`unexpected argument "${arg}"`);
    const eq = arg.indexOf('=');
    const name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
    const spec = FLAGS[name];
    if (!spec) bad(`unknown flag --${name}`);
    let value: string;
    if (eq >= 0) value = arg.slice(eq + 1);
    else if (spec.kind === 'bool') value = 'true';
    else {
      const next = argv[i + 1];
      if (next === undefined) bad(`flag --${name} needs a value`);
      value = next;
      i++;
    }
    raw[name] = value;
  }
  const out: Record<string, unknown> = {};
  for (const [name, spec] of Object.entries(FLAGS)) {
    const v = raw[name] ?? spec.def;
    if (v === undefined) {
      out[spec.key] = undefined;
      continue;
    }
    switch (spec.kind) {
      case 'string':
        out[spec.key] = v;
        break;
      case 'bool':
        if (v !== 'true' && v !== 'false') bad(`--${name} must be true or false, got "${v}"`);
        out[spec.key] = v === 'true';
        break;
      case 'int': {
        const n = Number(v);
        if (!Number.isInteger(n) || n <= 0) bad(`--${name} must be a positive integer, got "${v}"`);
        out[spec.key] = n;
        break;
      }
      case 'duration':
        try {
          out[spec.key] = parseDuration(v);
        } catch (err) {
          bad(`--${name}: ${(err as Error).message}`);
        }
        break;
    }
  }
  const c = out as unknown as Mutable<ControllerConfig>;
  c.kubeconfig = c.kubeconfig ?? env.KUBECONFIG;
  c.registryNamespace = c.registryNamespace ?? c.namespace;
  c.leaderElectionNamespace = c.leaderElectionNamespace ?? c.namespace;
  c.leaderElectionIdentity = c.leaderElectionIdentity ?? `${env.hostname}_${env.pid}`;
  if (!c.insecureNodeConnections && (!c.tlsCaFile || !c.tlsCertFile || !c.tlsKeyFile)) {
    bad('--tls-ca-file, --tls-cert-file and --tls-key-file are required (node plugins are dialled with mutual TLS)');
  }
  if (c.retryIntervalStartMs > c.retryIntervalMaxMs) bad('--retry-interval-start must not exceed --retry-interval-max');
  if (c.leaderElectionRenewDeadlineMs >= c.leaderElectionLeaseDurationMs) {
    bad('--leader-election-renew-deadline must be shorter than --leader-election-lease-duration');
  }
  if (c.httpEndpoint !== undefined && !/^[^:]*:\d+$/.test(c.httpEndpoint))
    bad(`--http-endpoint must be host:port, got "${c.httpEndpoint}"`);
  if (!['trace', 'debug', 'info', 'warn', 'error'].includes(c.logLevel))
    bad(`--log-level must be trace, debug, info, warn or error`);
  return Object.freeze(c);
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };
