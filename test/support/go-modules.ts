// SPDX-License-Identifier: Apache-2.0
// Third-party definitions come from the Go module cache at test time, never from copies in this repository.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from './paths.js';

/** Pinned versions from hack/tools/versions.env, e.g. pinnedVersion('CSI_SPEC_VERSION'). */
export function pinnedVersion(key: string): string {
  const text = readFileSync(join(REPO_ROOT, 'hack', 'tools', 'versions.env'), 'utf8');
  const m = new RegExp(`^${key}=(\\S+)$`, 'm').exec(text);
  if (!m?.[1]) throw new Error(`${key} is not pinned in hack/tools/versions.env`);
  return m[1];
}

/** Module-cache directory of `<module>@<version>`, downloaded from the Go module proxy when missing. */
export function goModuleDir(moduleAtVersion: string): string {
  return execFileSync(join(REPO_ROOT, 'hack', 'go-module-dir.sh'), [moduleAtVersion], {
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 300_000,
  })
    .toString()
    .trim();
}

export function upstreamSnapshotCrdDir(): string {
  const v = pinnedVersion('EXTERNAL_SNAPSHOTTER_CLIENT_VERSION');
  return join(goModuleDir(`github.com/kubernetes-csi/external-snapshotter/client/v8@${v}`), 'config', 'crd');
}
