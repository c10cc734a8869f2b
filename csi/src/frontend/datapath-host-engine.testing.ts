// SPDX-License-Identifier: Apache-2.0
// Engine-backed methods of the data-path host: volumes of a VolumeStore under the data path's state dir,
// their live views, snapshots (cut with fsfreeze when a mount point is given) and snapshot views.
import type { SnapshotMethod, SnapshotVolume } from '../engine/volume.js';
import { VolumeStore } from '../store/volume-store.js';
import { type HostContext, type HostMethod, requireDatapath } from './datapath-host.testing.js';
import { livePort, rwPort, snapshotPort } from './engine-ports.js';

interface EngineState {
  readonly store: VolumeStore;
  readonly volumes: Map<string, SnapshotVolume>;
}

function engine(ctx: HostContext): EngineState {
  let s = ctx.state.get('engine') as EngineState | undefined;
  if (!s) {
    s = { store: new VolumeStore(requireDatapath(ctx).stateDir), volumes: new Map() };
    ctx.state.set('engine', s);
  }
  return s;
}

function str(p: Record<string, unknown>, key: string): string {
  const v = p[key];
  if (typeof v !== 'string' || v === '') throw new Error(`${key} missing in request`);
  return v;
}

function num(p: Record<string, unknown>, key: string): number {
  const v = p[key];
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`${key} missing in request`);
  return v;
}

function volumeOf(ctx: HostContext, p: Record<string, unknown>): SnapshotVolume {
  const id = str(p, 'volumeId');
  const v = engine(ctx).volumes.get(id);
  if (!v) throw new Error(`volume ${id} is not open`);
  return v;
}

/** View names: the volume id for the live view, `<volumeId>@snap-<id>` for a snapshot. */
export function snapshotViewName(volumeId: string, snapshotId: number): string {
  return `${volumeId}@snap-${snapshotId}`;
}

/** `<volumeId>@rw-<id>` for an RW snapshot. */
export function rwViewName(volumeId: string, rwId: number): string {
  return `${volumeId}@rw-${rwId}`;
}

export const engineMethods: Record<string, HostMethod> = {
  createVolume: async (ctx, p) => {
    const e = engine(ctx);
    const id = str(p, 'volumeId');
    const v = await e.store.create(id, {
      sizeBytes: num(p, 'sizeBytes'),
      shared: true,
      ...(typeof p.granuleBlocks === 'number' ? { granuleBlocks: p.granuleBlocks } : {}),
    });
    e.volumes.set(id, v);
    return { volumeDir: e.store.volumeDir(id) };
  },
  openVolume: async (ctx, p) => {
    const e = engine(ctx);
    const id = str(p, 'volumeId');
    e.store.recover();
    e.volumes.set(id, await e.store.openVolume(id, { shared: true }));
    return { volumeDir: e.store.volumeDir(id) };
  },
  closeVolume: async (ctx, p) => {
    const id = str(p, 'volumeId');
    await volumeOf(ctx, p).close();
    engine(ctx).volumes.delete(id);
  },
  exposeLive: async (ctx, p) => {
    const id = str(p, 'volumeId');
    const v = volumeOf(ctx, p);
    const clonePath = `${engine(ctx).store.volumeDir(id)}/clone.img`;
    return requireDatapath(ctx).exposeLive(id, id, livePort(v, clonePath));
  },
  snapshot: async (ctx, p) => {
    const v = volumeOf(ctx, p);
    const method = (typeof p.method === 'string' ? p.method : 'save-volume') as SnapshotMethod;
    const tag = typeof p.tag === 'string' ? p.tag : '';
    const mountpoint = typeof p.mountpoint === 'string' ? p.mountpoint : undefined;
    return requireDatapath(ctx).cut(() => v.createSnapshot({ method, tag }), mountpoint ? { mountpoint } : {});
  },
  exposeSnapshot: async (ctx, p) => {
    const id = str(p, 'volumeId');
    const snapId = num(p, 'snapshotId');
    const v = volumeOf(ctx, p);
    return requireDatapath(ctx).exposeSnapshot(snapshotViewName(id, snapId), id, snapshotPort(v, snapId));
  },
  deleteSnapshot: async (ctx, p) => {
    await volumeOf(ctx, p).deleteSnapshot(num(p, 'snapshotId'));
  },
  createRw: async (ctx, p) => volumeOf(ctx, p).createRw(num(p, 'snapshotId'), { tag: 'host' }),
  exposeRw: async (ctx, p) => {
    const id = str(p, 'volumeId');
    const rwId = num(p, 'rwId');
    return requireDatapath(ctx).exposeRw(rwViewName(id, rwId), id, rwPort(volumeOf(ctx, p), rwId));
  },
  /** Starts an in-place restore from a snapshot and, unless `steps` is 0, runs its copier in the background. */
  startRestore: async (ctx, p) => {
    const v = volumeOf(ctx, p);
    const st = await v.startRestore({ source: { kind: 'snapshot', id: num(p, 'snapshotId') } });
    if (p.background !== false) {
      void (async () => {
        while (v.restoreStatus() !== null && !v.isClosed) {
          await v.restoreStep(typeof p.stepBlocks === 'number' ? p.stepBlocks : 64);
          if (typeof p.pauseMs === 'number') await new Promise((r) => setTimeout(r, p.pauseMs as number));
        }
      })().catch((err: unknown) => ctx.log.error({ err }, 'Restore copier failed'));
    }
    return st;
  },
  restoreStatus: async (ctx, p) => volumeOf(ctx, p).restoreStatus(),
  volumeStats: async (ctx, p) => volumeOf(ctx, p).stats(),
  /** Bytes of the live view that may hold data (meta bit map valid), i.e. what OP-18 would copy. */
  allocatedBytes: async (ctx, p) =>
    volumeOf(ctx, p)
      .allocatedExtents('live')
      .reduce((n, x) => n + x.length, 0),
};
