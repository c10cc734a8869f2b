// SPDX-License-Identifier: Apache-2.0
// fast-check generators of hostile CSI and NodeAgent requests for test/abuse/abuse.test.ts: every RPC of
// Identity, Controller, Node, SnapshotMetadata and loopsnap.v1.NodeAgent, with empty, boundary, oversized and
// malicious fields (ids and names with ../, NUL, 10 KB, unicode; paths outside the kubelet dir, relative,
// through symlinks to decoys, /proc, /sys, the state dir; capacities 0, negative, 2^63-1, unaligned) mixed with
// the ids and paths of real objects, so that checks beyond the first field are reached too.
import fc from 'fast-check';
import { MODE_NAMES } from '../../csi/src/driver/capabilities.js';

export type Service = 'identity' | 'controller' | 'node' | 'metadata' | 'agent';

export interface AbuseCall {
  readonly service: Service;
  readonly method: string;
  readonly stream: boolean;
  readonly req: Record<string, unknown>;
}

/** What the generators may point at: real objects of the plugin under test and prepared paths. */
export interface AbuseWorld {
  /** Volumes the suite may stage, publish, expand and unstage (never deleted, never the fixtures). */
  readonly poolVolumeIds: readonly string[];
  /** Volumes DeleteVolume may delete. */
  readonly deletableVolumeIds: readonly string[];
  /** Volumes the follow-up checks use: only read, or called idempotently. */
  readonly fixtureVolumeIds: readonly string[];
  readonly snapshotIds: readonly string[];
  /** Names of the pool volumes (CreateVolume idempotency and conflicts). */
  readonly poolNames: readonly string[];
  /** Hostile paths: outside the kubelet dir, through symlinks, into /proc and /sys, the state dir, ... */
  readonly hostilePaths: readonly string[];
  /** Paths below the kubelet dir that do not exist yet (a publish or stage may create them). */
  readonly freshPaths: readonly string[];
  /** Paths below the kubelet dir that must survive every call (empty file, empty dir, file with content). */
  readonly keeperPaths: readonly string[];
}

const KB10 = 'x'.repeat(10 * 1024);

const hostileStrings: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom(
    '',
    '.',
    '..',
    '../../../etc/passwd',
    'vol-../../x',
    'snap-/../../x',
    'a\0b',
    '\0',
    'vol-\u0000',
    KB10,
    `vol-${'0'.repeat(10_000)}`,
    'ünïcødé-名前-😀',
    '\u202e\u200b\ufeff',
    '%2e%2e%2f',
    '/etc/shadow',
    'vol-00000000000000000000000000000000',
    'snap-ffffffffffffffffffffffffffffffff',
    ' ',
    '\n',
  ),
  fc.string({ unit: 'grapheme', maxLength: 40 }),
  fc.string({ unit: 'binary', maxLength: 40 }),
  fc.stringMatching(/^vol-[0-9a-f]{32}$/),
  fc.stringMatching(/^snap-[0-9a-f]{32}$/),
);

const int64s: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom(
    '0',
    '-1',
    '1',
    '4095',
    '4097',
    '1048576',
    '4194304',
    '4194305',
    '8388608',
    '9007199254740992',
    '9007199254740993',
    '9223372036854775807',
    '-9223372036854775808',
  ),
  fc.bigInt({ min: -(1n << 63n), max: (1n << 63n) - 1n }).map(String),
);

const int32s: fc.Arbitrary<number> = fc.oneof(
  fc.constantFrom(0, -1, 1, 2, 2147483647, -2147483648),
  fc.integer({ min: -2147483648, max: 2147483647 }),
);

const stringMap: fc.Arbitrary<Record<string, string>> = fc.oneof(
  fc.constant({}),
  fc.dictionary(hostileStrings, hostileStrings, { maxKeys: 4 }),
  fc.constantFrom<Record<string, string>>(
    { hydrate: 'true' },
    { hydrate: 'maybe' },
    { method: 'clone' },
    { method: '../x' },
    { fsType: 'btrfs' },
    { [KB10]: KB10 },
  ),
);

const accessModes = fc.constantFrom(...MODE_NAMES);

const mountFlags: fc.Arbitrary<string[]> = fc.oneof(
  fc.constant<string[]>([]),
  fc.constantFrom<string[]>(
    ['noatime'],
    ['foo'],
    ['bind'],
    ['noatime,bind'],
    ['X-mount.mkdir'],
    ['loop', 'offset=0'],
    ['errors=bogus'],
    ['rw'],
    [KB10],
    ['a\0b'],
  ),
  fc.array(hostileStrings, { maxLength: 3 }),
);

const validCapability: fc.Arbitrary<Record<string, unknown>> = fc.oneof(
  fc.record({
    block: fc.constant({}),
    access_mode: fc.record({ mode: fc.constantFrom('SINGLE_NODE_WRITER', 'SINGLE_NODE_SINGLE_WRITER') }),
  }),
  fc.record({
    mount: fc.record({ fs_type: fc.constantFrom('', 'ext4'), mount_flags: fc.constant<string[]>([]) }),
    access_mode: fc.record({ mode: fc.constantFrom('SINGLE_NODE_WRITER', 'SINGLE_NODE_READER_ONLY') }),
  }),
);

const capability: fc.Arbitrary<Record<string, unknown> | null> = fc.oneof(
  { weight: 4, arbitrary: validCapability },
  fc.constant(null),
  fc.constant({}),
  fc.record({ block: fc.constant({}), access_mode: fc.record({ mode: accessModes }) }),
  fc.record({
    mount: fc.record({
      fs_type: fc.oneof(fc.constantFrom('', 'ext4', 'xfs', 'btrfs', 'proc'), hostileStrings),
      mount_flags: mountFlags,
    }),
    access_mode: fc.record({ mode: accessModes }),
  }),
  fc.record({ block: fc.constant({}) }),
);

const segments = fc.oneof(
  fc.record({ segments: stringMap }),
  fc.constant({ segments: { 'topology.loopsnap.dev/node': 'some-other-node' } }),
);
const topology = fc.oneof(fc.constant(null), segments);

function w<T>(weight: number, arbitrary: fc.Arbitrary<T>): fc.WeightedArbitrary<T> {
  return { weight, arbitrary };
}

export function abuseCalls(world: AbuseWorld): fc.Arbitrary<AbuseCall> {
  const pick = <T>(xs: readonly T[]): fc.Arbitrary<T> => fc.constantFrom(...xs);
  const anyVolume = fc.oneof(hostileStrings, pick(world.poolVolumeIds), pick(world.fixtureVolumeIds));
  const poolOrHostile = fc.oneof(hostileStrings, pick(world.poolVolumeIds));
  const snapshot = fc.oneof(hostileStrings, pick(world.snapshotIds));
  const name = fc.oneof(hostileStrings, pick(world.poolNames), fc.constant('abuse-new'));
  const path = fc.oneof(
    w(3, pick(world.hostilePaths)),
    w(2, pick(world.freshPaths)),
    w(1, pick(world.keeperPaths)),
    w(1, hostileStrings),
  );
  const range = fc.oneof(
    fc.constant(null),
    fc.record({ required_bytes: int64s, limit_bytes: int64s }),
    fc.record({ required_bytes: int64s }),
  );
  const contentSource = fc.oneof(
    fc.constant(null),
    fc.record({ snapshot: fc.record({ snapshot_id: snapshot }) }),
    fc.record({ volume: fc.record({ volume_id: anyVolume }) }),
  );
  const op = fc.oneof(hostileStrings, fc.stringMatching(/^[a-z0-9-]{1,20}$/), fc.constant('x'.repeat(129)));
  const call = (service: Service, method: string, req: fc.Arbitrary<Record<string, unknown>>, stream = false) =>
    req.map((r): AbuseCall => ({ service, method, stream, req: r }));

  return fc.oneof(
    // Identity
    call('identity', 'GetPluginInfo', fc.constant({})),
    call('identity', 'GetPluginCapabilities', fc.constant({})),
    call('identity', 'Probe', fc.constant({})),
    // Controller
    call(
      'controller',
      'CreateVolume',
      fc.record({
        name,
        capacity_range: range,
        volume_capabilities: fc.array(capability, { maxLength: 3 }),
        parameters: stringMap,
        secrets: stringMap,
        volume_content_source: contentSource,
        accessibility_requirements: fc.oneof(
          fc.constant(null),
          fc.record({
            requisite: fc.array(segments, { maxLength: 2 }),
            preferred: fc.array(segments, { maxLength: 2 }),
          }),
        ),
        mutable_parameters: stringMap,
      }),
    ),
    call(
      'controller',
      'DeleteVolume',
      fc.record({ volume_id: fc.oneof(hostileStrings, pick(world.deletableVolumeIds)), secrets: stringMap }),
    ),
    call(
      'controller',
      'ControllerPublishVolume',
      fc.record({
        volume_id: anyVolume,
        node_id: hostileStrings,
        volume_capability: capability,
        readonly: fc.boolean(),
      }),
    ),
    call('controller', 'ControllerUnpublishVolume', fc.record({ volume_id: anyVolume, node_id: hostileStrings })),
    call('controller', 'ControllerModifyVolume', fc.record({ volume_id: anyVolume, mutable_parameters: stringMap })),
    call(
      'controller',
      'ValidateVolumeCapabilities',
      fc.record({
        volume_id: anyVolume,
        volume_context: stringMap,
        volume_capabilities: fc.array(capability, { maxLength: 3 }),
        parameters: stringMap,
      }),
    ),
    call('controller', 'ListVolumes', fc.record({ max_entries: int32s, starting_token: hostileStrings })),
    call('controller', 'ControllerGetVolume', fc.record({ volume_id: anyVolume })),
    call(
      'controller',
      'GetCapacity',
      fc.record({
        volume_capabilities: fc.array(capability, { maxLength: 2 }),
        parameters: stringMap,
        accessible_topology: topology,
      }),
    ),
    call('controller', 'ControllerGetCapabilities', fc.constant({})),
    call(
      'controller',
      'CreateSnapshot',
      fc.record({ source_volume_id: anyVolume, name, parameters: stringMap, secrets: stringMap }),
    ),
    call('controller', 'DeleteSnapshot', fc.record({ snapshot_id: hostileStrings })),
    call(
      'controller',
      'ListSnapshots',
      fc.record({
        max_entries: int32s,
        starting_token: hostileStrings,
        source_volume_id: anyVolume,
        snapshot_id: snapshot,
      }),
    ),
    call('controller', 'GetSnapshot', fc.record({ snapshot_id: snapshot })),
    call(
      'controller',
      'ControllerExpandVolume',
      fc.record({ volume_id: poolOrHostile, capacity_range: range, volume_capability: capability }),
    ),
    // Node
    call(
      'node',
      'NodeStageVolume',
      fc.record({
        volume_id: fc.oneof(poolOrHostile, pick(world.fixtureVolumeIds)),
        staging_target_path: path,
        volume_capability: capability,
        publish_context: stringMap,
        volume_context: stringMap,
        secrets: stringMap,
      }),
    ),
    call('node', 'NodeUnstageVolume', fc.record({ volume_id: poolOrHostile, staging_target_path: path })),
    call(
      'node',
      'NodePublishVolume',
      fc.record({
        volume_id: anyVolume,
        staging_target_path: path,
        target_path: path,
        volume_capability: capability,
        readonly: fc.boolean(),
        volume_context: stringMap,
      }),
    ),
    call('node', 'NodeUnpublishVolume', fc.record({ volume_id: anyVolume, target_path: path })),
    call(
      'node',
      'NodeGetVolumeStats',
      fc.record({ volume_id: anyVolume, volume_path: path, staging_target_path: path }),
    ),
    call(
      'node',
      'NodeExpandVolume',
      fc.record({
        volume_id: anyVolume,
        volume_path: path,
        staging_target_path: path,
        capacity_range: range,
        volume_capability: capability,
      }),
    ),
    call('node', 'NodeGetCapabilities', fc.constant({})),
    call('node', 'NodeGetInfo', fc.constant({})),
    // SnapshotMetadata (server streams)
    call(
      'metadata',
      'GetMetadataAllocated',
      fc.record({
        security_token: hostileStrings,
        snapshot_id: snapshot,
        starting_offset: int64s,
        max_results: int32s,
      }),
      true,
    ),
    call(
      'metadata',
      'GetMetadataDelta',
      fc.record({
        security_token: hostileStrings,
        base_snapshot_id: snapshot,
        target_snapshot_id: snapshot,
        starting_offset: int64s,
        max_results: int32s,
      }),
      true,
    ),
    // loopsnap.v1.NodeAgent
    call(
      'agent',
      'StartRestore',
      fc.record({
        operation_id: op,
        volume_id: anyVolume,
        snapshot_id: snapshot,
        keep_restore_point: fc.boolean(),
        restore_point_name: name,
      }),
    ),
    call(
      'agent',
      'StartRefresh',
      fc.oneof(
        fc.record({ operation_id: op, volume_id: anyVolume, snapshot_id: snapshot }),
        fc.record({ operation_id: op, volume_id: anyVolume, from_source: fc.boolean() }),
      ),
    ),
    call('agent', 'GetOperation', fc.record({ operation_id: op })),
    call('agent', 'DeleteOperation', fc.record({ operation_id: op })),
  );
}

/** Drops null fields (absent in the message). */
export function clean(req: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(req)) {
    if (v === null) continue;
    out[k] = Array.isArray(v) ? v.filter((x) => x !== null) : v;
  }
  return out;
}
