// SPDX-License-Identifier: Apache-2.0
// Runs a real node plugin (dist/csi/src/main.js) as a child process for the controller's end-to-end tests and
// benchmark, as a DaemonSet pod would run on one node: its own work dir (state dir, unix socket, kubelet
// paths), JSON log lines kept in memory, CSI clients on the unix socket, SIGTERM/SIGKILL, and a cleanup that
// removes every loop device and mount under its work dir (also after a kill -9). Lives in test/support so
// that the benchmark (compiled by tsconfig.build.json) can use it too.
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { csiService } from '../../common/src/csi-proto.js';
import { REPO_ROOT } from './paths.js';

const execFileP = promisify(execFile);
export const PLUGIN_MAIN = join(REPO_ROOT, 'dist', 'csi', 'src', 'main.js');
export const isRoot = process.getuid?.() === 0;

export type LogLine = Record<string, unknown> & { msg?: string; level?: string };

export interface PluginClients {
  readonly identity: grpc.Client;
  readonly controller: grpc.Client;
  readonly node: grpc.Client;
}

/** A unary CSI call as a promise (rejects with the grpc ServiceError). */
export function csiCall<Res = Record<string, unknown>>(
  client: grpc.Client,
  method: string,
  req: object = {},
): Promise<Res> {
  return new Promise((resolve, reject) => {
    const fn = (client as unknown as Record<string, (...a: unknown[]) => void>)[method];
    if (typeof fn !== 'function') {
      reject(new Error(`no CSI method ${method}`));
      return;
    }
    fn.call(client, req, { deadline: Date.now() + 120_000 }, (err: grpc.ServiceError | null, res: Res) =>
      err ? reject(err) : resolve(res),
    );
  });
}

export interface NodePluginOptions {
  readonly nodeId: string;
  /** Reuse a work dir (restart after a crash); default a fresh temp dir. */
  readonly dir?: string;
  readonly args?: readonly string[];
  readonly logLevel?: string;
}

export class NodePlugin {
  readonly lines: LogLine[] = [];
  readonly clients: PluginClients;
  private readonly exitPromise: Promise<number | null>;
  private exitedCode: number | null | undefined;

  private constructor(
    readonly nodeId: string,
    readonly dir: string,
    readonly child: ChildProcess,
  ) {
    this.exitPromise = new Promise((resolve) =>
      child.once('exit', (code) => {
        this.exitedCode = code;
        resolve(code);
      }),
    );
    const mk = (name: 'Identity' | 'Controller' | 'Node'): grpc.Client =>
      new (csiService(name))(`unix://${this.socket}`, grpc.credentials.createInsecure());
    this.clients = { identity: mk('Identity'), controller: mk('Controller'), node: mk('Node') };
  }

  get socket(): string {
    return join(this.dir, 'csi.sock');
  }

  get stateDir(): string {
    return join(this.dir, 'state');
  }

  get exited(): boolean {
    return this.exitedCode !== undefined;
  }

  static async start(opts: NodePluginOptions): Promise<NodePlugin> {
    const dir = opts.dir ?? (await mkdtemp(join(tmpdir(), 'loopsnap-node-')));
    const child = spawn(
      process.execPath,
      [
        '--enable-source-maps',
        PLUGIN_MAIN,
        '--node-id',
        opts.nodeId,
        '--state-dir',
        join(dir, 'state'),
        '--endpoint',
        `unix://${join(dir, 'csi.sock')}`,
        '--log-level',
        opts.logLevel ?? 'info',
        // Staging and target paths lie under the work dir (the kubelet's dir on a real node).
        ...(opts.args?.some((a) => a.startsWith('--kubelet-dir')) ? [] : ['--kubelet-dir', dir]),
        ...(opts.args ?? []),
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const p = new NodePlugin(opts.nodeId, dir, child);
    let buf = '';
    let errText = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        try {
          p.lines.push(JSON.parse(line) as LogLine);
        } catch {
          p.lines.push({ msg: line, level: 'raw' });
        }
        if (p.lines.length > 20_000) p.lines.splice(0, 10_000);
      }
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      errText = (errText + d).slice(-4000);
    });
    const deadline = Date.now() + 60_000;
    // Serving once Probe answers ready on the unix socket (whatever the log level).
    const probe = () =>
      csiCall<{ ready?: { value?: boolean } }>(p.clients.identity, 'Probe').then(
        (r) => r.ready?.value !== false,
        () => false,
      );
    while (!(await probe())) {
      if (p.exited || Date.now() > deadline) {
        await p.kill9();
        if (opts.dir === undefined) await cleanupPluginDir(dir);
        throw new Error(
          `node plugin ${opts.nodeId} did not start: ${errText.trim() || JSON.stringify(p.lines.slice(-5))}`,
        );
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    return p;
  }

  private closeClients(): void {
    for (const c of Object.values(this.clients)) c.close();
  }

  /** SIGTERM (releases its Lease, unmounts FUSE) and wait; SIGKILL after 30 s. */
  async stop(): Promise<number | null> {
    this.closeClients();
    if (!this.exited) this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 30_000);
    const code = await this.exitPromise;
    clearTimeout(timer);
    return code;
  }

  /** A crash: SIGKILL, no cleanup; its successor (same dir) cleans up. */
  async kill9(): Promise<void> {
    this.closeClients();
    if (!this.exited) this.child.kill('SIGKILL');
    await this.exitPromise;
  }
}

async function loopsUnder(prefix: string): Promise<Array<{ dev: string; back: string }>> {
  const out = await execFileP('losetup', ['-l', '-n', '-O', 'NAME,BACK-FILE']).then(
    (r) => r.stdout,
    () => '',
  );
  return out
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter(([dev, back]) => dev && back?.startsWith(prefix))
    .map(([dev, back]) => ({ dev: dev as string, back: back as string }));
}

async function mountsUnder(prefix: string): Promise<string[][]> {
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  return info
    .split('\n')
    .map((l) => l.split(' '))
    .filter((f) => (f[4] ?? '').startsWith(prefix));
}

/** Loop devices and mounts left under `dir` (leak check). */
export async function leftoversUnder(dir: string): Promise<string[]> {
  const prefix = `${dir}/`;
  return [
    ...(await loopsUnder(prefix)).map((l) => `loop ${l.dev} on ${l.back}`),
    ...(await mountsUnder(prefix)).map((f) => `mount ${f[4]}`),
  ];
}

/** Removes what a plugin left under `dir` (exact loop devices, mounts deepest first, aborted FUSE), then `dir`. */
export async function cleanupPluginDir(dir: string): Promise<void> {
  const prefix = `${dir}/`;
  for (const l of await loopsUnder(prefix)) await execFileP('losetup', ['-d', l.dev]).catch(() => undefined);
  const mounts = (await mountsUnder(prefix)).sort((a, b) => (b[4] ?? '').length - (a[4] ?? '').length);
  for (const f of mounts) {
    const minor = f[2]?.split(':')[1];
    if ((f[4] ?? '').endsWith('/fuse') && minor) {
      await execFileP('sh', ['-c', `echo 1 > /sys/fs/fuse/connections/${minor}/abort`]).catch(() => undefined);
    }
    await execFileP('umount', ['-l', f[4] as string]).catch(() => undefined);
  }
  await rm(dir, { recursive: true, force: true });
}
