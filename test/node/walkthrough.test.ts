// SPDX-License-Identifier: Apache-2.0
// The README's walkthrough ("Snapshots with kubectl"), step by step with the files in examples/ as they are,
// on the real node with the chart `npm start` installs: a pod writes, a snapshot, a change, a restore into a
// second pod, then a VolumeRestore in place and the first pod again.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { readFileSync } from 'node:fs';
import { REPO_ROOT } from '../support/paths.js';
import { realNodeUsable, useRealCluster } from '../support/real-node.js';
import { waitFor } from '../support/wait.js';

const EXAMPLES = join(REPO_ROOT, 'examples');

describe('the README walkthrough with real pods (examples/)', () => {
  if (!realNodeUsable()) return;
  const c = useRealCluster('walk');
  const k = (...args: string[]): string => c.kubectl(['-n', c.namespace, ...args]);
  const apply = (...files: string[]): string => k('apply', ...files.flatMap((f) => ['-f', join(EXAMPLES, f)]));

  it('uses the test image this machine builds (local target)', () => {
    const image = (f: string): string =>
      (parse(readFileSync(join(EXAMPLES, f), 'utf8')) as { spec: { containers: Array<{ image: string }> } }).spec
        .containers[0]!.image;
    expect(image('restore-pod.yaml')).toBe(image('pod.yaml'));
    if (c.target === 'local') expect(image('pod.yaml')).toBe(c.workloadImage);
  });

  it('pvc + pod, snapshot, change, restore into a second pod, restore in place', async () => {
    apply('pvc.yaml', 'pod.yaml');
    k('wait', '--for=condition=Ready', 'pod/writer', '--timeout=180s');
    const first = k('exec', 'writer', '--', 'cat', '/data/hello');
    expect(first).toMatch(/\d{2}:\d{2}:\d{2}/);

    apply('snapshot.yaml');
    k('wait', '--for=jsonpath={.status.readyToUse}=true', 'volumesnapshot/data-snap', '--timeout=120s');
    k('exec', 'writer', '--', 'sh', '-c', 'echo changed > /data/hello && sync');

    apply('restore-pvc.yaml', 'restore-pod.yaml');
    k('wait', '--for=condition=Ready', 'pod/reader', '--timeout=180s');
    expect(k('exec', 'reader', '--', 'cat', '/data/hello')).toBe(first);
    expect(k('exec', 'writer', '--', 'cat', '/data/hello')).toBe('changed\n');

    // In place: the claim's pod goes first (a mounted file system is not restored under it).
    k('delete', 'pod', 'writer', '--wait=true', '--timeout=120s');
    apply('volumerestore.yaml');
    await waitFor(
      'VolumeRestore data-restore Completed',
      () => {
        const phase = k('get', 'volumerestore', 'data-restore', '-o', 'jsonpath={.status.phase}');
        if (phase === 'Failed') throw new Error(k('get', 'volumerestore', 'data-restore', '-o', 'yaml'));
        return phase === 'Completed';
      },
      { timeoutMs: 300_000, intervalMs: 500 },
    );
    apply('pod.yaml');
    k('wait', '--for=condition=Ready', 'pod/writer', '--timeout=180s');
    expect(k('exec', 'writer', '--', 'cat', '/data/hello')).toBe(first);
  });
});
