// SPDX-License-Identifier: Apache-2.0
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { csiService, loadCsiPackage } from './csi-proto.js';

beforeAll(() => {
  execFileSync(join(fileURLToPath(new URL('../../hack', import.meta.url)), 'protos.sh'), { stdio: 'inherit' });
});

describe('csi.proto loading', () => {
  it('exposes the four services we implement, with their RPCs', () => {
    expect(Object.keys(csiService('Identity').service)).toEqual(['GetPluginInfo', 'GetPluginCapabilities', 'Probe']);
    expect(Object.keys(csiService('SnapshotMetadata').service)).toEqual(['GetMetadataAllocated', 'GetMetadataDelta']);
    expect(Object.keys(csiService('Node').service)).toContain('NodeStageVolume');
    expect(Object.keys(csiService('Controller').service)).toContain('CreateSnapshot');
    expect(csiService('SnapshotMetadata').service.GetMetadataDelta?.responseStream).toBe(true);
  });

  it('fails with a clear error for a missing proto file', () => {
    expect(() => loadCsiPackage('/nonexistent/csi.proto')).toThrow(/csi.proto not found at \/nonexistent/);
  });
});
