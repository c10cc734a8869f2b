// SPDX-License-Identifier: Apache-2.0
// An engine volume for the datapath benchmark, exposed as a live view of an in-process Datapath.
import { livePort } from '../csi/src/frontend/engine-ports.js';
import type { Datapath } from '../csi/src/frontend/datapath.js';
import { VolumeStore } from '../csi/src/store/volume-store.js';

export interface BenchVolume {
  snapshot(): Promise<void>;
  close(): Promise<void>;
}

export async function createBenchVolume(
  datapath: Datapath,
  stateDir: string,
  volumeId: string,
  sizeBytes: number,
): Promise<BenchVolume> {
  const store = new VolumeStore(stateDir);
  const volume = await store.create(volumeId, { sizeBytes, shared: true });
  datapath.exposeLive(volumeId, volumeId, livePort(volume, `${store.volumeDir(volumeId)}/clone.img`));
  return {
    snapshot: async () => {
      await datapath.cut(() => volume.createSnapshot({ method: 'save-volume' }));
    },
    close: async () => {
      await datapath.unexpose(volumeId, { force: true });
      await volume.close();
    },
  };
}
