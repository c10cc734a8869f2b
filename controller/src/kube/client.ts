// SPDX-License-Identifier: Apache-2.0
// Typed writes for the reconcilers. Every object the API server returns for a write is fed back to the
// resource's informer (write-through overlay, see informer.ts), so the next read sees it.
import type { KubeRest } from '../../../common/src/kube-rest.js';
import { isNotFound } from '../../../common/src/kube-rest.js';
import type { Informer } from './informer.js';
import { apiVersionOf, type Resource, resourcePath } from './resources.js';
import type { KubeObject, ObjectMeta } from './types.js';

type MetaRef = Pick<ObjectMeta, 'name' | 'namespace' | 'resourceVersion'>;

export class KubeClient {
  private readonly informers = new Map<string, Informer<KubeObject>>();

  constructor(readonly rest: KubeRest) {}

  register(informer: Informer<KubeObject>): void {
    this.informers.set(informer.resource.plural, informer);
  }

  private remember<T extends KubeObject>(r: Resource, obj: T): T {
    this.informers.get(r.plural)?.remember(obj);
    return obj;
  }

  private path(r: Resource, meta: { name?: string; namespace?: string | undefined }, subresource?: string): string {
    return resourcePath(r, {
      ...(meta.namespace ? { namespace: meta.namespace } : {}),
      ...(meta.name ? { name: meta.name } : {}),
      ...(subresource ? { subresource } : {}),
    });
  }

  /** Live read (bypasses the cache); undefined when not found. */
  async get<T extends KubeObject>(r: Resource, name: string, namespace?: string): Promise<T | undefined> {
    try {
      return await this.rest.get<T>(this.path(r, { name, namespace }));
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  async create<T extends KubeObject>(r: Resource, obj: T): Promise<T> {
    const body = { apiVersion: apiVersionOf(r), kind: r.kind, ...obj };
    const created = await this.rest.create<T>(this.path(r, { namespace: obj.metadata.namespace }), body);
    return this.remember(r, created);
  }

  /**
   * JSON merge patch. With `precondition` the patch carries the object's resourceVersion, so the API server
   * rejects it (409) when the object changed since we read it: needed whenever we write a whole list
   * (finalizers) computed from what we read.
   */
  async patch<T extends KubeObject>(
    r: Resource,
    meta: MetaRef,
    body: Record<string, unknown>,
    opts: { subresource?: 'status'; precondition?: boolean } = {},
  ): Promise<T> {
    let b = body;
    if (opts.precondition) {
      const m = (body.metadata ?? {}) as Record<string, unknown>;
      b = { ...body, metadata: { ...m, resourceVersion: meta.resourceVersion } };
    }
    const patched = await this.rest.patch<T>(this.path(r, meta, opts.subresource), b, 'merge');
    return this.remember(r, patched);
  }

  async replaceStatus<T extends KubeObject>(r: Resource, obj: T): Promise<T> {
    const body = { apiVersion: apiVersionOf(r), kind: r.kind, ...obj };
    const updated = await this.rest.replace<T>(this.path(r, obj.metadata, 'status'), body);
    return this.remember(r, updated);
  }

  /** Deletes; false when already gone. With `uid` only that incarnation of the name is deleted. */
  delete(r: Resource, meta: { name: string; namespace?: string | undefined }, uid?: string): Promise<boolean> {
    return this.rest.delete(this.path(r, meta), uid ? { preconditionUid: uid } : undefined);
  }

  /** Sets the finalizer list to `current ± change` (optimistic: fails with 409 if the object moved on). */
  async setFinalizers<T extends KubeObject>(
    r: Resource,
    obj: T,
    add: readonly string[],
    remove: readonly string[] = [],
  ): Promise<T> {
    const current = obj.metadata.finalizers ?? [];
    const next = [...current.filter((f) => !remove.includes(f)), ...add.filter((f) => !current.includes(f))];
    return this.patch<T>(r, obj.metadata, { metadata: { finalizers: next } }, { precondition: true });
  }
}

export function hasFinalizer(obj: KubeObject, f: string): boolean {
  return obj.metadata.finalizers?.includes(f) ?? false;
}

export function annotation(obj: KubeObject, key: string): string | undefined {
  return obj.metadata.annotations?.[key];
}
