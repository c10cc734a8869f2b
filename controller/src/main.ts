// SPDX-License-Identifier: Apache-2.0
// loopsnap-controller entry point: the only place that reads argv, the environment and certificate files.
// Exit codes: 0 after SIGTERM/SIGINT, 1 on lost leadership or a fatal error, 2 on invalid flags.
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { KubeConfig } from '@kubernetes/client-node';
import { collectDefaultMetrics, Registry } from 'prom-client';
import { createLogger } from '../../common/src/log.js';
import { type ControllerConfig, parseConfig, usage } from './config.js';
import { buildController } from './controller.js';
import type { NodeTls } from './csi-client/node-client.js';
import { buildHttpServer } from './http-server.js';

function loadKubeConfig(cfg: ControllerConfig): KubeConfig {
  const kc = new KubeConfig();
  if (cfg.kubeconfig) kc.loadFromFile(cfg.kubeconfig);
  else kc.loadFromCluster();
  return kc;
}

function loadTls(cfg: ControllerConfig): NodeTls | 'insecure' {
  if (cfg.insecureNodeConnections) return 'insecure';
  const read = (flag: string, path: string | undefined): Buffer => {
    try {
      return readFileSync(path as string);
    } catch (err) {
      throw new Error(`cannot read ${flag} "${path}": ${(err as Error).message}`, { cause: err });
    }
  };
  return {
    ca: read('--tls-ca-file', cfg.tlsCaFile),
    cert: read('--tls-cert-file', cfg.tlsCertFile),
    key: read('--tls-key-file', cfg.tlsKeyFile),
    ...(cfg.tlsServerName ? { serverName: cfg.tlsServerName } : {}),
  };
}

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(usage());
    return 0;
  }
  let cfg: ControllerConfig;
  try {
    cfg = parseConfig(argv, {
      ...(process.env.KUBECONFIG ? { KUBECONFIG: process.env.KUBECONFIG } : {}),
      hostname: hostname(),
      pid: process.pid,
    });
  } catch (err) {
    process.stderr.write(`loopsnap-controller: ${(err as Error).message}\n`);
    return 2;
  }
  const log = createLogger({ component: 'loopsnap-controller', level: cfg.logLevel });
  let nodeTls: NodeTls | 'insecure';
  let kc: KubeConfig;
  try {
    nodeTls = loadTls(cfg);
    kc = loadKubeConfig(cfg);
  } catch (err) {
    process.stderr.write(`loopsnap-controller: ${(err as Error).message}\n`);
    return 2;
  }
  const registry = new Registry();
  // Process and Node.js runtime metrics (process_*, nodejs_*), as upstream's controller serves since v8.3.
  collectDefaultMetrics({ register: registry });
  let exitCode = 0;
  let resolveDone: () => void = () => undefined;
  const done = new Promise<void>((r) => {
    resolveDone = r;
  });
  const controller = buildController({
    kc,
    config: cfg,
    log,
    registry,
    nodeTls,
    onLostLeadership: () => {
      exitCode = 1;
      resolveDone();
    },
  });
  let server: ReturnType<typeof buildHttpServer> | undefined;
  if (cfg.httpEndpoint) {
    const i = cfg.httpEndpoint.lastIndexOf(':');
    const host = cfg.httpEndpoint.slice(0, i) || '0.0.0.0';
    const port = Number(cfg.httpEndpoint.slice(i + 1));
    server = buildHttpServer(registry, controller, cfg.metricsPath);
    await new Promise<void>((resolve, reject) => {
      server?.once('error', reject);
      server?.listen(port, host, resolve);
    });
    log.info({ endpoint: cfg.httpEndpoint }, 'Serving metrics and health');
  }
  for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => resolveDone());
  log.info(
    { driver: cfg.driverName, leaderElection: cfg.leaderElection, identity: cfg.leaderElectionIdentity },
    'Starting loopsnap-controller',
  );
  await controller.start();
  await done;
  log.info({}, 'Shutting down');
  await controller.stop();
  server?.close();
  return exitCode;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(
      `loopsnap-controller: fatal: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
    );
    process.exit(1);
  },
);
