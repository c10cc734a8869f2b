// SPDX-License-Identifier: Apache-2.0
// Prometheus metrics of the node plugin, registered on an injected prom-client Registry, and the HTTP
// endpoint (`--http-endpoint`) that serves them with /healthz and /readyz.
//
// Engine gauges are per volume (label `volume_id`): a node holds a bounded number of volumes, and an
// operator needs to see which volume's save pool fills up. They are read from the engine at scrape time.
import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { Logger } from '../../common/src/log.js';

/** Engine numbers of one open volume, as read at scrape time. */
export interface VolumeGaugeSample {
  readonly volumeId: string;
  readonly savePoolUsedBytes: number;
  readonly savePoolSizeBytes: number;
  readonly snapshots: number;
  readonly invalidSnapshots: number;
  readonly cowCopiesTotal: number;
  readonly sizeBytes: number;
  /** Production writes refused with ENOSPC: only snapshots with dependants needed the space (ADR 0012). */
  readonly writesRefusedTotal: number;
  /** Unpinned snapshots sacrificed (invalidated, space given back) to make room, oldest first. */
  readonly snapshotsSacrificedTotal: number;
  /** 1 while the volume's writes are refused for space (the last before-image found none). */
  readonly outOfSpace: boolean;
}

/** A background job (clone copy, hydrate, restore; issue 4) and how far it got. */
export interface JobSample {
  readonly kind: string;
  readonly id: string;
  readonly doneBytes: number;
  readonly totalBytes: number;
}

export interface MetricsSources {
  volumes(): VolumeGaugeSample[];
  jobs(): JobSample[];
}

// Buckets of external-snapshotter's operation histogram (0.1 s .. 600 s), plus fast ones for cheap calls.
const DURATION_BUCKETS_SECONDS = [0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 25, 50, 120, 300, 600];

export class CsiMetrics {
  /** CSI calls served, by method and final gRPC status code name. */
  readonly operations: Counter<'method' | 'code'>;
  /** Time to serve a CSI call, by method. */
  readonly duration: Histogram<'method'>;

  constructor(registry: Registry, sources?: MetricsSources) {
    this.operations = new Counter({
      name: 'loopsnap_csi_operations_total',
      help: 'CSI calls served, by method and gRPC status code',
      labelNames: ['method', 'code'],
      registers: [registry],
    });
    this.duration = new Histogram({
      name: 'loopsnap_csi_operation_duration_seconds',
      help: 'Time to serve a CSI call, in seconds',
      labelNames: ['method'],
      buckets: DURATION_BUCKETS_SECONDS,
      registers: [registry],
    });
    if (sources) registerEngineGauges(registry, sources);
  }

  observe(method: string, code: string, seconds: number): void {
    this.operations.inc({ method, code });
    this.duration.observe({ method }, seconds);
  }
}

/**
 * Kubelet plugin registration (--kubelet-registration-socket), registered only when the node plugin serves it:
 * without it the kubelet never reports, and a 0 would read as a failure.
 */
export class KubeletRegistrationMetrics {
  /** 1 after the kubelet reported the plugin registered; 0 before its first report and after a failed one. */
  readonly registered: Gauge;
  /** Registrations the kubelet reported as failed. */
  readonly failures: Counter;

  constructor(registry: Registry) {
    this.registered = new Gauge({
      name: 'loopsnap_kubelet_registration_registered',
      help: 'Whether the kubelet reported the plugin registered (1) or not yet, or failed (0)',
      registers: [registry],
    });
    this.failures = new Counter({
      name: 'loopsnap_kubelet_registration_failures_total',
      help: 'Plugin registrations the kubelet reported as failed',
      registers: [registry],
    });
  }

  /** Records one NotifyRegistrationStatus of the kubelet. */
  observe(registered: boolean): void {
    this.registered.set(registered ? 1 : 0);
    if (!registered) this.failures.inc();
  }
}

/**
 * A process-wide counter over a per-volume engine count: engine counts restart at each open and vanish with the
 * volume, so only their increases are added (a drop means the volume reopened).
 */
function engineCounter(
  registry: Registry,
  sources: MetricsSources,
  name: string,
  help: string,
  pick: (s: VolumeGaugeSample) => number,
): void {
  const last = new Map<string, number>();
  new Counter({
    name,
    help,
    registers: [registry],
    collect() {
      const seen = new Set<string>();
      for (const v of sources.volumes()) {
        seen.add(v.volumeId);
        const now = pick(v);
        const prev = last.get(v.volumeId) ?? 0;
        const delta = now >= prev ? now - prev : now;
        if (delta > 0) this.inc(delta);
        last.set(v.volumeId, now);
      }
      for (const id of [...last.keys()]) if (!seen.has(id)) last.delete(id);
    },
  });
}

function registerEngineGauges(registry: Registry, sources: MetricsSources): void {
  const perVolume = (name: string, help: string, pick: (s: VolumeGaugeSample) => number): Gauge<'volume_id'> =>
    new Gauge({
      name,
      help,
      labelNames: ['volume_id'],
      registers: [registry],
      collect() {
        this.reset();
        for (const s of sources.volumes()) this.set({ volume_id: s.volumeId }, pick(s));
      },
    });
  // Save pool bytes holding before-images (and RW data) of a volume's snapshots.
  perVolume('loopsnap_save_pool_used_bytes', 'Save pool bytes in use, per volume', (s) => s.savePoolUsedBytes);
  // Current size of a volume's save pool file.
  perVolume('loopsnap_save_pool_size_bytes', 'Save pool size in bytes, per volume', (s) => s.savePoolSizeBytes);
  // Snapshots in a volume's queue (invalid ones included).
  perVolume('loopsnap_volume_snapshots', 'Snapshots in the queue, per volume', (s) => s.snapshots);
  // Snapshots that lost before-images when the save pool was full (EC-5); they can only be deleted.
  perVolume('loopsnap_volume_invalid_snapshots', 'Invalid snapshots, per volume', (s) => s.invalidSnapshots);
  // Volume size in bytes.
  perVolume('loopsnap_volume_size_bytes', 'Volume size in bytes', (s) => s.sizeBytes);
  // Before-images copied into save pools by this process.
  engineCounter(
    registry,
    sources,
    'loopsnap_cow_copies_total',
    'Copy-on-write copies of before-images into save pools since the node plugin started',
    (s) => s.cowCopiesTotal,
  );
  // Production writes answered ENOSPC because only snapshots with dependants (thin clones, restores, copies)
  // needed the space: such snapshots are never invalidated (ADR 0012).
  engineCounter(
    registry,
    sources,
    'loopsnap_space_refused_writes_total',
    'Production writes refused with ENOSPC because only snapshots with dependants needed save-pool space',
    (s) => s.writesRefusedTotal,
  );
  // Unpinned snapshots invalidated and emptied to make room, oldest first (ADR 0012).
  engineCounter(
    registry,
    sources,
    'loopsnap_snapshots_sacrificed_total',
    'Snapshots without dependants invalidated to give their save-pool space back, oldest first',
    (s) => s.snapshotsSacrificedTotal,
  );
  // 1 while a volume's writes are refused for space (cleared by its next before-image that finds room).
  perVolume('loopsnap_volume_out_of_space', 'Whether the volume answers writes with ENOSPC (1) or not (0)', (s) =>
    s.outOfSpace ? 1 : 0,
  );
  // Fraction done of each running background job.
  new Gauge({
    name: 'loopsnap_background_job_progress_ratio',
    help: 'Progress of background jobs (0..1), by kind and id',
    labelNames: ['kind', 'id'],
    registers: [registry],
    collect() {
      this.reset();
      for (const j of sources.jobs()) {
        this.set({ kind: j.kind, id: j.id }, j.totalBytes > 0 ? j.doneBytes / j.totalBytes : 1);
      }
    },
  });
}

export interface HttpEndpointOptions {
  /** host:port or :port. */
  readonly address: string;
  readonly registry: Registry;
  readonly log: Logger;
  /** /readyz answers 200 only while this returns true. */
  readonly ready: () => boolean;
  readonly metricsPath?: string;
}

export function parseHostPort(address: string): { host: string; port: number } {
  const m = /^(\[[^\]]+\]|[^:]*):(\d+)$/.exec(address);
  if (!m) throw new Error(`address ${JSON.stringify(address)} is not host:port`);
  const port = Number(m[2]);
  if (port > 65535) throw new Error(`port ${port} out of range`);
  const host = (m[1] ?? '').replace(/^\[|\]$/g, '');
  return { host: host === '' ? '0.0.0.0' : host, port };
}

/** Serves /metrics, /healthz and /readyz; resolves once listening. */
export async function startHttpEndpoint(opts: HttpEndpointOptions): Promise<Server> {
  const metricsPath = opts.metricsPath ?? '/metrics';
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405).end();
    } else if (path === metricsPath) {
      opts.registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': opts.registry.contentType }).end(text),
        (err: unknown) => {
          opts.log.error({ err }, 'Failed to collect metrics');
          res.writeHead(500).end('metrics collection failed\n');
        },
      );
    } else if (path === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    } else if (path === '/readyz') {
      const ok = opts.ready();
      res.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' }).end(ok ? 'ok\n' : 'not ready\n');
    } else {
      res.writeHead(404).end();
    }
  });
  const { host, port } = parseHostPort(opts.address);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const bound = server.address();
  const boundPort = typeof bound === 'object' && bound !== null ? bound.port : port;
  opts.log.info({ address: opts.address, port: boundPort, metricsPath }, 'Serving metrics and health endpoints');
  return server;
}
