// SPDX-License-Identifier: Apache-2.0
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { DatapathMetrics } from './datapath-metrics.js';
import { COUNTER_FAST_WRITE, COUNTER_HANDOFF_WRITE, COUNTER_REQUESTS, COUNTER_SLOTS } from './view-protocol.js';

describe('DatapathMetrics', () => {
  it('1-1 sums the workers shared counters at scrape time, on the injected registry only', async () => {
    const registry = new Registry();
    const w0 = new Float64Array(COUNTER_SLOTS);
    const w1 = new Float64Array(COUNTER_SLOTS);
    const m = new DatapathMetrics(registry, {
      workerCounters: () => [w0, w1],
      handoffsInFlight: () => 3,
      views: () => 2,
    });
    w0[COUNTER_FAST_WRITE] = 5;
    w1[COUNTER_FAST_WRITE] = 7;
    w1[COUNTER_HANDOFF_WRITE] = 2;
    w0[COUNTER_REQUESTS] = 20;
    m.handoffErrors.inc({ op: 'write' });
    let text = await registry.metrics();
    expect(text).toContain('loopsnap_datapath_data_requests_total{path="fast",op="write"} 12');
    expect(text).toContain('loopsnap_datapath_data_requests_total{path="handoff",op="write"} 2');
    expect(text).toContain('loopsnap_datapath_requests_total 20');
    expect(text).toContain('loopsnap_datapath_handoffs_in_flight 3');
    expect(text).toContain('loopsnap_datapath_views 2');
    expect(text).toContain('loopsnap_datapath_handoff_errors_total{op="write"} 1');
    w0[COUNTER_FAST_WRITE] = 6;
    text = await registry.metrics();
    expect(text).toContain('loopsnap_datapath_data_requests_total{path="fast",op="write"} 13');
  });
});
