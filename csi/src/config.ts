// SPDX-License-Identifier: Apache-2.0
// Node plugin flags -> one frozen, validated Config. Pure: main.ts hands in argv; nothing here reads the
// environment. Flags are `--name=value` or `--name value`; booleans also as bare `--name`.
import { basename } from 'node:path';
import { DEFAULT_NODE_LEASE_DURATION_SECONDS, DEFAULT_REGISTRY_NAMESPACE } from '../../common/src/node-lease-format.js';

export interface Config {
  readonly endpoint: string;
  readonly tcpEndpoint: string;
  readonly tlsCertFile: string;
  readonly tlsKeyFile: string;
  readonly tlsClientCaFile: string;
  readonly insecureTcp: boolean;
  /** Run as the keeper (csi/src/keeper/) that holds the FUSE connection and runs the server as a child. */
  readonly keeper: boolean;
  readonly trimBeforeCut: boolean;
  readonly keeperReadyFile: string;
  readonly nodeId: string;
  readonly driverName: string;
  readonly stateDir: string;
  readonly httpEndpoint: string;
  readonly metricsPath: string;
  readonly logLevel: string;
  readonly maxVolumesPerNode: number;
  readonly defaultFsType: string;
  readonly blockSizeBytes: number;
  readonly granuleBlocks: number;
  readonly defaultVolumeSizeBytes: number;
  readonly minVolumeSizeBytes: number;
  readonly maxVolumeSizeBytes: number;
  readonly saveQuotaBytes: number;
  readonly backgroundCopyBytesPerSecond: number;
  readonly fuseWorkers: number;
  readonly datapathDirectIo: boolean;
  readonly kubeconfig: string;
  readonly inCluster: boolean;
  readonly advertiseEndpoint: string;
  readonly registryNamespace: string;
  readonly nodeEventsNamespace: string;
  readonly nodeLeaseDurationSeconds: number;
  readonly shutdownGraceSeconds: number;
  readonly kubeletRegistrationSocket: string;
  readonly kubeletRegistrationPath: string;
  /** Staging and target paths must lie below it (csi/src/mount/confined-path.ts). */
  readonly kubeletDir: string;
  /** Bound of every file-system call on a staging or target path, seconds. */
  readonly pathTimeoutSeconds: number;
}

type Kind = 'string' | 'int' | 'bool';

interface FlagSpec {
  readonly key: keyof Config;
  readonly kind: Kind;
  readonly def: string | number | boolean;
  readonly help: string;
}

const GiB = 1024 ** 3;

export const FLAGS: Readonly<Record<string, FlagSpec>> = {
  endpoint: {
    key: 'endpoint',
    kind: 'string',
    def: 'unix:///run/loopsnap/csi.sock',
    help: 'CSI unix socket for kubelet, sidecars and csi-sanity (unix:///path)',
  },
  'tcp-endpoint': {
    key: 'tcpEndpoint',
    kind: 'string',
    def: '',
    help: 'host:port of the mutual-TLS endpoint the loopsnap controller dials (Identity, Controller, SnapshotMetadata); empty = off',
  },
  'tls-cert-file': { key: 'tlsCertFile', kind: 'string', def: '', help: 'server certificate (PEM) of --tcp-endpoint' },
  'tls-key-file': { key: 'tlsKeyFile', kind: 'string', def: '', help: 'private key (PEM) of --tls-cert-file' },
  'tls-client-ca-file': {
    key: 'tlsClientCaFile',
    kind: 'string',
    def: '',
    help: 'CA (PEM) that signs client certificates; clients without one are refused',
  },
  'insecure-tcp': {
    key: 'insecureTcp',
    kind: 'bool',
    def: false,
    help: 'serve --tcp-endpoint without TLS (local development only)',
  },
  'trim-before-cut': {
    key: 'trimBeforeCut',
    kind: 'bool',
    def: true,
    help: 'trim a mounted file system right before a meta-bitmap cut, so freed blocks are neither reported nor copied (ADR 0013)',
  },
  keeper: {
    key: 'keeper',
    kind: 'bool',
    def: false,
    help: 'run a keeper process that holds the data path across restarts and upgrades of the server (the chart sets it)',
  },
  'keeper-ready-file': {
    key: 'keeperReadyFile',
    kind: 'string',
    def: '',
    help: "with --keeper: a file that exists while this keeper's server serves (for an exec readiness probe)",
  },
  'node-id': { key: 'nodeId', kind: 'string', def: '', help: "this node's name (required; the Kubernetes node name)" },
  'driver-name': { key: 'driverName', kind: 'string', def: 'csi.loopsnap.dev', help: 'CSI driver name' },
  'state-dir': {
    key: 'stateDir',
    kind: 'string',
    def: '/var/lib/loopsnap',
    help: 'directory of volumes, snapshots, driver state and the FUSE mount',
  },
  'http-endpoint': {
    key: 'httpEndpoint',
    kind: 'string',
    def: '',
    help: 'host:port for /metrics, /healthz and /readyz; empty = off',
  },
  'metrics-path': { key: 'metricsPath', kind: 'string', def: '/metrics', help: 'HTTP path of the metrics' },
  'log-level': { key: 'logLevel', kind: 'string', def: 'info', help: 'trace, debug, info, warn or error' },
  'max-volumes-per-node': {
    key: 'maxVolumesPerNode',
    kind: 'int',
    def: 0,
    help: 'NodeGetInfo max_volumes_per_node; 0 = no limit reported',
  },
  'default-fs-type': {
    key: 'defaultFsType',
    kind: 'string',
    def: 'ext4',
    help: 'file system when none is asked for (ext4, xfs)',
  },
  'block-size-bytes': {
    key: 'blockSizeBytes',
    kind: 'int',
    def: 4096,
    help: 'engine block size of new volumes, bytes',
  },
  'granule-blocks': {
    key: 'granuleBlocks',
    kind: 'int',
    def: 1,
    help: 'blocks per meta bit map granule of new volumes',
  },
  'default-volume-size-bytes': {
    key: 'defaultVolumeSizeBytes',
    kind: 'int',
    def: GiB,
    help: 'size of volumes created without required_bytes, bytes',
  },
  'min-volume-size-bytes': { key: 'minVolumeSizeBytes', kind: 'int', def: 1024 * 1024, help: 'smallest volume, bytes' },
  'max-volume-size-bytes': {
    key: 'maxVolumeSizeBytes',
    kind: 'int',
    def: 16 * 1024 * GiB,
    help: 'largest volume, bytes',
  },
  'save-quota-bytes': {
    key: 'saveQuotaBytes',
    kind: 'int',
    def: 0,
    help: 'save pool quota per volume, bytes; 0 = grow until the disk is full',
  },
  'background-copy-bytes-per-second': {
    key: 'backgroundCopyBytesPerSecond',
    kind: 'int',
    def: 256 * 1024 * 1024,
    help: 'total rate of background copies (in-place restores, clone-method images, hydration); 0 = unlimited',
  },
  'fuse-workers': { key: 'fuseWorkers', kind: 'int', def: 2, help: 'data-path worker threads' },
  'datapath-direct-io': {
    key: 'datapathDirectIo',
    kind: 'bool',
    def: false,
    help: "O_DIRECT for the data path's fast-path I/O on clone files (see ADR 0003)",
  },
  kubeconfig: {
    key: 'kubeconfig',
    kind: 'string',
    def: '',
    help: 'kubeconfig for the node registry Lease; empty = no registry unless --in-cluster',
  },
  'in-cluster': {
    key: 'inCluster',
    kind: 'bool',
    def: false,
    help: "use the pod's service account for the node registry",
  },
  'advertise-endpoint': {
    key: 'advertiseEndpoint',
    kind: 'string',
    def: '',
    help: 'host:port the controller should dial, published in the node Lease (default --tcp-endpoint)',
  },
  'registry-namespace': {
    key: 'registryNamespace',
    kind: 'string',
    def: DEFAULT_REGISTRY_NAMESPACE,
    help: 'namespace of the node registry Leases',
  },
  'node-events-namespace': {
    key: 'nodeEventsNamespace',
    kind: 'string',
    def: 'default',
    help: 'namespace of the Warning events on the Node (the API server keeps events of cluster-scoped objects in default)',
  },
  'node-lease-duration-seconds': {
    key: 'nodeLeaseDurationSeconds',
    kind: 'int',
    def: DEFAULT_NODE_LEASE_DURATION_SECONDS,
    help: 'seconds the node registry Lease stays valid without renewal (renewed every quarter of it); the controller treats the node as down after that',
  },
  'shutdown-grace-seconds': {
    key: 'shutdownGraceSeconds',
    kind: 'int',
    def: 10,
    help: 'on SIGTERM, seconds to let calls in flight finish',
  },
  'kubelet-registration-socket': {
    key: 'kubeletRegistrationSocket',
    kind: 'string',
    def: '',
    help: "unix socket path in the kubelet's plugins_registry/ to serve the kubelet plugin-registration API on (e.g. /var/lib/kubelet/plugins_registry/csi.loopsnap.dev-reg.sock); empty = off (node-driver-registrar registers instead)",
  },
  'kubelet-registration-path': {
    key: 'kubeletRegistrationPath',
    kind: 'string',
    def: '',
    help: "path of --endpoint's socket as the kubelet sees it on the host (e.g. /var/lib/kubelet/plugins/csi.loopsnap.dev/csi.sock); required with --kubelet-registration-socket",
  },
  'kubelet-dir': {
    key: 'kubeletDir',
    kind: 'string',
    def: '/var/lib/kubelet',
    help: "the kubelet's root directory; staging and target paths must lie below it (INVALID_ARGUMENT otherwise)",
  },
  'path-timeout-seconds': {
    key: 'pathTimeoutSeconds',
    kind: 'int',
    def: 10,
    help: 'bound of each file-system call on a staging or target path (lookup, mkdir, remove, statfs), seconds; mounts and unmounts get 120',
  },
};

export class ConfigError extends Error {}

export function helpText(): string {
  const lines = ['Usage: loopsnap-node [flags]', ''];
  for (const [name, f] of Object.entries(FLAGS)) {
    const def = f.def === '' ? '' : ` (default ${String(f.def)})`;
    lines.push(`  --${name}${f.kind === 'bool' ? '' : ' <value>'}`, `      ${f.help}${def}`);
  }
  return lines.join('\n');
}

function parseValue(name: string, spec: FlagSpec, raw: string): string | number | boolean {
  if (spec.kind === 'string') return raw;
  if (spec.kind === 'bool') {
    if (raw === 'true') return true;
    if (raw === 'false') return false;
    throw new ConfigError(`--${name} must be true or false, got ${JSON.stringify(raw)}`);
  }
  const n = Number(raw);
  if (raw.trim() === '' || !Number.isSafeInteger(n) || n < 0) {
    throw new ConfigError(`--${name} must be a non-negative integer, got ${JSON.stringify(raw)}`);
  }
  return n;
}

function isPow2(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

/** Parses node plugin flags; throws ConfigError with a one-line reason. `--help` is the caller's business. */
export function parseConfig(argv: readonly string[]): Config {
  const values: Record<string, string | number | boolean> = {};
  for (const f of Object.values(FLAGS)) values[f.key] = f.def;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('--')) throw new ConfigError(`unexpected argument ${JSON.stringify(arg)}`);
    const eq = arg.indexOf('=');
    const name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
    const spec = FLAGS[name];
    if (!spec) throw new ConfigError(`unknown flag --${name} (see --help)`);
    let raw: string;
    if (eq >= 0) raw = arg.slice(eq + 1);
    else if (spec.kind === 'bool') raw = 'true';
    else {
      const next = argv[++i];
      if (next === undefined) throw new ConfigError(`--${name} needs a value`);
      raw = next;
    }
    values[spec.key] = parseValue(name, spec, raw);
  }
  const c = values as unknown as Config;
  validate(c);
  return Object.freeze({ ...c });
}

function validate(c: Config): void {
  if (c.nodeId === '') throw new ConfigError('no node id provided (--node-id)');
  if (!/^unix:\/\/\/.+/.test(c.endpoint)) throw new ConfigError(`--endpoint must be unix:///path, got ${c.endpoint}`);
  if (c.stateDir === '' || !c.stateDir.startsWith('/')) throw new ConfigError('--state-dir must be an absolute path');
  if (!/^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$/.test(c.driverName)) {
    throw new ConfigError(`--driver-name ${JSON.stringify(c.driverName)} is not a valid CSI driver name`);
  }
  if (!['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'].includes(c.logLevel)) {
    throw new ConfigError(`--log-level ${c.logLevel} is not one of trace, debug, info, warn, error`);
  }
  if (!['ext4', 'xfs'].includes(c.defaultFsType)) throw new ConfigError('--default-fs-type must be ext4 or xfs');
  if (!isPow2(c.blockSizeBytes) || c.blockSizeBytes < 512 || c.blockSizeBytes > 1024 * 1024) {
    throw new ConfigError('--block-size-bytes must be a power of two between 512 and 1048576');
  }
  if (!isPow2(c.granuleBlocks)) throw new ConfigError('--granule-blocks must be a power of two');
  if (c.minVolumeSizeBytes > c.maxVolumeSizeBytes) {
    throw new ConfigError('--min-volume-size-bytes exceeds --max-volume-size-bytes');
  }
  if (c.fuseWorkers < 1 || c.fuseWorkers > 64) throw new ConfigError('--fuse-workers must be between 1 and 64');
  if (c.nodeLeaseDurationSeconds < 2 || c.nodeLeaseDurationSeconds > 3600) {
    throw new ConfigError('--node-lease-duration-seconds must be between 2 and 3600');
  }
  if (c.tcpEndpoint !== '') {
    if (!/^(\[[^\]]+\]|[^:]*):\d+$/.test(c.tcpEndpoint)) throw new ConfigError('--tcp-endpoint must be host:port');
    const tls = [c.tlsCertFile, c.tlsKeyFile, c.tlsClientCaFile];
    if (!c.insecureTcp && tls.some((f) => f === '')) {
      throw new ConfigError(
        '--tcp-endpoint needs --tls-cert-file, --tls-key-file and --tls-client-ca-file (or --insecure-tcp for local development)',
      );
    }
  }
  if ((c.kubeconfig !== '' || c.inCluster) && c.tcpEndpoint === '' && c.advertiseEndpoint === '') {
    throw new ConfigError('the node registry (--kubeconfig/--in-cluster) needs --tcp-endpoint or --advertise-endpoint');
  }
  validateKubeletRegistration(c);
  validateKubeletDir(c);
}

/** Directories no kubelet dir may be or lie in (the kernel's and the system's own trees). */
const SYSTEM_DIRS = ['/proc', '/sys', '/dev', '/etc', '/boot', '/bin', '/sbin', '/lib', '/usr'];

function validateKubeletDir(c: Config): void {
  const k = c.kubeletDir;
  if (!k.startsWith('/') || k.includes('\0') || k.split('/').some((s) => s === '..' || s === '.')) {
    throw new ConfigError(`--kubelet-dir must be an absolute path without . or .. segments, got ${JSON.stringify(k)}`);
  }
  const n = k.replace(/\/+/g, '/').replace(/\/$/, '');
  if (n === '' || SYSTEM_DIRS.some((d) => n === d || n.startsWith(`${d}/`))) {
    throw new ConfigError(`--kubelet-dir ${k} is / or a system directory`);
  }
  if (c.pathTimeoutSeconds < 1 || c.pathTimeoutSeconds > 600) {
    throw new ConfigError('--path-timeout-seconds must be between 1 and 600');
  }
}

// sun_path holds 108 bytes with the terminating NUL.
const UNIX_SOCKET_PATH_MAX_BYTES = 107;

function validateKubeletRegistration(c: Config): void {
  const sock = c.kubeletRegistrationSocket;
  const path = c.kubeletRegistrationPath;
  if (sock === '') {
    if (path !== '') throw new ConfigError('--kubelet-registration-path needs --kubelet-registration-socket');
    return;
  }
  if (!sock.startsWith('/')) {
    throw new ConfigError(`--kubelet-registration-socket must be an absolute path, got ${JSON.stringify(sock)}`);
  }
  if (Buffer.byteLength(sock) > UNIX_SOCKET_PATH_MAX_BYTES) {
    throw new ConfigError(
      `--kubelet-registration-socket is ${Buffer.byteLength(sock)} bytes long; unix socket paths are limited to ${UNIX_SOCKET_PATH_MAX_BYTES}`,
    );
  }
  if (basename(sock).startsWith('.')) {
    throw new ConfigError(
      '--kubelet-registration-socket must not name a file starting with "." (the kubelet ignores those)',
    );
  }
  if (sock === socketPath(c)) {
    throw new ConfigError("--kubelet-registration-socket must differ from --endpoint's socket");
  }
  if (path === '') {
    throw new ConfigError(
      "--kubelet-registration-socket needs --kubelet-registration-path (the CSI socket's path as the kubelet sees it)",
    );
  }
  if (!path.startsWith('/')) {
    throw new ConfigError(
      `--kubelet-registration-path must be an absolute path (no unix:// prefix), got ${JSON.stringify(path)}`,
    );
  }
}

/** The unix socket path of `--endpoint`. */
export function socketPath(c: Config): string {
  return c.endpoint.slice('unix://'.length);
}
