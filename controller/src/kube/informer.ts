// SPDX-License-Identifier: Apache-2.0
// A shared informer: client-node's ListWatch (list, then watch from the list's resourceVersion, relist on
// 410 Gone) plus what a controller needs around it:
// - restart after errors (API server down or restarted) with a capped backoff, so the cache resumes;
// - start() resolves only once a list succeeded (the cache is synced);
// - a write-through overlay: objects we just wrote are served from `get`/`list` until the watch delivers a
//   version at least as new, so a reconcile never acts on a stale copy of its own last write.
// Objects handed out are shared: callers must not mutate them.
import { type KubeConfig, type KubernetesObject, ListWatch, Watch } from '@kubernetes/client-node';
import type { KubeRest } from '../../../common/src/kube-rest.js';
import type { Logger } from '../../../common/src/log.js';
import { keyOf, type Resource, resourcePath } from './resources.js';
import type { KubeList, KubeObject } from './types.js';

export type ChangeType = 'add' | 'update' | 'delete';
export type ChangeHandler<T> = (obj: T, type: ChangeType) => void;

export interface InformerOptions {
  readonly namespace?: string;
  readonly labelSelector?: string;
  readonly log: Logger;
  readonly restartDelayMaxMs?: number;
}

function newerRv(a: string | undefined, b: string | undefined): boolean {
  if (a === undefined || b === undefined) return false;
  try {
    return BigInt(a) > BigInt(b);
  } catch {
    return false;
  }
}

export class Informer<T extends KubeObject> {
  // client-node types metadata with Date fields; ours are the raw JSON strings, hence the casts.
  private readonly lw: ListWatch<KubernetesObject>;
  private readonly overlay = new Map<string, T>();
  private readonly handlers: ChangeHandler<T>[] = [];
  private listed = false;
  private stopped = false;
  private restartTimer: NodeJS.Timeout | undefined;
  private failures = 0;
  private running = false;

  constructor(
    private readonly rest: KubeRest,
    kc: KubeConfig,
    readonly resource: Resource,
    private readonly opts: InformerOptions,
  ) {
    const path = resourcePath(resource, opts.namespace ? { namespace: opts.namespace } : {});
    const listFn = async (): Promise<KubeList<T>> => {
      const list = await this.rest.get<KubeList<T>>(
        path,
        opts.labelSelector ? { labelSelector: opts.labelSelector } : undefined,
      );
      this.listed = true;
      this.failures = 0;
      return { ...list, items: list.items ?? [] };
    };
    this.lw = new ListWatch<KubernetesObject>(path, new Watch(kc), listFn as never, false, opts.labelSelector);
    this.lw.on('add', (o) => this.emit(o as unknown as T, 'add'));
    this.lw.on('update', (o) => this.emit(o as unknown as T, 'update'));
    this.lw.on('delete', (o) => this.emit(o as unknown as T, 'delete'));
    this.lw.on('error', (err) => this.onError(err));
  }

  get hasSynced(): boolean {
    return this.listed;
  }

  onChange(handler: ChangeHandler<T>): void {
    this.handlers.push(handler);
  }

  /** Starts list+watch; resolves once the first list succeeded (retries until then or until stop()). */
  async start(): Promise<void> {
    this.stopped = false;
    if (!this.running) {
      this.running = true;
      await this.lw.start();
    }
    while (!this.listed && !this.stopped) await new Promise((r) => setTimeout(r, 100));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.running = false;
    if (this.restartTimer) clearTimeout(this.restartTimer);
    await this.lw.stop();
  }

  get(name: string, namespace?: string): T | undefined {
    const cached = this.lw.get(name, namespace) as T | undefined;
    const key = keyOf({ name, ...(namespace ? { namespace } : {}) });
    const mine = this.overlay.get(key);
    if (!mine) return cached;
    if (!cached || newerRv(mine.metadata.resourceVersion, cached.metadata.resourceVersion)) return mine;
    this.overlay.delete(key);
    return cached;
  }

  list(namespace?: string): T[] {
    const out: T[] = [];
    const seen = new Set<string>();
    for (const o of this.lw.list(namespace) as unknown as T[]) {
      const key = keyOf(o.metadata);
      seen.add(key);
      out.push(this.get(o.metadata.name, o.metadata.namespace) ?? o);
    }
    for (const [key, o] of this.overlay) {
      if (seen.has(key) || (namespace !== undefined && o.metadata.namespace !== namespace)) continue;
      out.push(o);
    }
    return out;
  }

  /** Records an object the API server returned for our own write (see the file comment). */
  remember(obj: T): void {
    const key = keyOf(obj.metadata);
    const cached = this.lw.get(obj.metadata.name, obj.metadata.namespace) as T | undefined;
    if (cached && !newerRv(obj.metadata.resourceVersion, cached.metadata.resourceVersion)) return;
    this.overlay.set(key, obj);
  }

  private emit(obj: T, type: ChangeType): void {
    const key = keyOf(obj.metadata);
    const mine = this.overlay.get(key);
    if (mine && (type === 'delete' || !newerRv(mine.metadata.resourceVersion, obj.metadata.resourceVersion))) {
      this.overlay.delete(key);
    }
    for (const h of this.handlers) {
      try {
        h(obj, type);
      } catch (err) {
        this.opts.log.error({ err, resource: this.resource.plural }, 'Informer handler failed');
      }
    }
  }

  private onError(err: unknown): void {
    if (this.stopped) return;
    this.failures++;
    const delay = Math.min(this.opts.restartDelayMaxMs ?? 5000, 100 * 2 ** Math.min(this.failures, 10));
    this.opts.log.warn(
      { err: err instanceof Error ? err.message : String(err), resource: this.resource.plural, retryInMs: delay },
      'Watch failed; restarting',
    );
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      if (this.stopped) return;
      this.lw.start().catch((e: unknown) => this.onError(e));
    }, delay);
  }
}
