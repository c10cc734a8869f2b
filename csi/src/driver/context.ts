// SPDX-License-Identifier: Apache-2.0
// What every driver service shares: options, persisted state, the storage backend, operation locks.
import type { Logger } from '../../../common/src/log.js';
import type { Topology } from '../grpc/csi-types.js';
import type { DriverState } from '../state/driver-state.js';
import type { VolumeBackend } from './backend.js';
import type { CapacityPolicy } from './capacity.js';
import { OperationLocks } from './locks.js';

/** Topology segment key of the node a volume lives on (volumes are node-local). */
export const TOPOLOGY_KEY = 'topology.loopsnap.dev/node';

export interface DriverOptions {
  readonly driverName: string;
  readonly vendorVersion: string;
  readonly nodeId: string;
  /** NodeGetInfo.max_volumes_per_node; 0 = not reported. */
  readonly maxVolumesPerNode: number;
  /** File system used when neither the capability nor the volume names one. */
  readonly defaultFsType: string;
  readonly capacity: CapacityPolicy;
}

export class DriverContext {
  readonly locks = new OperationLocks();

  constructor(
    readonly options: DriverOptions,
    readonly state: DriverState,
    readonly backend: VolumeBackend,
    readonly log: Logger,
  ) {}

  /** The accessible topology of every volume of this node. */
  topology(): Topology {
    return { segments: { [TOPOLOGY_KEY]: this.options.nodeId } };
  }

  /** True when `t` names this node (segments without our key do not constrain it). */
  isThisNode(t: Topology | null | undefined): boolean {
    const seg = t?.segments ?? {};
    const v = seg[TOPOLOGY_KEY];
    return v === undefined || v === this.options.nodeId;
  }
}
