// SPDX-License-Identifier: Apache-2.0
// csi.v1.Node: request checks and message mapping around the driver's node service. Served on the unix
// socket only (kubelet, csi-sanity).
import type * as grpc from '@grpc/grpc-js';
import type { DriverContext } from '../driver/context.js';
import type { NodeService } from '../driver/node-service.js';
import { CsiError } from '../errors.js';
import type {
  NodeExpandVolumeRequest,
  NodeGetVolumeStatsRequest,
  NodePublishVolumeRequest,
  NodeStageVolumeRequest,
  NodeUnpublishVolumeRequest,
  NodeUnstageVolumeRequest,
} from './csi-types.js';
import { nonNegativeInt64Exact } from '../driver/capacity.js';
import { type HandlerDeps, unary } from './handler.js';
import { requireCapability, requirePath, requireString } from './validate.js';

export const NODE_CAPABILITIES = [
  'STAGE_UNSTAGE_VOLUME',
  'GET_VOLUME_STATS',
  'EXPAND_VOLUME',
  'VOLUME_CONDITION',
  'SINGLE_NODE_MULTI_WRITER',
] as const;

export interface NodeDeps extends HandlerDeps {
  readonly driver: DriverContext;
  readonly node: NodeService;
}

export function nodeHandlers(deps: NodeDeps): grpc.UntypedServiceImplementation {
  const { driver, node } = deps;
  return {
    NodeStageVolume: unary(deps, 'NodeStageVolume', async (req: NodeStageVolumeRequest) => {
      const volumeId = requireString('volume_id', req.volume_id);
      const stagingPath = requirePath('staging_target_path', req.staging_target_path);
      const capability = requireCapability('volume_capability', req.volume_capability);
      await node.stage({ volumeId, stagingPath, capability });
      return {};
    }),

    NodeUnstageVolume: unary(deps, 'NodeUnstageVolume', async (req: NodeUnstageVolumeRequest) => {
      const volumeId = requireString('volume_id', req.volume_id);
      const stagingPath = requirePath('staging_target_path', req.staging_target_path);
      await node.unstage(volumeId, stagingPath);
      return {};
    }),

    NodePublishVolume: unary(deps, 'NodePublishVolume', async (req: NodePublishVolumeRequest) => {
      const volumeId = requireString('volume_id', req.volume_id);
      const targetPath = requirePath('target_path', req.target_path);
      const capability = requireCapability('volume_capability', req.volume_capability);
      if (!req.staging_target_path) {
        throw new CsiError(
          'CSI_ERR_NOT_STAGED',
          'staging_target_path not set: this plugin has STAGE_UNSTAGE_VOLUME, call NodeStageVolume first',
        );
      }
      const stagingPath = requirePath('staging_target_path', req.staging_target_path);
      await node.publish({ volumeId, targetPath, stagingPath, capability, readOnly: req.readonly === true });
      return {};
    }),

    NodeUnpublishVolume: unary(deps, 'NodeUnpublishVolume', async (req: NodeUnpublishVolumeRequest) => {
      const volumeId = requireString('volume_id', req.volume_id);
      const targetPath = requirePath('target_path', req.target_path);
      await node.unpublish(volumeId, targetPath);
      return {};
    }),

    NodeGetVolumeStats: unary(deps, 'NodeGetVolumeStats', async (req: NodeGetVolumeStatsRequest) => {
      const volumeId = requireString('volume_id', req.volume_id);
      const volumePath = requireString('volume_path', req.volume_path);
      const s = await node.stats(volumeId, volumePath);
      const usage: object[] = [
        {
          unit: 'BYTES',
          total: String(s.bytes.total),
          used: String(s.bytes.used),
          available: String(s.bytes.available),
        },
      ];
      if (s.inodes) {
        usage.push({
          unit: 'INODES',
          total: String(s.inodes.total),
          used: String(s.inodes.used),
          available: String(s.inodes.available),
        });
      }
      return { usage, volume_condition: s.condition };
    }),

    NodeExpandVolume: unary(deps, 'NodeExpandVolume', async (req: NodeExpandVolumeRequest) => {
      const volumeId = requireString('volume_id', req.volume_id);
      const volumePath = requireString('volume_path', req.volume_path);
      const range = req.capacity_range;
      const requiredBytes = nonNegativeInt64Exact('capacity_range.required_bytes', range?.required_bytes);
      const r = await node.expand({
        volumeId,
        volumePath,
        stagingPath: req.staging_target_path || undefined,
        requiredBytes,
        capability: req.volume_capability ? requireCapability('volume_capability', req.volume_capability) : undefined,
      });
      return { capacity_bytes: String(r.capacityBytes) };
    }),

    NodeGetCapabilities: unary(deps, 'NodeGetCapabilities', async () => ({
      capabilities: NODE_CAPABILITIES.map((type) => ({ rpc: { type } })),
    })),

    NodeGetInfo: unary(deps, 'NodeGetInfo', async () => ({
      node_id: driver.options.nodeId,
      max_volumes_per_node: String(driver.options.maxVolumesPerNode),
      accessible_topology: driver.topology(),
    })),
  };
}
