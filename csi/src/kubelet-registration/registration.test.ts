// SPDX-License-Identifier: Apache-2.0
// The kubelet registration server on a real unix socket, called the way the kubelet's plugin watcher calls it:
// a grpc-js client of the same api.proto (copied from the k8s.io/kubelet module by hack/protos.sh). Log lines
// are asserted on the logger's real JSON output and metrics on the registry's.
import { execFileSync, spawn } from 'node:child_process';
import { watch } from 'node:fs';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { Registry } from 'prom-client';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createLogger, type Logger } from '../../../common/src/log.js';
import { KubeletRegistrationMetrics } from '../metrics.js';
import { type PluginInfoMessage, registrationService } from './proto.js';
import { KubeletRegistration, type KubeletRegistrationOptions } from './registration.js';

type Line = Record<string, unknown>;

/** A logger whose JSON lines are kept, with a way to wait for one (pino writes synchronously). */
function capturingLogger(): { log: Logger; lines: Line[]; next(msg: string): Promise<Line> } {
  const lines: Line[] = [];
  const waiters: Array<{ msg: string; resolve: (l: Line) => void }> = [];
  const log = createLogger({
    component: 'test',
    level: 'debug',
    destination: new Writable({
      write(chunk: Buffer, _e, cb) {
        for (const text of chunk.toString().split('\n')) {
          if (!text) continue;
          const line = JSON.parse(text) as Line;
          lines.push(line);
          for (const w of waiters.splice(0)) {
            if (w.msg === line.msg) w.resolve(line);
            else waiters.push(w);
          }
        }
        cb();
      },
    }),
  });
  return { log, lines, next: (msg) => new Promise((resolve) => waiters.push({ msg, resolve })) };
}

interface KubeletClient {
  getInfo(): Promise<PluginInfoMessage>;
  notify(pluginRegistered: boolean, error?: string): Promise<unknown>;
  close(): void;
}

/** Dials the registration socket as the kubelet does (one connection per registration attempt). */
function kubeletClient(socketPath: string): KubeletClient {
  const c = new (registrationService())(`unix://${socketPath}`, grpc.credentials.createInsecure()) as grpc.Client &
    Record<string, (req: object, cb: (e: grpc.ServiceError | null, r: unknown) => void) => void>;
  const call = <T>(method: string, req: object): Promise<T> =>
    new Promise((resolve, reject) => c[method]!(req, (e, r) => (e ? reject(e) : resolve(r as T))));
  return {
    getInfo: () => call<PluginInfoMessage>('GetInfo', {}),
    notify: (pluginRegistered, error = '') =>
      call('NotifyRegistrationStatus', { plugin_registered: pluginRegistered, error }),
    close: () => c.close(),
  };
}

async function metricValue(registry: Registry, name: string): Promise<number | undefined> {
  const m = (await registry.getMetricsAsJSON()).find((x) => x.name === name);
  return m?.values[0]?.value;
}

const CSI_ENDPOINT = '/var/lib/kubelet/plugins/csi.loopsnap.dev/csi.sock';

describe('kubelet plugin registration', () => {
  let dir: string;
  let socketPath: string;
  let registry: Registry;
  let logs: ReturnType<typeof capturingLogger>;
  const running: KubeletRegistration[] = [];
  const clients: KubeletClient[] = [];

  beforeAll(() => {
    execFileSync(join(fileURLToPath(new URL('../../../hack', import.meta.url)), 'protos.sh'), { stdio: 'inherit' });
  });

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'loopsnap-reg-'));
    socketPath = join(dir, 'csi.loopsnap.dev-reg.sock');
    registry = new Registry();
    logs = capturingLogger();
  });

  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    for (const r of running.splice(0)) await r.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const start = async (extra: Partial<KubeletRegistrationOptions> = {}): Promise<KubeletRegistration> => {
    const r = await KubeletRegistration.start({
      socketPath,
      driverName: 'csi.loopsnap.dev',
      csiEndpoint: CSI_ENDPOINT,
      log: logs.log,
      metrics: new KubeletRegistrationMetrics(registry),
      ...extra,
    });
    running.push(r);
    return r;
  };
  const dial = (): KubeletClient => {
    const c = kubeletClient(socketPath);
    clients.push(c);
    return c;
  };

  it('1-1 GetInfo answers a CSI plugin with the driver name, the host CSI socket path and version 1.0.0', async () => {
    await start();
    expect((await stat(socketPath)).isSocket()).toBe(true);
    expect(await dial().getInfo()).toEqual({
      type: 'CSIPlugin',
      name: 'csi.loopsnap.dev',
      endpoint: CSI_ENDPOINT,
      supported_versions: ['1.0.0'],
    });
    expect(logs.lines.find((l) => l.msg === 'Sent plugin info to the kubelet')).toMatchObject({
      level: 'info',
      driverName: 'csi.loopsnap.dev',
      endpoint: CSI_ENDPOINT,
      registrationSocket: socketPath,
    });
  });

  it('1-2 before the kubelet reports, the plugin counts as not registered and nothing as failed', async () => {
    await start();
    expect(await metricValue(registry, 'loopsnap_kubelet_registration_registered')).toBe(0);
    expect(await metricValue(registry, 'loopsnap_kubelet_registration_failures_total')).toBe(0);
  });

  it('1-3 a successful registration is logged at info and sets the gauge to 1', async () => {
    await start();
    const kubelet = dial();
    await kubelet.getInfo();
    await kubelet.notify(true);
    expect(logs.lines.find((l) => l.msg === 'Registered with the kubelet')).toMatchObject({
      level: 'info',
      driverName: 'csi.loopsnap.dev',
      endpoint: CSI_ENDPOINT,
    });
    expect(logs.lines.some((l) => l.level === 'error')).toBe(false);
    expect(await metricValue(registry, 'loopsnap_kubelet_registration_registered')).toBe(1);
    expect(await metricValue(registry, 'loopsnap_kubelet_registration_failures_total')).toBe(0);
  });

  it('1-4 a failed registration is an error line with the kubelet text, counted; the socket is re-created and a retry can succeed', async () => {
    await start({ retryDelayMs: { initial: 5, max: 5 } });
    // What the kubelet's plugin watcher sees: inotify events on plugins_registry (a delete, then a create;
    // fs.watch reports either as 'rename').
    const watcher = watch(dir);
    const removedAndCreated = new Promise<void>((resolve) => {
      let renames = 0;
      watcher.on('change', (type, name) => {
        if (type === 'rename' && name === basename(socketPath) && ++renames === 2) resolve();
      });
    });
    const kubelet = dial();
    await kubelet.notify(true);
    const recreated = logs.next('Re-created the registration socket for the kubelet');
    const text = 'RegisterPlugin error -- plugin registration failed with err: rpc error: code = Unavailable';
    await kubelet.notify(false, text);
    const failure = logs.lines.find((l) => l.level === 'error');
    expect(failure).toMatchObject({
      msg: 'Kubelet failed to register the plugin; the registration socket will be re-created',
      kubeletError: text,
      driverName: 'csi.loopsnap.dev',
      retrySeconds: 0.005,
    });
    expect(await metricValue(registry, 'loopsnap_kubelet_registration_registered')).toBe(0);
    expect(await metricValue(registry, 'loopsnap_kubelet_registration_failures_total')).toBe(1);

    await recreated;
    await removedAndCreated;
    watcher.close();
    expect((await stat(socketPath)).isSocket()).toBe(true);
    const retry = dial();
    expect((await retry.getInfo()).name).toBe('csi.loopsnap.dev');
    await retry.notify(true);
    expect(await metricValue(registry, 'loopsnap_kubelet_registration_registered')).toBe(1);
    expect(await metricValue(registry, 'loopsnap_kubelet_registration_failures_total')).toBe(1);
  });

  it('1-5 replaces a socket left by a killed predecessor', async () => {
    const predecessor = spawn(process.execPath, [
      '-e',
      `require('node:net').createServer().listen(${JSON.stringify(socketPath)}, () => process.kill(process.pid, 'SIGKILL'))`,
    ]);
    const signal = await new Promise((resolve) => predecessor.once('exit', (_code, sig) => resolve(sig)));
    expect(signal).toBe('SIGKILL');
    const stale = await stat(socketPath);
    expect(stale.isSocket()).toBe(true);
    await start();
    // Nothing listened on the stale socket: an answer means it was replaced.
    expect((await dial().getInfo()).type).toBe('CSIPlugin');
  });

  it('1-6 refuses to replace a file that is not a socket, and leaves it alone', async () => {
    await writeFile(socketPath, 'not a socket\n');
    await expect(start()).rejects.toThrow(`${socketPath} exists and is not a socket; refusing to replace it`);
    expect(await readFile(socketPath, 'utf8')).toBe('not a socket\n');
  });

  it('1-7 stop removes the socket (how the kubelet learns the plugin went away)', async () => {
    const r = await start();
    expect((await dial().getInfo()).type).toBe('CSIPlugin');
    await r.stop();
    running.splice(running.indexOf(r), 1);
    await expect(stat(socketPath)).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
