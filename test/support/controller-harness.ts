// SPDX-License-Identifier: Apache-2.0
// Runs the loopsnap controller for integration tests, against the real test control plane:
// - in-process (buildController), with its pino log captured as parsed JSON lines;
// - as a child process (dist/controller/src/main.js), as a Deployment replica would run, so that tests can
//   SIGKILL it mid-reconcile or kill the leader.
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createWriteStream, type WriteStream } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import type { KubeConfig } from '@kubernetes/client-node';
import { Registry } from 'prom-client';
import { createLogger } from '../../common/src/log.js';
import { parseConfig } from '../../controller/src/config.js';
import { buildController, type RunningController } from '../../controller/src/controller.js';
import { REPO_ROOT } from './paths.js';
import type { TestPki } from './tls.js';

const execFileP = promisify(execFile);
export const CONTROLLER_MAIN = join(REPO_ROOT, 'dist', 'controller', 'src', 'main.js');

export type LogLine = Record<string, unknown> & { msg?: string; level?: string };

async function newestSource(dir: string): Promise<number> {
  let newest = 0;
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) newest = Math.max(newest, await newestSource(p));
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.test.ts')) newest = Math.max(newest, (await stat(p)).mtimeMs);
  }
  return newest;
}

/** Compiles to dist/ when the controller's or the plugin's JS is older than their sources. */
export async function ensureBuilt(): Promise<void> {
  const built = Math.min(
    ...(await Promise.all(
      [CONTROLLER_MAIN, join(REPO_ROOT, 'dist', 'csi', 'src', 'main.js')].map((f) =>
        stat(f).then(
          (s) => s.mtimeMs,
          () => 0,
        ),
      ),
    )),
  );
  const src = Math.max(
    ...(await Promise.all(['controller/src', 'csi/src', 'common/src'].map((d) => newestSource(join(REPO_ROOT, d))))),
  );
  if (built >= src) return;
  await execFileP('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: REPO_ROOT, timeout: 600_000 }).catch(
    (err: unknown) => {
      // tsc emits even with type errors elsewhere in the tree; only a missing output is fatal.
      void err;
    },
  );
  await stat(CONTROLLER_MAIN);
}

/** A TCP port nobody listens on right now. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

/** Flags every test controller gets: fast retries and leader election, mTLS from `pki`. */
export function baseArgs(opts: { namespace: string; pki: TestPki; kubeconfigPath?: string }): string[] {
  return [
    ...(opts.kubeconfigPath ? ['--kubeconfig', opts.kubeconfigPath] : []),
    '--namespace',
    opts.namespace,
    '--tls-ca-file',
    opts.pki.ca.certPath,
    '--tls-cert-file',
    opts.pki.client.certPath,
    '--tls-key-file',
    opts.pki.client.keyPath,
    '--retry-interval-start',
    '200ms',
    '--retry-interval-max',
    '3s',
    '--leader-election-lease-duration',
    '4s',
    '--leader-election-renew-deadline',
    '3s',
    '--leader-election-retry-period',
    '500ms',
    '--capacity-poll-interval',
    '5s',
    '--timeout',
    '30s',
  ];
}

export interface InProcessController {
  readonly controller: RunningController;
  readonly registry: Registry;
  readonly lines: LogLine[];
  stop(): Promise<void>;
}

export async function startInProcess(
  kc: KubeConfig,
  args: readonly string[],
  pki: TestPki,
): Promise<InProcessController> {
  const lines: LogLine[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString('utf8').split('\n')) {
        if (!l) continue;
        try {
          lines.push(JSON.parse(l) as LogLine);
        } catch {
          lines.push({ msg: l });
        }
      }
      cb();
    },
  });
  const config = parseConfig([...args], { hostname: 'test', pid: process.pid });
  const log = createLogger({ component: 'loopsnap-controller', level: config.logLevel, destination: sink });
  const registry = new Registry();
  const controller = buildController({
    kc,
    config,
    log,
    registry,
    nodeTls: { ca: pki.ca.cert, cert: pki.client.cert, key: pki.client.key },
  });
  await controller.start();
  return { controller, registry, lines, stop: () => controller.stop() };
}

export class ControllerProcess {
  readonly lines: LogLine[] = [];
  private exitPromise: Promise<number | null>;
  private exitedCode: number | null | undefined;
  private logFile: WriteStream;

  private constructor(
    readonly child: ChildProcess,
    readonly logPath: string,
    readonly httpPort: number,
  ) {
    this.logFile = createWriteStream(logPath, { flags: 'a' });
    this.exitPromise = new Promise((resolve) =>
      child.once('exit', (code) => {
        this.exitedCode = code;
        resolve(code);
      }),
    );
  }

  get exited(): boolean {
    return this.exitedCode !== undefined;
  }

  get pid(): number {
    return this.child.pid as number;
  }

  static async start(args: readonly string[], logPath: string, logLevel = 'debug'): Promise<ControllerProcess> {
    await ensureBuilt();
    const port = await freePort();
    const child = spawn(
      process.execPath,
      [
        '--enable-source-maps',
        CONTROLLER_MAIN,
        ...args,
        '--http-endpoint',
        `127.0.0.1:${port}`,
        '--log-level',
        logLevel,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const p = new ControllerProcess(child, logPath, port);
    let buf = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      p.logFile.write(d);
      buf += d;
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        try {
          p.lines.push(JSON.parse(line) as LogLine);
        } catch {
          p.lines.push({ msg: line, level: 'raw' });
        }
      }
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => p.logFile.write(d));
    return p;
  }

  /** GET on the controller's HTTP endpoint; undefined when it does not answer. */
  async http(path: string): Promise<{ status: number; body: string } | undefined> {
    try {
      const res = await fetch(`http://127.0.0.1:${this.httpPort}${path}`);
      return { status: res.status, body: await res.text() };
    } catch {
      return undefined;
    }
  }

  async isLeader(): Promise<boolean> {
    return (await this.http('/healthz/leader-election'))?.body.trim() === 'leader';
  }

  logs(msg: string): LogLine[] {
    return this.lines.filter((l) => l.msg === msg);
  }

  async stop(): Promise<number | null> {
    if (!this.exited) this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 20_000);
    const code = await this.exitPromise;
    clearTimeout(timer);
    this.logFile.end();
    return code;
  }

  /** A crash: SIGKILL, no release of the leader Lease. */
  async kill9(): Promise<void> {
    if (!this.exited) this.child.kill('SIGKILL');
    await this.exitPromise;
    this.logFile.end();
  }
}
