// SPDX-License-Identifier: Apache-2.0
// csi.v1.Controller: request checks and message mapping around the driver's volume and snapshot services.
// The node plugin is its own controller (volumes are node-local): this service is served on the unix socket
// (csi-sanity, upstream sidecars) and on the TCP mutual-TLS endpoint that our controller dials.
import type * as grpc from '@grpc/grpc-js';
import { capabilitiesProblem } from '../driver/capabilities.js';
import type { DriverContext } from '../driver/context.js';
import { paginate } from '../driver/pagination.js';
import { parseVolumeParameters } from '../driver/parameters.js';
import type { SnapshotService } from '../driver/snapshot-service.js';
import type { VolumeService } from '../driver/volume-service.js';
import { CsiError } from '../errors.js';
import { isVolumeId } from '../state/ids.js';
import type { ContentSource, VolumeRecord } from '../state/records.js';
import { toCsiSnapshot, toCsiVolume } from './convert.js';
import type {
  ControllerExpandVolumeRequest,
  CreateSnapshotRequest,
  CreateVolumeRequest,
  DeleteVolumeRequest,
  GetCapacityRequest,
  ListRequest,
  ListSnapshotsRequest,
  SnapshotIdRequest,
  ValidateVolumeCapabilitiesRequest,
  VolumeContentSource,
  VolumeIdRequest,
} from './csi-types.js';
import { type HandlerDeps, unary } from './handler.js';
import { requireCapabilities, requireCapability, requireName, requireString, stringMap } from './validate.js';

export const CONTROLLER_CAPABILITIES = [
  'CREATE_DELETE_VOLUME',
  'CREATE_DELETE_SNAPSHOT',
  'LIST_SNAPSHOTS',
  'GET_SNAPSHOT',
  'CLONE_VOLUME',
  'EXPAND_VOLUME',
  'GET_CAPACITY',
  'LIST_VOLUMES',
  'GET_VOLUME',
  'VOLUME_CONDITION',
  'SINGLE_NODE_MULTI_WRITER',
] as const;

export interface ControllerDeps extends HandlerDeps {
  readonly driver: DriverContext;
  readonly volumes: VolumeService;
  readonly snapshots: SnapshotService;
}

function contentSourceOf(src: VolumeContentSource | null | undefined): ContentSource | null {
  if (!src) return null;
  if (src.snapshot) {
    return {
      kind: 'snapshot',
      snapshotId: requireString('volume_content_source.snapshot.snapshot_id', src.snapshot.snapshot_id),
    };
  }
  if (src.volume) {
    return { kind: 'volume', volumeId: requireString('volume_content_source.volume.volume_id', src.volume.volume_id) };
  }
  throw new CsiError('CSI_ERR_INVALID_FIELD', 'volume_content_source has neither snapshot nor volume');
}

function unimplemented(method: string, why: string): () => Promise<never> {
  return async () => {
    throw new CsiError('CSI_ERR_UNIMPLEMENTED', `${method} is not supported: ${why}`);
  };
}

export function controllerHandlers(deps: ControllerDeps): grpc.UntypedServiceImplementation {
  const { driver, volumes, snapshots } = deps;
  // published_node_ids stays empty: without LIST_VOLUMES_PUBLISHED_NODES the CO must not read it, and there
  // is no controller publish step to report.
  const volumeStatus = async (rec: VolumeRecord): Promise<object> => ({
    published_node_ids: [],
    volume_condition: await driver.backend.condition(rec.volumeId),
  });
  return {
    CreateVolume: unary(deps, 'CreateVolume', async (req: CreateVolumeRequest) => {
      const name = requireName('name', req.name);
      const capabilities = requireCapabilities('volume_capabilities', req.volume_capabilities);
      if (Object.keys(req.mutable_parameters ?? {}).length > 0) {
        throw new CsiError(
          'CSI_ERR_INVALID_FIELD',
          'mutable_parameters are not supported (no MODIFY_VOLUME capability)',
        );
      }
      // No cancellation: a copy that outlives the caller's deadline completes, and the CO's retry (same
      // name) gets ABORTED while it runs and the finished volume afterwards.
      const rec = await volumes.create({
        name,
        capacityRange: req.capacity_range ?? null,
        capabilities,
        parameters: stringMap(req.parameters),
        contentSource: contentSourceOf(req.volume_content_source),
        accessibility: req.accessibility_requirements ?? null,
      });
      return { volume: toCsiVolume(rec, driver.topology()) };
    }),

    DeleteVolume: unary(deps, 'DeleteVolume', async (req: DeleteVolumeRequest) => {
      await volumes.delete(requireString('volume_id', req.volume_id));
      return {};
    }),

    ControllerPublishVolume: unary(
      deps,
      'ControllerPublishVolume',
      unimplemented('ControllerPublishVolume', 'volumes are node-local and need no attach step'),
    ),
    ControllerUnpublishVolume: unary(
      deps,
      'ControllerUnpublishVolume',
      unimplemented('ControllerUnpublishVolume', 'volumes are node-local and need no attach step'),
    ),
    ControllerModifyVolume: unary(
      deps,
      'ControllerModifyVolume',
      unimplemented('ControllerModifyVolume', 'volumes have no mutable parameters'),
    ),

    ValidateVolumeCapabilities: unary(
      deps,
      'ValidateVolumeCapabilities',
      async (req: ValidateVolumeCapabilitiesRequest) => {
        const volumeId = requireString('volume_id', req.volume_id);
        const caps = requireCapabilities('volume_capabilities', req.volume_capabilities);
        const rec = volumes.get(volumeId);
        const problem = capabilitiesProblem(caps);
        if (problem) return { confirmed: null, message: problem };
        const types = caps.map((c) => (c.block ? 'block' : 'mount'));
        const missingType = types.find((t) => !rec.accessTypes.includes(t));
        if (missingType) {
          return { confirmed: null, message: `volume ${volumeId} was created for ${rec.accessTypes.join('/')} access` };
        }
        try {
          parseVolumeParameters(req.parameters);
        } catch (err) {
          return { confirmed: null, message: (err as Error).message };
        }
        return {
          confirmed: {
            volume_context: stringMap(req.volume_context),
            volume_capabilities: caps,
            parameters: stringMap(req.parameters),
            mutable_parameters: {},
          },
          message: '',
        };
      },
    ),

    ListVolumes: unary(deps, 'ListVolumes', async (req: ListRequest) => {
      const page = paginate(volumes.list(), (v) => v.volumeId, {
        maxEntries: req.max_entries ?? 0,
        startingToken: req.starting_token ?? '',
        validToken: isVolumeId,
      });
      const entries = [];
      for (const v of page.entries) {
        entries.push({ volume: toCsiVolume(v, driver.topology()), status: await volumeStatus(v) });
      }
      return { entries, next_token: page.nextToken };
    }),

    ControllerGetVolume: unary(deps, 'ControllerGetVolume', async (req: VolumeIdRequest) => {
      const rec = volumes.get(requireString('volume_id', req.volume_id));
      return { volume: toCsiVolume(rec, driver.topology()), status: await volumeStatus(rec) };
    }),

    GetCapacity: unary(deps, 'GetCapacity', async (req: GetCapacityRequest) => {
      const policy = driver.options.capacity;
      const usable =
        driver.isThisNode(req.accessible_topology) && capabilitiesProblem(req.volume_capabilities ?? []) === undefined;
      parseVolumeParameters(req.parameters);
      const available = usable ? await driver.backend.availableBytes() : 0;
      const maxVolume = Math.min(policy.maxBytes, available - (available % policy.alignBytes));
      return {
        available_capacity: String(available),
        maximum_volume_size: usable ? { value: String(Math.max(0, maxVolume)) } : null,
        minimum_volume_size: { value: String(policy.minBytes) },
      };
    }),

    ControllerGetCapabilities: unary(deps, 'ControllerGetCapabilities', async () => ({
      capabilities: CONTROLLER_CAPABILITIES.map((type) => ({ rpc: { type } })),
    })),

    CreateSnapshot: unary(deps, 'CreateSnapshot', async (req: CreateSnapshotRequest) => {
      const name = requireName('name', req.name);
      const sourceVolumeId = requireString('source_volume_id', req.source_volume_id);
      const rec = await snapshots.create({ name, sourceVolumeId, parameters: stringMap(req.parameters) });
      return { snapshot: toCsiSnapshot(rec) };
    }),

    DeleteSnapshot: unary(deps, 'DeleteSnapshot', async (req: SnapshotIdRequest) => {
      await snapshots.delete(requireString('snapshot_id', req.snapshot_id));
      return {};
    }),

    ListSnapshots: unary(deps, 'ListSnapshots', async (req: ListSnapshotsRequest) => {
      const page = snapshots.list({
        snapshotId: req.snapshot_id ?? '',
        sourceVolumeId: req.source_volume_id ?? '',
        maxEntries: req.max_entries ?? 0,
        startingToken: req.starting_token ?? '',
      });
      return { entries: page.entries.map((s) => ({ snapshot: toCsiSnapshot(s) })), next_token: page.nextToken };
    }),

    GetSnapshot: unary(deps, 'GetSnapshot', async (req: SnapshotIdRequest) => ({
      snapshot: toCsiSnapshot(snapshots.get(requireString('snapshot_id', req.snapshot_id))),
    })),

    ControllerExpandVolume: unary(deps, 'ControllerExpandVolume', async (req: ControllerExpandVolumeRequest) => {
      const volumeId = requireString('volume_id', req.volume_id);
      if (!req.capacity_range) throw new CsiError('CSI_ERR_MISSING_FIELD', 'capacity_range missing in request');
      if (req.volume_capability) {
        const problem = capabilitiesProblem([requireCapability('volume_capability', req.volume_capability)]);
        if (problem) throw new CsiError('CSI_ERR_UNSUPPORTED_CAPABILITY', problem);
      }
      volumes.get(volumeId);
      const r = await volumes.expand(volumeId, req.capacity_range);
      return { capacity_bytes: String(r.capacityBytes), node_expansion_required: r.nodeExpansion };
    }),
  };
}
