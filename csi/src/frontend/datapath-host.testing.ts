// SPDX-License-Identifier: Apache-2.0
// A process that hosts a Datapath (FUSE server + engine volumes) and is driven over Node IPC. Tests and the
// benchmark run the data path here rather than in their own process: the kernel's I/O on the views must
// never wait on a thread that the test itself blocks, and crash tests kill -9 this process.
//
// Protocol: the parent sends { id, method, params }; the host answers { id, ok: true, result } or
// { id, ok: false, error: { code, message } }. Methods are listed in `methods` below (engine-backed ones in
// datapath-host-engine.testing.ts).
import { Registry } from 'prom-client';
import type { Logger } from '../../../common/src/log.js';
import { createLogger } from '../../../common/src/log.js';
import { Datapath } from './datapath.js';

export interface HostRequest {
  readonly id: number;
  readonly method: string;
  readonly params: Record<string, unknown>;
}

export type HostResponse =
  | { readonly id: number; readonly ok: true; readonly result: unknown }
  | { readonly id: number; readonly ok: false; readonly error: { code: string; message: string } };

export interface HostContext {
  datapath: Datapath | undefined;
  readonly log: Logger;
  readonly registry: Registry;
  /** Extra per-method state (engine volumes). */
  readonly state: Map<string, unknown>;
}

export type HostMethod = (ctx: HostContext, params: Record<string, unknown>) => Promise<unknown>;

function str(p: Record<string, unknown>, key: string): string {
  const v = p[key];
  if (typeof v !== 'string' || v === '') throw new Error(`${key} missing in request`);
  return v;
}

export function requireDatapath(ctx: HostContext): Datapath {
  if (!ctx.datapath) throw new Error('datapath not started');
  return ctx.datapath;
}

export const baseMethods: Record<string, HostMethod> = {
  ping: async () => ({ pid: process.pid }),
  start: async (ctx, p) => {
    if (ctx.datapath) throw new Error('datapath already started');
    ctx.datapath = await Datapath.start({
      stateDir: str(p, 'stateDir'),
      log: ctx.log,
      registry: ctx.registry,
      ...(typeof p.workers === 'number' ? { workers: p.workers } : {}),
      ...(typeof p.directIo === 'boolean' ? { directIo: p.directIo } : {}),
    });
    return { fuseMountpoint: ctx.datapath.fuseMountpoint, cleanup: ctx.datapath.cleanup, pid: process.pid };
  },
  exposeFile: async (ctx, p) =>
    requireDatapath(ctx).exposeFile(str(p, 'name'), str(p, 'path'), { readOnly: p.readOnly === true }),
  unexpose: async (ctx, p) => requireDatapath(ctx).unexpose(str(p, 'name'), { force: p.force === true }),
  attach: async (ctx, p) => requireDatapath(ctx).attach(str(p, 'name'), { readOnly: p.readOnly === true }),
  detach: async (ctx, p) => requireDatapath(ctx).detach(str(p, 'name')),
  views: async (ctx) => requireDatapath(ctx).views(),
  /** Prometheus text of the host's registry. */
  metrics: async (ctx) => ctx.registry.metrics(),
  openCount: async (ctx, p) => requireDatapath(ctx).fuse.openCount(str(p, 'name')),
  /** Holds the view's gate closed for holdMs (tests of FuseServer.quiesce). */
  quiesce: async (ctx, p) =>
    requireDatapath(ctx).fuse.quiesce(str(p, 'name'), async () => {
      await new Promise((r) => setTimeout(r, typeof p.holdMs === 'number' ? p.holdMs : 0));
      return Date.now();
    }),
  stop: async (ctx, p) => {
    await ctx.datapath?.stop({ force: p.force === true });
    ctx.datapath = undefined;
    return true;
  },
};

/** Serves IPC requests with `methods` until the parent disconnects; then stops the data path. */
export function serveHost(methods: Record<string, HostMethod>): void {
  const log = createLogger({ component: 'datapath-host', level: process.env.LOOPSNAP_LOG_LEVEL ?? 'warn' });
  const ctx: HostContext = { datapath: undefined, log, registry: new Registry(), state: new Map() };
  const send = (r: HostResponse): void => {
    process.send?.(r);
  };
  process.on('message', (msg: HostRequest) => {
    const fn = methods[msg.method];
    if (!fn) {
      send({ id: msg.id, ok: false, error: { code: 'UNKNOWN_METHOD', message: `unknown method ${msg.method}` } });
      return;
    }
    fn(ctx, msg.params ?? {}).then(
      (result) => send({ id: msg.id, ok: true, result: result ?? null }),
      (err: unknown) => {
        const e = err as { code?: unknown; message?: unknown };
        send({
          id: msg.id,
          ok: false,
          error: { code: typeof e.code === 'string' ? e.code : 'ERROR', message: String(e.message ?? err) },
        });
      },
    );
  });
  process.on('disconnect', () => {
    void (async () => {
      await ctx.datapath?.stop({ force: true }).catch((err: unknown) => log.error({ err }, 'Failed to stop'));
      process.exit(0);
    })();
  });
  process.send?.({ id: 0, ok: true, result: { ready: true, pid: process.pid } } satisfies HostResponse);
}
