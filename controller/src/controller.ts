// SPDX-License-Identifier: Apache-2.0
// Wires the controller together: informers, the node registry, the four reconcile loops (VolumeSnapshot,
// VolumeSnapshotContent, PVC provisioning/expansion, PV reclaim), the CSIStorageCapacity publisher and
// leader election, and the VolumeRestore / VolumeRefresh loops when the loopsnap.dev CRDs are installed.
// Everything it uses is passed in; `start()` returns once this replica is running (as leader or as a standby
// waiting for the Lease).
import type { KubeConfig } from '@kubernetes/client-node';
import type { Registry } from 'prom-client';
import { isNotFound, KubeRest } from '../../common/src/kube-rest.js';
import type { Logger } from '../../common/src/log.js';
import { NODE_LEASE_LABEL } from '../../common/src/node-lease-format.js';
import { CapacityPublisher } from './capacity-publisher.js';
import type { ControllerConfig } from './config.js';
import { ContentController } from './content-controller.js';
import { CsiClientPool, type NodeTls } from './csi-client/node-client.js';
import type { Caches, Deps } from './deps.js';
import { KubeClient } from './kube/client.js';
import { EventRecorder } from './kube/events.js';
import { Informer } from './kube/informer.js';
import { Resources } from './kube/resources.js';
import type { KubeObject } from './kube/types.js';
import { LeaderElector } from './leader-election.js';
import { ControllerMetrics } from './metrics.js';
import { NodeRegistry } from './node-registry.js';
import { OperationController, type OperationInformers } from './operation-controller.js';
import type { VolumeOperationObject } from './operation-logic.js';
import { Provisioner } from './provisioner.js';
import { PvController } from './pv-controller.js';
import { SnapshotController } from './snapshot-controller.js';

export interface ControllerOptions {
  readonly kc: KubeConfig;
  readonly config: ControllerConfig;
  readonly log: Logger;
  readonly registry: Registry;
  readonly nodeTls: NodeTls | 'insecure';
  /** Called when this replica loses leadership; main.ts exits so that a fresh process campaigns again. */
  readonly onLostLeadership?: () => void;
}

export interface RunningController {
  start(): Promise<void>;
  stop(): Promise<void>;
  readonly isLeader: boolean;
  /** True once this replica leads and its caches are synced (or it is a standby). */
  readonly ready: boolean;
  readonly metrics: ControllerMetrics;
  /** The running loops, once leading (tests use `idle`). */
  readonly loops: ReadonlyArray<{ readonly name: string; readonly idle: boolean }>;
}

/**
 * Whether the API server serves our own group (the loopsnap.dev CRDs are installed). Other answers (an API
 * server still starting says 503, or cannot be reached) are retried for up to `retryMs`.
 */
export async function servesLoopsnapApi(
  r: Pick<KubeRest, 'get'>,
  retryMs: number,
  stopped: () => boolean,
): Promise<boolean> {
  const deadline = Date.now() + retryMs;
  for (let delay = 250; ; delay = Math.min(delay * 2, 5000)) {
    try {
      await r.get('/apis/loopsnap.dev/v1alpha1');
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      if (stopped() || Date.now() + delay > deadline) throw err;
    }
    await new Promise((res) => setTimeout(res, delay));
  }
}

export function buildController(opts: ControllerOptions): RunningController {
  const { config: cfg, log } = opts;
  const metrics = new ControllerMetrics(opts.registry, cfg.driverName);
  let rest: KubeRest | undefined;
  let elector: LeaderElector | undefined;
  let running: { stop(): Promise<void>; loops: Array<{ name: string; idle: boolean }> } | undefined;
  let synced = false;
  let stopped = false;
  let starting: Promise<void> | undefined;

  const startControllers = async (r: KubeRest): Promise<void> => {
    const informer = <T extends KubeObject>(
      res: (typeof Resources)[keyof typeof Resources],
      extra: { namespace?: string; labelSelector?: string } = {},
    ) => new Informer<T>(r, opts.kc, res, { log, ...extra });
    const caches: Caches = {
      snapshots: informer(Resources.VolumeSnapshot),
      contents: informer(Resources.VolumeSnapshotContent),
      snapshotClasses: informer(Resources.VolumeSnapshotClass),
      pvcs: informer(Resources.PersistentVolumeClaim),
      pvs: informer(Resources.PersistentVolume),
      storageClasses: informer(Resources.StorageClass),
      leases: informer(Resources.Lease, {
        namespace: cfg.registryNamespace,
        labelSelector: `${NODE_LEASE_LABEL}=true`,
      }),
    };
    // VolumeRestore / VolumeRefresh (loopsnap.dev), when their CRDs are installed; the rest runs without them.
    const opInformers: OperationInformers | undefined = (await servesLoopsnapApi(r, 60_000, () => stopped))
      ? {
          restores: informer<VolumeOperationObject>(Resources.VolumeRestore),
          refreshes: informer<VolumeOperationObject>(Resources.VolumeRefresh),
        }
      : undefined;
    if (!opInformers)
      log.warn({}, 'loopsnap.dev/v1alpha1 is not served (CRDs not installed): VolumeRestore and VolumeRefresh are off');
    const kube = new KubeClient(r);
    for (const inf of [...Object.values(caches), ...Object.values(opInformers ?? {})]) {
      kube.register(inf as Informer<KubeObject>);
    }
    // Events of cluster-scoped objects (PV, VolumeSnapshotContent) must live in `default`.
    const events = new EventRecorder(r, 'loopsnap-controller', log, { defaultNamespace: 'default' });
    const nodes = new NodeRegistry(caches.leases, {
      namespace: cfg.registryNamespace,
      log,
      onReadyCount: (n) => metrics.nodesReady.set(n),
    });
    const csi = new CsiClientPool(opts.nodeTls, { timeoutMs: cfg.timeoutMs, metrics, log });
    const deps: Deps = {
      settings: {
        driverName: cfg.driverName,
        snapshotNamePrefix: cfg.snapshotNamePrefix,
        workers: cfg.workerThreads,
        retryIntervalStartMs: cfg.retryIntervalStartMs,
        retryIntervalMaxMs: cfg.retryIntervalMaxMs,
        readyPollIntervalMs: cfg.readyPollIntervalMs,
        snapshotHealthIntervalMs: cfg.snapshotHealthIntervalMs,
        volumeHealthIntervalMs: cfg.volumeHealthIntervalMs,
        defaultFsType: cfg.defaultFsType,
      },
      kube,
      caches,
      events,
      nodes,
      csi,
      metrics,
      log,
    };
    const snapshots = new SnapshotController(deps);
    const contents = new ContentController(deps);
    const provisioner = new Provisioner(deps);
    const pvs = new PvController(deps);
    const capacity = new CapacityPublisher(deps, { namespace: cfg.namespace, intervalMs: cfg.capacityPollIntervalMs });
    const operations = opInformers
      ? [new OperationController(deps, 'restore', opInformers), new OperationController(deps, 'refresh', opInformers)]
      : [];
    const all = [snapshots, contents, provisioner, pvs, ...operations];
    // A node coming back (or going away) changes what every waiting object can do next.
    nodes.onChange((n) => {
      if (n.ready)
        for (const g of [contents.gate, provisioner.gate, pvs.gate, ...operations.map((c) => c.gate)]) g.release();
      for (const c of all) c.enqueueAll();
    });
    const informers: Array<Informer<KubeObject>> = [
      ...Object.values(caches),
      ...(Object.values(opInformers ?? {}) as Array<Informer<KubeObject>>),
    ];
    await Promise.all(informers.map((i) => i.start()));
    nodes.start();
    metrics.nodesReady.set(nodes.readyNodes().length);
    for (const c of all) c.loop.start();
    for (const c of all) c.enqueueAll();
    capacity.start();
    const resync = setInterval(() => {
      for (const c of all) c.enqueueAll();
    }, cfg.resyncPeriodMs);
    resync.unref();
    synced = true;
    log.info({ nodes: nodes.all().map((n) => ({ node: n.nodeId, ready: n.ready })) }, 'Controller started');
    running = {
      loops: all.map((c) => c.loop),
      async stop() {
        clearInterval(resync);
        await capacity.stop();
        await Promise.all(all.map((c) => c.loop.stop()));
        nodes.stop();
        await Promise.all(informers.map((i) => i.stop()));
        await events.flush();
        csi.closeAll();
      },
    };
  };

  return {
    metrics,
    get isLeader() {
      return elector ? elector.isLeader : running !== undefined;
    },
    get ready() {
      return elector && !elector.isLeader ? true : synced;
    },
    get loops() {
      return running?.loops ?? [];
    },
    async start() {
      rest = await KubeRest.fromKubeConfig(opts.kc, {
        rateLimit: { qps: cfg.kubeApiQps, burst: cfg.kubeApiBurst },
        userAgent: 'loopsnap-controller',
      });
      const r = rest;
      if (!cfg.leaderElection) {
        metrics.isLeader.set(1);
        starting = startControllers(r);
        await starting;
        return;
      }
      elector = new LeaderElector(
        r,
        {
          namespace: cfg.leaderElectionNamespace,
          name: cfg.leaderElectionId,
          identity: cfg.leaderElectionIdentity,
          leaseDurationMs: cfg.leaderElectionLeaseDurationMs,
          renewDeadlineMs: cfg.leaderElectionRenewDeadlineMs,
          retryPeriodMs: cfg.leaderElectionRetryPeriodMs,
        },
        {
          onStartedLeading: async () => {
            metrics.isLeader.set(1);
            if (stopped) return;
            starting = startControllers(r);
            try {
              await starting;
            } catch (err) {
              // A leader whose controllers did not start must not keep the Lease: exit so another replica
              // (or this one, restarted) takes over.
              log.error({ err }, 'Failed to start the controllers while leading; giving up leadership');
              metrics.isLeader.set(0);
              opts.onLostLeadership?.();
              throw err;
            }
          },
          onStoppedLeading: () => {
            metrics.isLeader.set(0);
            void running?.stop();
            opts.onLostLeadership?.();
          },
        },
        log,
      );
      elector.run();
    },
    async stop() {
      stopped = true;
      await starting?.catch(() => undefined);
      await running?.stop();
      running = undefined;
      await elector?.release();
      metrics.isLeader.set(0);
      rest?.close();
    },
  };
}
