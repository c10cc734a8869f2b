// SPDX-License-Identifier: Apache-2.0
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { CsiMetrics, type VolumeGaugeSample } from './metrics.js';

function sample(volumeId: string, cowCopiesTotal: number): VolumeGaugeSample {
  return {
    volumeId,
    cowCopiesTotal,
    savePoolUsedBytes: 0,
    savePoolSizeBytes: 0,
    snapshots: 0,
    invalidSnapshots: 0,
    sizeBytes: 1,
    writesRefusedTotal: 0,
    snapshotsSacrificedTotal: 0,
    outOfSpace: false,
  };
}

async function copies(registry: Registry): Promise<number> {
  const m = (await registry.getMetricsAsJSON()).find((x) => x.name === 'loopsnap_cow_copies_total');
  expect(m?.type).toBe('counter');
  return m?.values[0]?.value ?? 0;
}

describe('loopsnap_cow_copies_total', () => {
  it('11-1 only ever grows: volume deletion and reopen do not make it go down', async () => {
    const registry = new Registry();
    let volumes = [sample('a', 5), sample('b', 3)];
    new CsiMetrics(registry, { volumes: () => volumes, jobs: () => [] });
    expect(await copies(registry)).toBe(8);
    volumes = [sample('a', 7), sample('b', 3)];
    expect(await copies(registry)).toBe(10);
    volumes = [sample('a', 7)]; // b deleted
    expect(await copies(registry)).toBe(10);
    volumes = [sample('a', 2)]; // a reopened: its engine count restarted at 0
    expect(await copies(registry)).toBe(12);
    volumes = [sample('a', 2), sample('b', 1)]; // a new b
    expect(await copies(registry)).toBe(13);
  });
});
