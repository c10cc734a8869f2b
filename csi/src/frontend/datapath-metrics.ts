// SPDX-License-Identifier: Apache-2.0
// Prometheus metrics of the data path, registered on an injected prom-client Registry. Worker counters live
// in shared memory (view-protocol.ts COUNTER_*) and are read at scrape time.
import { Counter, Gauge, type Registry } from 'prom-client';
import {
  COUNTER_FAST_READ,
  COUNTER_FAST_WRITE,
  COUNTER_HANDOFF_DISCARD,
  COUNTER_HANDOFF_FLUSH,
  COUNTER_HANDOFF_READ,
  COUNTER_HANDOFF_WRITE,
  COUNTER_MALFORMED,
  COUNTER_REQUESTS,
} from './view-protocol.js';

export interface DatapathMetricSources {
  /** One counter array per worker slot. */
  workerCounters(): readonly Float64Array[];
  /** Handed-off requests not yet answered. */
  handoffsInFlight(): number;
  /** Exposed views. */
  views(): number;
}

const SERIES: ReadonlyArray<{ path: 'fast' | 'handoff'; op: string; slot: number }> = [
  { path: 'fast', op: 'read', slot: COUNTER_FAST_READ },
  { path: 'fast', op: 'write', slot: COUNTER_FAST_WRITE },
  { path: 'handoff', op: 'read', slot: COUNTER_HANDOFF_READ },
  { path: 'handoff', op: 'write', slot: COUNTER_HANDOFF_WRITE },
  { path: 'handoff', op: 'discard', slot: COUNTER_HANDOFF_DISCARD },
  { path: 'handoff', op: 'flush', slot: COUNTER_HANDOFF_FLUSH },
];

function sum(arrays: readonly Float64Array[], slot: number): number {
  let n = 0;
  for (const a of arrays) n += a[slot] ?? 0;
  return n;
}

export class DatapathMetrics {
  /** Data requests served by a worker alone (fast) or by the engine on the main thread (handoff). */
  readonly dataRequests: Counter<'path' | 'op'>;
  /** Every FUSE request read from /dev/fuse, control operations included. */
  readonly requests: Counter;
  /** Requests rejected as malformed (answered with an error). */
  readonly malformed: Counter;
  /** Handed-off requests that failed (answered with an errno), by operation. */
  readonly handoffErrors: Counter<'op'>;
  /** Handed-off requests in flight. */
  readonly handoffsInFlight: Gauge;
  /** Views exposed on the FUSE mount. */
  readonly views: Gauge;

  constructor(registry: Registry, sources: DatapathMetricSources) {
    this.dataRequests = new Counter({
      name: 'loopsnap_datapath_data_requests_total',
      help: 'FUSE data requests, by path (fast: served by a worker alone; handoff: by the engine) and operation',
      labelNames: ['path', 'op'],
      registers: [registry],
      collect() {
        const c = sources.workerCounters();
        this.reset();
        for (const s of SERIES) this.inc({ path: s.path, op: s.op }, sum(c, s.slot));
      },
    });
    this.requests = new Counter({
      name: 'loopsnap_datapath_requests_total',
      help: 'FUSE requests read from /dev/fuse, control operations included',
      registers: [registry],
      collect() {
        this.reset();
        this.inc(sum(sources.workerCounters(), COUNTER_REQUESTS));
      },
    });
    this.malformed = new Counter({
      name: 'loopsnap_datapath_malformed_requests_total',
      help: 'FUSE requests rejected as malformed',
      registers: [registry],
      collect() {
        this.reset();
        this.inc(sum(sources.workerCounters(), COUNTER_MALFORMED));
      },
    });
    this.handoffErrors = new Counter({
      name: 'loopsnap_datapath_handoff_errors_total',
      help: 'Handed-off FUSE requests answered with an error, by operation',
      labelNames: ['op'],
      registers: [registry],
    });
    this.handoffsInFlight = new Gauge({
      name: 'loopsnap_datapath_handoffs_in_flight',
      help: 'Handed-off FUSE requests not yet answered',
      registers: [registry],
      collect() {
        this.set(sources.handoffsInFlight());
      },
    });
    this.views = new Gauge({
      name: 'loopsnap_datapath_views',
      help: 'Views exposed on the FUSE mount',
      registers: [registry],
      collect() {
        this.set(sources.views());
      },
    });
  }
}
