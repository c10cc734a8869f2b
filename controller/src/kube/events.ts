// SPDX-License-Identifier: Apache-2.0
// Records core/v1 Events on the objects we reconcile (what `kubectl describe` shows). Repeats of one
// (object, type, reason, message) are folded into one Event whose `count` grows, as client-go's correlator
// does; a repeat within `minIntervalMs` only bumps the local count, which goes out with the next write.
// Recording never fails a reconcile: API errors are logged.
import { randomBytes } from 'node:crypto';
import type { KubeRest } from '../../../common/src/kube-rest.js';
import type { Logger } from '../../../common/src/log.js';
import { apiVersionOf, type Resource, Resources, resourcePath } from './resources.js';
import type { KubeObject } from './types.js';

export type EventType = 'Normal' | 'Warning';

export interface EventSink {
  record(r: Resource, obj: KubeObject, type: EventType, reason: string, message: string): void;
}

interface Seen {
  name: string;
  namespace: string;
  count: number;
  written: number;
  lastWriteMs: number;
  firstTimestamp: string;
}

export class EventRecorder implements EventSink {
  private readonly seen = new Map<string, Seen>();
  private readonly inflight = new Set<Promise<unknown>>();

  constructor(
    private readonly rest: KubeRest,
    private readonly component: string,
    private readonly log: Logger,
    private readonly opts: { defaultNamespace: string; minIntervalMs?: number; maxEntries?: number },
  ) {}

  record(r: Resource, obj: KubeObject, type: EventType, reason: string, message: string): void {
    const uid = obj.metadata.uid ?? '';
    const key = `${uid}\u0000${type}\u0000${reason}\u0000${message}`;
    const now = Date.now();
    const namespace = obj.metadata.namespace ?? this.opts.defaultNamespace;
    const prev = this.seen.get(key);
    if (prev) {
      prev.count++;
      if (now - prev.lastWriteMs < (this.opts.minIntervalMs ?? 2000)) return;
      prev.lastWriteMs = now;
      const count = prev.count;
      this.track(
        this.rest
          .patch(resourcePath(Resources.Event, { namespace: prev.namespace, name: prev.name }), {
            count,
            lastTimestamp: new Date(now).toISOString().replace(/\.\d{3}Z$/, 'Z'),
          })
          .then(() => {
            prev.written = count;
          }),
        reason,
      );
      return;
    }
    if (this.seen.size >= (this.opts.maxEntries ?? 4096)) {
      const oldest = this.seen.keys().next().value;
      if (oldest !== undefined) this.seen.delete(oldest);
    }
    const ts = new Date(now).toISOString().replace(/\.\d{3}Z$/, 'Z');
    const name = `${obj.metadata.name}.${now.toString(16)}${randomBytes(2).toString('hex')}`;
    const entry: Seen = { name, namespace, count: 1, written: 0, lastWriteMs: now, firstTimestamp: ts };
    this.seen.set(key, entry);
    const body = {
      apiVersion: 'v1',
      kind: 'Event',
      metadata: { name, namespace },
      involvedObject: {
        apiVersion: apiVersionOf(r),
        kind: r.kind,
        name: obj.metadata.name,
        ...(obj.metadata.namespace ? { namespace: obj.metadata.namespace } : {}),
        ...(uid ? { uid } : {}),
        ...(obj.metadata.resourceVersion ? { resourceVersion: obj.metadata.resourceVersion } : {}),
      },
      reason,
      message: message.slice(0, 1024),
      type,
      count: 1,
      firstTimestamp: ts,
      lastTimestamp: ts,
      source: { component: this.component },
      reportingComponent: this.component,
      reportingInstance: this.component,
    };
    this.track(
      this.rest.create(resourcePath(Resources.Event, { namespace }), body).then(() => {
        entry.written = 1;
      }),
      reason,
    );
  }

  /** Resolves when every event write issued so far has finished. */
  async flush(): Promise<void> {
    while (this.inflight.size > 0) await Promise.all([...this.inflight]);
  }

  private track(p: Promise<unknown>, reason: string): void {
    const q = p.catch((err: unknown) =>
      this.log.warn({ err: err instanceof Error ? err.message : String(err), reason }, 'Failed to record Event'),
    );
    this.inflight.add(q);
    void q.finally(() => this.inflight.delete(q));
  }
}
