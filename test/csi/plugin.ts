// SPDX-License-Identifier: Apache-2.0
// Integration-test harness for the node plugin: runs the compiled plugin (dist/csi/src/main.js) as a child
// process, as a DaemonSet would, with its own state dir and unix socket; captures its JSON log lines; offers
// promise-based CSI clients; and removes every loop device and mount under its temp dir afterwards, also
// when the test failed or the plugin was killed.
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll } from 'vitest';
import { csiService } from '../../common/src/csi-proto.js';
import { REPO_ROOT } from '../support/paths.js';

const execFileP = promisify(execFile);

export const isRoot = process.getuid?.() === 0;
export const PLUGIN_MAIN = join(REPO_ROOT, 'dist', 'csi', 'src', 'main.js');
export const MiB = 1024 * 1024;

async function newestSource(dir: string): Promise<number> {
  let newest = 0;
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) newest = Math.max(newest, await newestSource(p));
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.test.ts')) newest = Math.max(newest, (await stat(p)).mtimeMs);
  }
  return newest;
}

/** Compiles to dist/ when the plugin's JS is older than any source it is built from. */
export async function ensurePluginBuilt(): Promise<void> {
  const built = await stat(PLUGIN_MAIN).then(
    (s) => s.mtimeMs,
    () => 0,
  );
  const src = Math.max(
    await newestSource(join(REPO_ROOT, 'csi', 'src')),
    await newestSource(join(REPO_ROOT, 'common', 'src')),
  );
  if (built >= src) return;
  try {
    await execFileP('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: REPO_ROOT });
  } catch (err) {
    // tsc still emits when a module elsewhere has a type error; what matters is fresh plugin JS.
    const after = await stat(PLUGIN_MAIN).then(
      (s) => s.mtimeMs,
      () => 0,
    );
    if (after < src) throw err;
  }
}

export type LogLine = Record<string, unknown> & { msg?: string; level?: string };

export interface Clients {
  readonly identity: grpc.Client;
  readonly controller: grpc.Client;
  readonly node: grpc.Client;
  readonly metadata: grpc.Client;
}

/** Unary CSI call as a promise; rejects with the grpc ServiceError. */
export function call<Res = Record<string, unknown>>(
  client: grpc.Client,
  method: string,
  req: object = {},
): Promise<Res> {
  return new Promise((resolve, reject) => {
    const fn = (client as unknown as Record<string, (...a: unknown[]) => void>)[method];
    if (typeof fn !== 'function') {
      reject(new Error(`no method ${method}`));
      return;
    }
    fn.call(client, req, { deadline: Date.now() + 120_000 }, (err: grpc.ServiceError | null, res: Res) =>
      err ? reject(err) : resolve(res),
    );
  });
}

/** Server-streaming CSI call: every message, or the grpc error. */
export function stream<Res = Record<string, unknown>>(
  client: grpc.Client,
  method: string,
  req: object,
): Promise<Res[]> {
  return new Promise((resolve, reject) => {
    const fn = (client as unknown as Record<string, (...a: unknown[]) => grpc.ClientReadableStream<Res>>)[method]!;
    const s = fn.call(client, req, { deadline: Date.now() + 120_000 });
    const out: Res[] = [];
    s.on('data', (m: Res) => out.push(m));
    s.on('error', reject);
    s.on('end', () => resolve(out));
  });
}

export function makeClients(address: string, creds = grpc.credentials.createInsecure()): Clients {
  const mk = (name: 'Identity' | 'Controller' | 'Node' | 'SnapshotMetadata'): grpc.Client =>
    new (csiService(name))(address, creds);
  return { identity: mk('Identity'), controller: mk('Controller'), node: mk('Node'), metadata: mk('SnapshotMetadata') };
}

export function closeClients(c: Clients): void {
  for (const x of [c.identity, c.controller, c.node, c.metadata]) x.close();
}

export interface PluginOptions {
  /** Reuse a work dir (restart tests); default a fresh temp dir. */
  readonly dir?: string;
  readonly extraArgs?: readonly string[];
  readonly nodeId?: string;
}

export class PluginProcess {
  readonly lines: LogLine[] = [];
  private exitPromise: Promise<number | null>;
  private exitedCode: number | null | undefined;
  clients: Clients;

  private constructor(
    readonly dir: string,
    readonly child: ChildProcess,
  ) {
    this.exitPromise = new Promise((resolve) =>
      child.once('exit', (code) => {
        this.exitedCode = code;
        resolve(code);
      }),
    );
    this.clients = makeClients(`unix://${this.socket}`);
  }

  get stateDir(): string {
    return join(this.dir, 'state');
  }

  get socket(): string {
    return join(this.dir, 'csi.sock');
  }

  get exited(): boolean {
    return this.exitedCode !== undefined;
  }

  /** Port of --tcp-endpoint as bound (from the start-up log line). */
  get tcpPort(): number | undefined {
    const l = this.lines.find((x) => x.msg === 'Started node plugin');
    return typeof l?.tcpPort === 'number' ? l.tcpPort : undefined;
  }

  static async start(opts: PluginOptions = {}): Promise<PluginProcess> {
    await ensurePluginBuilt();
    const dir = opts.dir ?? (await mkdtemp(join(tmpdir(), 'loopsnap-csi-')));
    const args = [
      '--enable-source-maps',
      PLUGIN_MAIN,
      '--node-id',
      opts.nodeId ?? 'test-node',
      '--state-dir',
      join(dir, 'state'),
      '--endpoint',
      `unix://${join(dir, 'csi.sock')}`,
      '--log-level',
      'debug',
      // Staging and target paths of these tests lie under the work dir (the kubelet's dir on a real node).
      ...(opts.extraArgs?.some((a) => a.startsWith('--kubelet-dir')) ? [] : ['--kubelet-dir', dir]),
      ...(opts.extraArgs ?? []),
    ];
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const p = new PluginProcess(dir, child);
    let buf = '';
    let errText = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
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
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      errText += d;
    });
    const deadline = Date.now() + 60_000;
    while (!p.lines.some((l) => l.msg === 'Started node plugin')) {
      if (p.exited || Date.now() > deadline) {
        await p.kill9();
        throw new Error(`node plugin did not start: ${errText.trim() || JSON.stringify(p.lines.slice(-5))}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    return p;
  }

  /** New CSI clients on the socket once the server behind it was replaced (the kubelet reconnects too). */
  reconnect(): void {
    closeClients(this.clients);
    this.clients = makeClients(`unix://${this.socket}`);
  }

  /** SIGTERM and wait for a clean exit; returns the exit code. */
  async stop(): Promise<number | null> {
    closeClients(this.clients);
    if (!this.exited) this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 30_000);
    const code = await this.exitPromise;
    clearTimeout(timer);
    return code;
  }

  /** SIGKILL (a crash: no cleanup of loops, mounts or FUSE) and wait for the exit. */
  async kill9(): Promise<void> {
    closeClients(this.clients);
    if (!this.exited) this.child.kill('SIGKILL');
    await this.exitPromise;
  }

  /** Log lines whose msg is `msg`. */
  logs(msg: string): LogLine[] {
    return this.lines.filter((l) => l.msg === msg);
  }
}

/**
 * Removes what a test left under `dir`: loop devices backed by files below it (exact devices), mounts below
 * it (deepest first, lazily), then the directory. Never touches anything outside `dir`.
 */
export async function cleanupDir(dir: string): Promise<void> {
  const prefix = `${dir}/`;
  const loops = await execFileP('losetup', ['-l', '-n', '-O', 'NAME,BACK-FILE']).then(
    (r) => r.stdout,
    () => '',
  );
  for (const line of loops.split('\n')) {
    const [dev, back] = line.trim().split(/\s+/);
    if (dev && back?.startsWith(prefix)) await execFileP('losetup', ['-d', dev]).catch(() => undefined);
  }
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  const mounts = info
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((m) => m.startsWith(prefix))
    .sort((a, b) => b.length - a.length);
  for (const m of mounts) {
    if (m.endsWith('/fuse')) {
      const minor = info
        .split('\n')
        .find((l) => l.split(' ')[4] === m)
        ?.split(' ')[2]
        ?.split(':')[1];
      if (minor)
        await execFileP('sh', ['-c', `echo 1 > /sys/fs/fuse/connections/${minor}/abort`]).catch(() => undefined);
    }
    await execFileP('umount', ['-l', m]).catch(() => undefined);
  }
  await rm(dir, { recursive: true, force: true });
}

/** What of ours is still attached or mounted under `dir` (leak checks). */
export async function leftoversUnder(dir: string): Promise<string[]> {
  const prefix = `${dir}/`;
  const out: string[] = [];
  const loops = await execFileP('losetup', ['-l', '-n', '-O', 'NAME,BACK-FILE']).then((r) => r.stdout);
  for (const line of loops.split('\n')) {
    const [dev, back] = line.trim().split(/\s+/);
    if (dev && back?.startsWith(prefix)) out.push(`loop ${dev} on ${back}`);
  }
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  for (const l of info.split('\n')) {
    const m = l.split(' ')[4] ?? '';
    if (m.startsWith(prefix)) out.push(`mount ${m}`);
  }
  return out;
}

/**
 * One plugin process for the enclosing describe block (as root; none otherwise): started before its tests,
 * stopped and everything under its dir removed after them. Call the result inside a test.
 */
export function usePlugin(opts: PluginOptions = {}): () => PluginProcess {
  let plugin: PluginProcess | undefined;
  beforeAll(async () => {
    if (isRoot) plugin = await PluginProcess.start(opts);
  });
  afterAll(async () => {
    if (!plugin) return;
    await plugin.stop();
    await cleanupDir(plugin.dir);
  });
  return () => {
    if (!plugin) throw new Error('the node plugin was not started (it needs root)');
    return plugin;
  };
}
