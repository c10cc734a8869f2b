// SPDX-License-Identifier: Apache-2.0
// Pods and claims of the real-node tests, and the shell programs they run (busybox sh: the workload image has
// nothing else). Two writers whose output can be checked at any cut:
//
//   file writer   appends files /data/w/f-<i> of random bytes and, after each file is complete, its sha256
//                 line to /data/w/sums (FILES files at most). At any consistent cut every line of sums names a complete file
//                 with that checksum (`sha256sum -c sums` passes), and sums never ends in a torn line.
//   block writer  writes generation g of a pattern over the first BLOCKS 4 KiB blocks of a raw device in
//                 block order, each block with O_DIRECT (so it is on the device before the next is written):
//                 block i holds "LSNP gen=<g> blk=<i>" padded with zeros. At any cut the device reads
//                 gen G+1 for blocks [0, k) and gen G for [k, BLOCKS): one step down, never a torn block.
import type { RealCluster } from '../../support/real-node.js';

export const BLOCKS = 1024;
export const STORAGE_CLASS = 'loopsnap';

export interface ClaimSpec {
  readonly storageClassName?: string;
  readonly volumeMode?: 'Filesystem' | 'Block';
  readonly storage?: string;
  readonly dataSource?: { kind: string; name: string; apiGroup?: string };
}

export function claim(namespace: string, name: string, spec: ClaimSpec = {}): object {
  return {
    apiVersion: 'v1',
    kind: 'PersistentVolumeClaim',
    metadata: { name, namespace },
    spec: {
      storageClassName: spec.storageClassName ?? STORAGE_CLASS,
      accessModes: ['ReadWriteOnce'],
      volumeMode: spec.volumeMode ?? 'Filesystem',
      resources: { requests: { storage: spec.storage ?? '64Mi' } },
      ...(spec.dataSource ? { dataSource: spec.dataSource } : {}),
    },
  };
}

export interface PodSpec {
  readonly claim: string;
  readonly block?: boolean;
  readonly script: string;
  readonly securityContext?: object;
}

export const DEVICE = '/dev/loopsnap-vol';

export function pod(namespace: string, name: string, image: string, spec: PodSpec): object {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace },
    spec: {
      terminationGracePeriodSeconds: 2,
      ...(spec.securityContext ? { securityContext: spec.securityContext } : {}),
      containers: [
        {
          name: 'work',
          image,
          command: ['sh', '-c', spec.script],
          ...(spec.block
            ? { volumeDevices: [{ name: 'v', devicePath: DEVICE }] }
            : { volumeMounts: [{ name: 'v', mountPath: '/data' }] }),
        },
      ],
      volumes: [{ name: 'v', persistentVolumeClaim: { claimName: spec.claim } }],
    },
  };
}

/** At most FILES files of 4-16 KiB (30 MiB: a 64Mi claim never fills), about 50 a second, then it idles. */
export const FILES = 3000;
export const FILE_WRITER = `mkdir -p /data/w && cd /data/w && i=0
while [ $i -lt ${FILES} ]; do
  i=$((i+1))
  head -c $(( (i % 4 + 1) * 4096 )) /dev/urandom > f-$i
  sha256sum f-$i >> sums
  sleep 0.02
done
exec sleep 86400`;

/** Exit status 0 and "OK <n>" when every line of sums checks; n = number of files. */
export const FILE_CHECK = `cd /data/w && sha256sum -c -s sums && echo "OK $(wc -l < sums)"`;

const blockLine = `printf 'LSNP gen=%08d blk=%08d\\n' $g $i | dd of=${DEVICE} bs=4096 count=1 seek=$i conv=sync,notrunc oflag=direct 2>/dev/null`;

/** Generation 1 in full (then /tmp/gen1 exists), then generations 2, 3, ... for ever. */
export const BLOCK_WRITER = `g=1
while :; do
  i=0
  while [ $i -lt ${BLOCKS} ]; do ${blockLine} || exit 1; i=$((i+1)); done
  [ $g = 1 ] && touch /tmp/gen1
  g=$((g+1))
done`;

/** One header line per block of the first BLOCKS blocks ("" for a block without a header). */
export const BLOCK_DUMP = `dd if=${DEVICE} bs=4096 count=${BLOCKS} iflag=direct 2>/dev/null | strings -n 8`;

/** The generation of each block; throws unless the dump has the shape of a cut of BLOCK_WRITER. */
export function checkBlockDump(dump: string): { generations: number[] } {
  const lines = dump.trim().split('\n');
  if (lines.length !== BLOCKS) throw new Error(`expected ${BLOCKS} block headers, found ${lines.length}`);
  const gens = lines.map((l, i) => {
    const m = /^LSNP gen=(\d{8}) blk=(\d{8})$/.exec(l);
    if (!m) throw new Error(`block ${i}: not a pattern block: ${JSON.stringify(l)}`);
    if (Number(m[2]) !== i) throw new Error(`block ${i}: holds the header of block ${Number(m[2])}`);
    return Number(m[1]);
  });
  const first = gens[0]!;
  const last = gens[gens.length - 1]!;
  if (first - last > 1 || first < last) throw new Error(`generations ${first}..${last} are not one cut`);
  const step = gens.findIndex((g) => g !== first);
  if (step >= 0 && gens.slice(step).some((g) => g !== last)) throw new Error('more than one step in generations');
  return { generations: gens };
}

/** Applies an object (JSON) with kubectl. */
export function apply(c: RealCluster, obj: object): void {
  c.kubectl(['apply', '-f', '-'], JSON.stringify(obj));
}

export function waitPodReady(c: RealCluster, name: string, timeout = '300s'): void {
  c.kubectl(['-n', c.namespace, 'wait', '--for=condition=Ready', `pod/${name}`, `--timeout=${timeout}`]);
}

export function exec(c: RealCluster, podName: string, script: string): string {
  return c.kubectl(['-n', c.namespace, 'exec', podName, '--', 'sh', '-c', script]);
}

export function deletePod(c: RealCluster, name: string, extra: readonly string[] = []): void {
  c.kubectl([
    '-n',
    c.namespace,
    'delete',
    'pod',
    name,
    '--ignore-not-found',
    '--wait=true',
    '--timeout=180s',
    ...extra,
  ]);
}

export function snapshot(c: RealCluster, name: string, claimName: string, cls?: string): void {
  apply(c, {
    apiVersion: 'snapshot.storage.k8s.io/v1',
    kind: 'VolumeSnapshot',
    metadata: { name, namespace: c.namespace },
    spec: { ...(cls ? { volumeSnapshotClassName: cls } : {}), source: { persistentVolumeClaimName: claimName } },
  });
}

export function waitSnapshotReady(c: RealCluster, name: string): void {
  c.kubectl([
    '-n',
    c.namespace,
    'wait',
    '--for=jsonpath={.status.readyToUse}=true',
    `volumesnapshot/${name}`,
    '--timeout=180s',
  ]);
}

export interface PvInfo {
  readonly pvName: string;
  readonly volumeHandle: string;
}

export function pvOf(c: RealCluster, claimName: string): PvInfo {
  const pvName = c.kubectl(['-n', c.namespace, 'get', 'pvc', claimName, '-o', 'jsonpath={.spec.volumeName}']).trim();
  if (!pvName) throw new Error(`PVC ${claimName} is not bound`);
  const volumeHandle = c.kubectl(['get', 'pv', pvName, '-o', 'jsonpath={.spec.csi.volumeHandle}']).trim();
  return { pvName, volumeHandle };
}

/** Lines of the node plugin pods' logs (JSON), all containers. */
export function pluginLog(c: RealCluster): Array<Record<string, unknown>> {
  return c
    .kubectl(['-n', 'loopsnap', 'logs', '-l', 'app.kubernetes.io/component=node', '--tail=-1', '--all-containers'])
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}
