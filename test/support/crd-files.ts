// SPDX-License-Identifier: Apache-2.0
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import type { CrdLike } from './crd-diff.js';
import { REPO_ROOT } from './paths.js';

export const OUR_CRD_DIR = join(REPO_ROOT, 'crds');

export const SNAPSHOT_CRD_NAMES = [
  'volumesnapshotclasses.snapshot.storage.k8s.io',
  'volumesnapshots.snapshot.storage.k8s.io',
  'volumesnapshotcontents.snapshot.storage.k8s.io',
] as const;

/** Every CustomResourceDefinition in the YAML files of a directory (recursively), by metadata.name. */
export function loadCrds(dir: string): Map<string, CrdLike> {
  const out = new Map<string, CrdLike>();
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (!entry.isFile() || !/\.ya?ml$/.test(entry.name)) continue;
    const text = readFileSync(join(entry.parentPath, entry.name), 'utf8');
    for (const doc of parseAllDocuments(text)) {
      const obj = doc.toJS() as (CrdLike & { kind?: string }) | null;
      if (obj?.kind === 'CustomResourceDefinition' && obj.metadata?.name) out.set(obj.metadata.name, obj);
    }
  }
  return out;
}
