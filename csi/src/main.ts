// SPDX-License-Identifier: Apache-2.0
// The node plugin's entry point, and the only place that reads argv and the environment.
//   start: flags -> Config; load driver state; start the storage backend (data-path cleanup of a dead
//   predecessor, FUSE mount, engine volumes); reconcile state after a crash; serve gRPC on the unix socket
//   (all CSI services) and on TCP with mutual TLS (Identity, Controller, SnapshotMetadata, loopsnap.v1.NodeAgent:
//   in-place restore and refresh, resumed here before serving); serve metrics;
//   register in the node registry Lease when Kubernetes access is configured; once serving, serve the kubelet
//   plugin registration (--kubelet-registration-socket) so that the kubelet finds the CSI socket.
//   Under the keeper (csi/src/keeper/, env LOOPSNAP_KEEPER_CHANNEL_FD and a Node IPC channel): wait for the
//   keeper's `start` message first; `adopt` comes with the /dev/fuse descriptor of the predecessor's live
//   connection, which the data path takes over (no mount, loop device or record is touched); after a fresh
//   mount the new descriptor goes up to the keeper. On `release` (a successor takes over) or SIGTERM: stop
//   serving gRPC, then hand the data path over (backend.release: flush + close, connection kept) and exit 0.
//   On `stop` (SIGTERM to the keeper with no successor): the full stop below, then exit 0.
//   stop without a keeper (SIGTERM/SIGINT): remove the kubelet registration socket (the kubelet deregisters the driver), refuse
//   new calls, let calls in flight finish (--shutdown-grace-seconds), release the Lease, unpublish/unstage
//   what is still staged (pods lose their volumes with the plugin anyway; this way no loop device outlives
//   it), close the engine volumes (flush + checkpoint) and unmount FUSE.
// Exit codes: 0 after a clean stop, 1 when start-up fails, 2 for bad flags (one-line reason on stderr).
import { mkdir, readFile, realpath, rm } from 'node:fs/promises';
import type { Server as HttpServer } from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { KubeConfig } from '@kubernetes/client-node';
import { KubeRest } from '../../common/src/kube-rest.js';
import { collectDefaultMetrics, Registry } from 'prom-client';
import { createLogger, type Logger } from '../../common/src/log.js';
import { type Config, ConfigError, helpText, parseConfig, socketPath } from './config.js';
import { NodeAgent } from './agent/node-agent.js';
import { watchBackgroundJobs } from './driver/background.js';
import { DriverContext } from './driver/context.js';
import { EngineBackend } from './driver/engine-backend.js';
import { MetadataService } from './driver/metadata-service.js';
import { NodeService } from './driver/node-service.js';
import { recoverState } from './driver/recovery.js';
import { RestoreService } from './driver/restore-service.js';
import { SnapshotService } from './driver/snapshot-service.js';
import { VolumeService } from './driver/volume-service.js';
import { agentService } from './grpc/agent-server.js';
import { buildNodeServer, buildRemoteServer, listen, type ServerDeps, shutdown } from './grpc/server.js';
import { mutualTlsCredentials } from './grpc/tls.js';
import { ConfinedPaths, exitPastStuckCalls } from './mount/confined-path.js';
import { removeStaleSocket } from './grpc/unix-socket.js';
import { DriverState } from './state/driver-state.js';
import { registrationService } from './kubelet-registration/proto.js';
import { KubeletRegistration } from './kubelet-registration/registration.js';
import { CsiMetrics, KubeletRegistrationMetrics, startHttpEndpoint } from './metrics.js';
import { reportUnopenedVolumes } from './registry/node-events.js';
import { type NodeLeaseHandle, startNodeLease } from './registry/node-lease.js';
import { Keeper } from './keeper/keeper.js';
import { KeeperLink } from './keeper/keeper-link.js';
import { KEEPER_CHANNEL_ENV } from './keeper/keeper-protocol.js';

/** How long calls in flight may take before a handover cuts them off (the kubelet retries them). */
const HANDOVER_GRPC_GRACE_MS = 5_000;

async function packageVersion(): Promise<string> {
  const here = fileURLToPath(new URL('.', import.meta.url));
  const root = here.includes('/dist/') ? join(here, '..', '..', '..') : join(here, '..', '..');
  try {
    return (JSON.parse(await readFile(join(root, 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return '0.0.0-unknown';
  }
}

/** Staging/target path confinement below --kubelet-dir (both directories also by their real paths). */
async function confinedPaths(config: Config, log: Logger): Promise<ConfinedPaths> {
  const real = (p: string): Promise<string[]> =>
    realpath(p).then(
      (r) => [r],
      () => [],
    );
  return new ConfinedPaths({
    policy: {
      kubeletDir: config.kubeletDir,
      kubeletDirAliases: await real(config.kubeletDir),
      stateDir: config.stateDir,
      stateDirAliases: await real(config.stateDir),
      timeoutMs: config.pathTimeoutSeconds * 1000,
    },
    log,
  });
}

interface Running {
  readonly config: Config;
  node?: NodeService;
  readonly log: Logger;
  setServing(on: boolean): void;
  readonly servers: grpc.Server[];
  readonly backend: EngineBackend;
  http?: HttpServer;
  lease?: NodeLeaseHandle;
  agent?: NodeAgent;
  kubeletRegistration?: KubeletRegistration;
}

async function start(config: Config, log: Logger, keeper: KeeperLink | undefined): Promise<Running> {
  // A missing gen/proto copy fails here, before anything on the node is touched.
  if (config.kubeletRegistrationSocket !== '') registrationService();
  const version = await packageVersion();
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  let serving = false;
  // Before anything of the state dir is read: the keeper says when the predecessor has let go of it.
  const startup = keeper ? await keeper.startup() : undefined;
  const state = await DriverState.load(config.stateDir, log);
  const backend = await EngineBackend.start({
    ...(startup?.fuseFd === undefined ? {} : { inheritedFuseFd: startup.fuseFd }),
    stateDir: config.stateDir,
    log,
    blockSizeBytes: config.blockSizeBytes,
    granuleBlocks: config.granuleBlocks,
    workers: config.fuseWorkers,
    saveQuotaBytes: config.saveQuotaBytes === 0 ? null : config.saveQuotaBytes,
    registry,
    directIo: config.datapathDirectIo,
    backgroundRateBytesPerSecond: config.backgroundCopyBytesPerSecond,
    trimBeforeCut: config.trimBeforeCut,
  });
  const running: Running = {
    config,
    log,
    setServing: (on) => {
      serving = on;
    },
    servers: [],
    backend,
  };
  try {
    const driver = new DriverContext(
      {
        driverName: config.driverName,
        vendorVersion: version,
        nodeId: config.nodeId,
        maxVolumesPerNode: config.maxVolumesPerNode,
        defaultFsType: config.defaultFsType,
        capacity: {
          defaultBytes: config.defaultVolumeSizeBytes,
          alignBytes: config.blockSizeBytes,
          minBytes: config.minVolumeSizeBytes,
          maxBytes: config.maxVolumeSizeBytes,
        },
      },
      state,
      backend,
      log,
    );
    // Record updates of background jobs (image ready, volume hydrated) from now on; recovery catches up.
    watchBackgroundJobs(driver);
    if (keeper && !backend.adopted) keeper.storeConnection(backend.fuseDevice);
    const recovered = await recoverState(driver, backend.storedVolumeIds());
    if (backend.adopted) {
      log.info({ volumes: recovered.volumesKeptStaged }, 'Took over the data path of the previous process');
    }
    const snapshots = new SnapshotService(driver);
    // In-place restore and refresh (loopsnap.v1.NodeAgent): unfinished operations take their locks again
    // before anything is served, then resume in the background.
    const agent = await NodeAgent.start({
      driver,
      snapshots,
      content: backend,
      restores: new RestoreService(driver, snapshots),
      stateDir: config.stateDir,
      log,
      registry,
    });
    running.agent = agent;
    agent.resumeAll();
    const metrics = new CsiMetrics(registry, {
      volumes: () => backend.volumeSamples(),
      jobs: () => [...backend.jobSamples(), ...agent.jobSamples()],
    });
    running.node = new NodeService(driver, await confinedPaths(config, log));
    const deps: ServerDeps = {
      log,
      metrics,
      serving: () => serving,
      driverName: config.driverName,
      vendorVersion: version,
      features: backend.features,
      ready: () => serving && backend.healthy(),
      unhealthy: () => (serving ? backend.dataPathProblem() : Promise.resolve(undefined)),
      driver,
      volumes: new VolumeService(driver),
      snapshots,
      node: running.node,
      metadata: new MetadataService(driver),
    };
    const sock = socketPath(config);
    await mkdir(dirname(sock), { recursive: true });
    await removeStaleSocket(sock);
    const unixServer = buildNodeServer(deps);
    running.servers.push(unixServer);
    await listen(unixServer, config.endpoint, grpc.ServerCredentials.createInsecure());
    let tcpPort: number | undefined;
    if (config.tcpEndpoint !== '') {
      const creds = config.insecureTcp
        ? grpc.ServerCredentials.createInsecure()
        : await mutualTlsCredentials({
            certFile: config.tlsCertFile,
            keyFile: config.tlsKeyFile,
            clientCaFile: config.tlsClientCaFile,
          });
      if (config.insecureTcp)
        log.warn({ tcpEndpoint: config.tcpEndpoint }, 'Serving TCP without TLS (development only)');
      const tcpServer = buildRemoteServer(deps, [agentService(deps, agent)]);
      running.servers.push(tcpServer);
      tcpPort = await listen(tcpServer, config.tcpEndpoint, creds);
    }
    if (config.httpEndpoint !== '') {
      running.http = await startHttpEndpoint({
        address: config.httpEndpoint,
        registry,
        log,
        ready: () => serving && backend.healthy(),
        metricsPath: config.metricsPath,
      });
    }
    if (config.kubeconfig !== '' || config.inCluster) {
      const kc = new KubeConfig();
      if (config.inCluster) kc.loadFromCluster();
      else kc.loadFromFile(config.kubeconfig);
      const advertised =
        config.advertiseEndpoint !== '' ? config.advertiseEndpoint : config.tcpEndpoint.replace(/:0$/, `:${tcpPort}`);
      running.lease = await startNodeLease({
        kc,
        nodeId: config.nodeId,
        endpoint: advertised,
        capacityBytes: () => backend.availableBytes(),
        version,
        namespace: config.registryNamespace,
        leaseDurationSeconds: config.nodeLeaseDurationSeconds,
        log,
      });
      const unopened = backend.unopenedVolumes().map((v) => {
        const name = driver.state.volume(v.volumeId)?.name;
        return name === undefined ? v : { ...v, reason: `${v.reason} (CSI volume ${name})` };
      });
      if (unopened.length > 0) {
        const rest = await KubeRest.fromKubeConfig(kc);
        await reportUnopenedVolumes({
          rest,
          nodeName: config.nodeId,
          namespace: config.nodeEventsNamespace,
          volumes: unopened,
          startedAtMs: Date.now(),
          log,
        }).finally(() => rest.close());
      }
    }
    serving = true;
    if (config.kubeletRegistrationSocket !== '') {
      // After `serving`: the kubelet calls NodeGetInfo right after GetInfo and does not retry a failure.
      await mkdir(dirname(config.kubeletRegistrationSocket), { recursive: true });
      running.kubeletRegistration = await KubeletRegistration.start({
        socketPath: config.kubeletRegistrationSocket,
        driverName: config.driverName,
        csiEndpoint: config.kubeletRegistrationPath,
        log,
        metrics: new KubeletRegistrationMetrics(registry),
      });
    }
    log.info(
      {
        endpoint: config.endpoint,
        tcpEndpoint: config.tcpEndpoint,
        tcpPort,
        nodeId: config.nodeId,
        version,
        pid: process.pid,
        adopted: backend.adopted,
      },
      'Started node plugin',
    );
    return running;
  } catch (err) {
    // Under a keeper the data path must survive a failed start: release it for the next attempt.
    await (keeper ? release(running) : stop(running)).catch((e: unknown) =>
      log.error({ err: e }, 'Failed to stop after a failed start'),
    );
    throw err;
  }
}

/**
 * Hands everything over to a successor (or to the next start after SIGTERM under the keeper): gRPC first
 * (I/O keeps flowing while calls in flight finish), then the data path (backend.release: requests wait in
 * the kernel from here on). Mounts, loop devices, views and stage/publish records stay; the Lease is left
 * for the successor to renew.
 */
async function release(r: Running): Promise<void> {
  await r.kubeletRegistration?.stop().catch(() => undefined);
  r.setServing(false);
  const graceMs = Math.min(r.config.shutdownGraceSeconds * 1000, HANDOVER_GRPC_GRACE_MS);
  await Promise.all(r.servers.map((s) => shutdown(s, graceMs)));
  await r.lease?.stop({ release: false }).catch(() => undefined);
  await new Promise<void>((resolve) => (r.http ? r.http.close(() => resolve()) : resolve()));
  r.http?.closeAllConnections?.();
  await r.agent?.stop();
  await r.backend.release();
  r.log.info('Released node plugin for a successor');
}

async function stop(r: Running): Promise<void> {
  await r.kubeletRegistration
    ?.stop()
    .catch((err: unknown) => r.log.warn({ err }, 'Failed to remove the kubelet registration socket'));
  r.setServing(false);
  const graceMs = r.config.shutdownGraceSeconds * 1000;
  await Promise.all(r.servers.map((s) => shutdown(s, graceMs)));
  await r.lease?.stop().catch((err: unknown) => r.log.warn({ err }, 'Failed to release the node Lease'));
  await new Promise<void>((resolve) => (r.http ? r.http.close(() => resolve()) : resolve()));
  await r.agent?.stop();
  await r.node?.teardownAll();
  await r.backend.close();
  await rm(socketPath(r.config), { force: true });
  r.log.info('Stopped node plugin');
}

async function main(argv: readonly string[]): Promise<void> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(`${helpText()}\n`);
    return;
  }
  let config: Config;
  try {
    config = parseConfig(argv);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`loopsnap-node: ${err.message}\n`);
    process.exitCode = 2;
    return;
  }
  const log = createLogger({ component: 'csi-node', level: config.logLevel });
  if (config.keeper && process.env[KEEPER_CHANNEL_ENV] === undefined) {
    // This process becomes the keeper; the server is the same command, told apart by the channel variable.
    const script = fileURLToPath(import.meta.url);
    const keeperProcess = new Keeper({
      stateDir: config.stateDir,
      command: [process.execPath, ...process.execArgv, script, ...argv],
      log,
      ...(config.keeperReadyFile ? { readyFile: config.keeperReadyFile } : {}),
    });
    keeperProcess.run().then(
      (code) => process.exit(code),
      (err: unknown) => {
        log.fatal({ err }, 'Keeper failed');
        process.stderr.write(`loopsnap-node keeper: ${(err as Error).message}\n`);
        process.exit(1);
      },
    );
    return;
  }
  const keeper = KeeperLink.fromEnv(process.env, log);
  let running: Running;
  try {
    running = await start(config, log, keeper);
    keeper?.serving();
  } catch (err) {
    log.fatal({ err }, 'Failed to start node plugin');
    process.stderr.write(`loopsnap-node: ${(err as Error).message}\n`);
    process.exitCode = 1;
    return;
  }
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals | 'release' | 'stop'): void => {
    if (stopping) return;
    stopping = true;
    const final = !keeper || signal === 'stop';
    log.info({ signal }, final ? 'Stopping node plugin' : 'Releasing node plugin');
    // After a release the data-path workers sit in read(2) on /dev/fuse, which no exit() can join: the
    // process ends itself with SIGKILL (everything is flushed and closed by then; requests the workers had
    // read stay in the kernel for the successor).
    const finish = (): Promise<void> => (final ? stop(running) : release(running)).then(() => keeper!.released());
    (keeper ? finish().then(() => process.kill(process.pid, 'SIGKILL')) : stop(running)).then(
      // process.exit joins worker threads; one abandoned in a hung mount below the kubelet dir never returns.
      () => ((running.node?.stuckPathCalls() ?? 0) > 0 ? exitPastStuckCalls(0) : process.exit(0)),
      (err: unknown) => {
        log.error({ err }, 'Failed to stop cleanly');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  keeper?.onRelease((final) => onSignal(final ? 'stop' : 'release'));
}

void main(process.argv.slice(2));
