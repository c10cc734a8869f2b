// SPDX-License-Identifier: Apache-2.0
// gRPC client for one node plugin's CSI Identity, Controller and Node services over TCP with mutual TLS.
// Methods take and return plain objects (camelCase, sizes as bigint, times as nanoseconds); a failed call
// throws CsiCallError carrying the gRPC status code (see isCsiFinalError in ../errors.ts).
import * as grpc from '@grpc/grpc-js';
import { csiService } from '../../../common/src/csi-proto.js';
import type { Logger } from '../../../common/src/log.js';
import { CsiCallError } from '../errors.js';
import { NodeAgentClient } from './agent-client.js';
import type { ControllerMetrics } from '../metrics.js';

export interface NodeTls {
  readonly ca: Buffer;
  readonly cert: Buffer;
  readonly key: Buffer;
  /** Name to verify the server certificate against, when it is not the endpoint's host. */
  readonly serverName?: string;
}

export interface CsiSnapshot {
  readonly snapshotId: string;
  readonly sourceVolumeId: string;
  readonly sizeBytes: bigint;
  /** Nanoseconds since the epoch (0 when the plugin did not say). */
  readonly creationTimeNs: bigint;
  readonly readyToUse: boolean;
}

export interface CsiVolume {
  readonly volumeId: string;
  readonly capacityBytes: bigint;
  readonly volumeContext: Record<string, string>;
  readonly accessibleTopology: Array<Record<string, string>>;
}

export interface VolumeCapabilitySpec {
  readonly block: boolean;
  readonly fsType?: string;
  readonly mountFlags?: readonly string[];
  readonly accessMode: CsiAccessMode;
}

export type CsiAccessMode =
  | 'SINGLE_NODE_WRITER'
  | 'SINGLE_NODE_READER_ONLY'
  | 'MULTI_NODE_READER_ONLY'
  | 'MULTI_NODE_SINGLE_WRITER'
  | 'MULTI_NODE_MULTI_WRITER'
  | 'SINGLE_NODE_SINGLE_WRITER'
  | 'SINGLE_NODE_MULTI_WRITER';

export interface CreateVolumeArgs {
  readonly name: string;
  readonly requiredBytes: bigint;
  readonly parameters: Record<string, string>;
  readonly capabilities: readonly VolumeCapabilitySpec[];
  readonly source?: { readonly snapshotId: string } | { readonly volumeId: string };
  readonly topology?: Record<string, string>;
  /** Volume the call reads from (clone source, or the volume a source snapshot belongs to): serialised. */
  readonly lockVolumeId?: string;
}

/**
 * Runs functions one at a time per key. The node plugin serialises operations per volume and answers ABORTED
 * to a second concurrent one; queueing them here instead keeps a burst of snapshots of one volume from
 * turning into a storm of ABORTED retries.
 */
export class KeyedMutex {
  private readonly tails = new Map<string, Promise<unknown>>();

  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.catch(() => undefined);
    this.tails.set(key, tail);
    try {
      return await next;
    } finally {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }

  get size(): number {
    return this.tails.size;
  }
}

type RawCall = (
  req: unknown,
  md: grpc.Metadata,
  opts: grpc.CallOptions,
  cb: (err: grpc.ServiceError | null, res: unknown) => void,
) => void;

interface RawSnapshot {
  size_bytes?: string;
  snapshot_id?: string;
  source_volume_id?: string;
  creation_time?: { seconds?: string; nanos?: number } | null;
  ready_to_use?: boolean;
}

function toSnapshot(s: RawSnapshot | null | undefined): CsiSnapshot {
  const secs = BigInt(s?.creation_time?.seconds ?? '0');
  const nanos = BigInt(s?.creation_time?.nanos ?? 0);
  return {
    snapshotId: s?.snapshot_id ?? '',
    sourceVolumeId: s?.source_volume_id ?? '',
    sizeBytes: BigInt(s?.size_bytes ?? '0'),
    creationTimeNs: secs * 1_000_000_000n + nanos,
    readyToUse: s?.ready_to_use ?? false,
  };
}

function capability(c: VolumeCapabilitySpec): unknown {
  return {
    ...(c.block ? { block: {} } : { mount: { fs_type: c.fsType ?? '', mount_flags: [...(c.mountFlags ?? [])] } }),
    access_mode: { mode: c.accessMode },
  };
}

export class CsiNodeClient {
  private readonly identity: grpc.Client;
  private readonly controller: grpc.Client;
  private readonly node: grpc.Client;

  constructor(
    readonly nodeId: string,
    readonly endpoint: string,
    tls: NodeTls | 'insecure',
    private readonly opts: {
      readonly timeoutMs: number;
      readonly metrics?: ControllerMetrics;
      readonly log?: Logger;
      readonly volumeLocks?: KeyedMutex;
    },
  ) {
    const creds =
      tls === 'insecure' ? grpc.credentials.createInsecure() : grpc.credentials.createSsl(tls.ca, tls.key, tls.cert);
    const channelOpts: grpc.ChannelOptions = {
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
      'grpc.initial_reconnect_backoff_ms': 200,
      'grpc.max_reconnect_backoff_ms': 2_000,
      ...(tls !== 'insecure' && tls.serverName ? { 'grpc.ssl_target_name_override': tls.serverName } : {}),
    };
    this.identity = new (csiService('Identity'))(endpoint, creds, channelOpts);
    // One channel for all three services.
    const shared = { ...channelOpts, channelOverride: this.identity.getChannel() };
    this.controller = new (csiService('Controller'))(endpoint, creds, shared);
    this.node = new (csiService('Node'))(endpoint, creds, shared);
  }

  close(): void {
    this.identity.close();
  }

  private agentClient: NodeAgentClient | undefined;

  /** The node's loopsnap.v1.NodeAgent (in-place restore and refresh), on the same channel. */
  agent(): NodeAgentClient {
    this.agentClient ??= new NodeAgentClient(this.nodeId, this.endpoint, this.identity.getChannel(), this.opts);
    return this.agentClient;
  }

  /** Serialises calls that touch `volumeId` on this node (see KeyedMutex). */
  private onVolume<T>(volumeId: string | undefined, fn: () => Promise<T>): Promise<T> {
    const locks = this.opts.volumeLocks;
    if (!locks || !volumeId) return fn();
    return locks.run(`${this.nodeId}/${volumeId}`, fn);
  }

  private call<T>(client: grpc.Client, method: string, req: unknown, timeoutMs = this.opts.timeoutMs): Promise<T> {
    const fn = (client as unknown as Record<string, RawCall>)[method];
    if (!fn) throw new Error(`CSI method ${method} is not defined`);
    const start = Date.now();
    return new Promise<T>((resolve, reject) => {
      fn.call(client, req, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => {
        const code = err ? (grpc.status[err.code] ?? String(err.code)) : 'OK';
        this.opts.metrics?.csiCallsTotal.inc({ method, code });
        this.opts.log?.debug(
          { method, node: this.nodeId, code, durationSeconds: (Date.now() - start) / 1000 },
          'Called CSI',
        );
        if (err) reject(new CsiCallError(method, this.nodeId, err.code, err.details || err.message, err));
        else resolve(res as T);
      });
    });
  }

  async probe(): Promise<boolean> {
    const res = await this.call<{ ready?: { value?: boolean } | null }>(this.identity, 'Probe', {}, 5_000);
    return res.ready?.value ?? true;
  }

  async nodeGetInfo(): Promise<{ nodeId: string; accessibleTopology: Record<string, string> }> {
    const res = await this.call<{
      node_id: string;
      accessible_topology?: { segments?: Record<string, string> } | null;
    }>(this.node, 'NodeGetInfo', {}, 10_000);
    return { nodeId: res.node_id, accessibleTopology: res.accessible_topology?.segments ?? {} };
  }

  async createSnapshot(args: {
    sourceVolumeId: string;
    name: string;
    parameters: Record<string, string>;
  }): Promise<CsiSnapshot> {
    const res = await this.onVolume(args.sourceVolumeId, () =>
      this.call<{ snapshot?: RawSnapshot }>(this.controller, 'CreateSnapshot', {
        source_volume_id: args.sourceVolumeId,
        name: args.name,
        parameters: args.parameters,
        secrets: {},
      }),
    );
    return toSnapshot(res.snapshot);
  }

  /** Idempotent: OK when the snapshot does not exist. `sourceVolumeId`, when known, serialises the call. */
  async deleteSnapshot(snapshotId: string, sourceVolumeId?: string): Promise<void> {
    await this.onVolume(sourceVolumeId, () =>
      this.call(this.controller, 'DeleteSnapshot', { snapshot_id: snapshotId, secrets: {} }),
    );
  }

  /** All snapshots matching the filters (follows pagination). */
  async listSnapshots(filter: { snapshotId?: string; sourceVolumeId?: string } = {}): Promise<CsiSnapshot[]> {
    const out: CsiSnapshot[] = [];
    let token = '';
    for (let page = 0; page < 10_000; page++) {
      const res = await this.call<{ entries?: Array<{ snapshot?: RawSnapshot }>; next_token?: string }>(
        this.controller,
        'ListSnapshots',
        {
          max_entries: 0,
          starting_token: token,
          source_volume_id: filter.sourceVolumeId ?? '',
          snapshot_id: filter.snapshotId ?? '',
          secrets: {},
        },
      );
      for (const e of res.entries ?? []) out.push(toSnapshot(e.snapshot));
      token = res.next_token ?? '';
      if (!token) break;
    }
    return out;
  }

  async createVolume(args: CreateVolumeArgs): Promise<CsiVolume> {
    const source =
      args.source === undefined
        ? undefined
        : 'snapshotId' in args.source
          ? { snapshot: { snapshot_id: args.source.snapshotId } }
          : { volume: { volume_id: args.source.volumeId } };
    const topo = args.topology ? [{ segments: args.topology }] : [];
    const lock = args.lockVolumeId ?? (args.source && 'volumeId' in args.source ? args.source.volumeId : undefined);
    const res = await this.onVolume(lock, () =>
      this.call<{
        volume?: {
          capacity_bytes?: string;
          volume_id?: string;
          volume_context?: Record<string, string>;
          accessible_topology?: Array<{ segments?: Record<string, string> }>;
        };
      }>(this.controller, 'CreateVolume', {
        name: args.name,
        capacity_range: { required_bytes: args.requiredBytes.toString(), limit_bytes: '0' },
        volume_capabilities: args.capabilities.map(capability),
        parameters: args.parameters,
        secrets: {},
        ...(source ? { volume_content_source: source } : {}),
        ...(topo.length > 0 ? { accessibility_requirements: { requisite: topo, preferred: topo } } : {}),
      }),
    );
    const v = res.volume;
    return {
      volumeId: v?.volume_id ?? '',
      capacityBytes: BigInt(v?.capacity_bytes ?? '0'),
      volumeContext: v?.volume_context ?? {},
      accessibleTopology: (v?.accessible_topology ?? []).map((t) => t.segments ?? {}),
    };
  }

  /** The volume's condition (ControllerGetVolume); undefined when the node does not have the volume. */
  async volumeCondition(volumeId: string): Promise<{ abnormal: boolean; message: string } | undefined> {
    try {
      const res = await this.call<{ status?: { volume_condition?: { abnormal?: boolean; message?: string } } }>(
        this.controller,
        'ControllerGetVolume',
        { volume_id: volumeId },
      );
      const c = res.status?.volume_condition;
      return { abnormal: c?.abnormal ?? false, message: c?.message ?? '' };
    } catch (err) {
      if (err instanceof CsiCallError && err.grpcCode === grpc.status.NOT_FOUND) return undefined;
      throw err;
    }
  }

  /** Idempotent: OK when the volume does not exist. */
  async deleteVolume(volumeId: string): Promise<void> {
    await this.onVolume(volumeId, () =>
      this.call(this.controller, 'DeleteVolume', { volume_id: volumeId, secrets: {} }),
    );
  }

  async controllerExpandVolume(args: {
    volumeId: string;
    requiredBytes: bigint;
    capability?: VolumeCapabilitySpec;
  }): Promise<{ capacityBytes: bigint; nodeExpansionRequired: boolean }> {
    const res = await this.onVolume(args.volumeId, () =>
      this.call<{ capacity_bytes?: string; node_expansion_required?: boolean }>(
        this.controller,
        'ControllerExpandVolume',
        {
          volume_id: args.volumeId,
          capacity_range: { required_bytes: args.requiredBytes.toString(), limit_bytes: '0' },
          secrets: {},
          ...(args.capability ? { volume_capability: capability(args.capability) } : {}),
        },
      ),
    );
    return {
      capacityBytes: BigInt(res.capacity_bytes ?? '0'),
      nodeExpansionRequired: res.node_expansion_required ?? false,
    };
  }

  async getCapacity(args: {
    parameters: Record<string, string>;
    topology?: Record<string, string>;
  }): Promise<{ availableBytes: bigint; maximumVolumeBytes: bigint | undefined }> {
    const res = await this.call<{ available_capacity?: string; maximum_volume_size?: { value?: string } | null }>(
      this.controller,
      'GetCapacity',
      {
        volume_capabilities: [],
        parameters: args.parameters,
        ...(args.topology ? { accessible_topology: { segments: args.topology } } : {}),
      },
      10_000,
    );
    const max = res.maximum_volume_size?.value;
    return { availableBytes: BigInt(res.available_capacity ?? '0'), maximumVolumeBytes: max ? BigInt(max) : undefined };
  }
}

/** One client per node; replaced when the node's endpoint changes. */
export class CsiClientPool {
  private readonly clients = new Map<string, CsiNodeClient>();
  private readonly volumeLocks = new KeyedMutex();

  constructor(
    private readonly tls: NodeTls | 'insecure',
    private readonly opts: { readonly timeoutMs: number; readonly metrics?: ControllerMetrics; readonly log?: Logger },
  ) {}

  get(nodeId: string, endpoint: string): CsiNodeClient {
    const existing = this.clients.get(nodeId);
    if (existing && existing.endpoint === endpoint) return existing;
    existing?.close();
    const client = new CsiNodeClient(nodeId, endpoint, this.tls, { ...this.opts, volumeLocks: this.volumeLocks });
    this.clients.set(nodeId, client);
    return client;
  }

  closeAll(): void {
    for (const c of this.clients.values()) c.close();
    this.clients.clear();
  }
}
