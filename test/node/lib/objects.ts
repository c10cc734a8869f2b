// SPDX-License-Identifier: Apache-2.0
// Kubernetes objects of the real-node tests, read and awaited through kubectl: one object or a list as JSON,
// bound claims, phases of VolumeRestore/VolumeRefresh, Events, and what stands behind a claim or a snapshot
// (its PV, node and CSI handle). Namespaced reads are in the file's namespace unless told otherwise.
import type { RealCluster } from '../../support/real-node.js';
import { waitFor } from '../../support/wait.js';

export interface Condition {
  type: string;
  status: string;
  reason?: string;
  message?: string;
}

export interface Obj {
  metadata: {
    name: string;
    uid: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    finalizers?: string[];
    deletionTimestamp?: string;
  };
  // Fields differ per kind; tests read the ones they know.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  spec: Record<string, any>;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  status?: Record<string, any> & { phase?: string; conditions?: Condition[] };
}

export interface Event {
  reason: string;
  type: string;
  message: string;
  involvedObject: { kind: string; name: string };
  reportingComponent?: string;
  source?: { component?: string };
}

/** `kubectl get <args> -o json`, parsed. */
export function getJson<T = Obj>(c: RealCluster, args: readonly string[]): T {
  return JSON.parse(c.kubectl(['get', ...args, '-o', 'json'])) as T;
}

/** One object of the file's namespace (or cluster-scoped with namespaced=false); undefined when it is gone. */
export function find(c: RealCluster, kind: string, name: string, namespaced = true): Obj | undefined {
  const r = c.tryKubectl([...(namespaced ? ['-n', c.namespace] : []), 'get', kind, name, '-o', 'json']);
  if (r.code === 0) return JSON.parse(r.stdout) as Obj;
  if (/NotFound/.test(r.stderr)) return undefined;
  throw new Error(`kubectl get ${kind} ${name} failed: ${r.stderr.trim()}`);
}

export function get(c: RealCluster, kind: string, name: string, namespaced = true): Obj {
  const o = find(c, kind, name, namespaced);
  if (!o) throw new Error(`${kind} ${name} not found`);
  return o;
}

export function waitBound(c: RealCluster, claim: string, timeoutMs = 180_000): Promise<Obj> {
  return waitFor(
    `PVC ${claim} bound`,
    () => {
      const o = find(c, 'pvc', claim);
      return o?.status?.phase === 'Bound' ? o : undefined;
    },
    { timeoutMs, intervalMs: 300 },
  );
}

export function waitGone(c: RealCluster, kind: string, name: string, namespaced = true, timeoutMs = 180_000) {
  return waitFor(`${kind} ${name} gone`, () => find(c, kind, name, namespaced) === undefined, {
    timeoutMs,
    intervalMs: 300,
  });
}

/** Waits for `status.phase` `want` of a VolumeRestore or VolumeRefresh; a Failed one ends the wait with its message. */
export function waitPhase(c: RealCluster, kind: string, name: string, want: string, timeoutMs = 300_000) {
  return waitFor(
    `${kind} ${name} ${want}`,
    () => {
      const o = find(c, kind, name);
      if (o?.status?.phase === want) return o;
      if (o?.status?.phase === 'Failed') throw new Error(`${kind} ${name} failed: ${o.status.message}`);
      return undefined;
    },
    { timeoutMs, intervalMs: 200 },
  );
}

export function condition(o: Obj | undefined, type: string): Condition | undefined {
  return o?.status?.conditions?.find((k) => k.type === type);
}

/** Events about the object called `name` (PV events live in namespace default). */
export function eventsOf(c: RealCluster, name: string, namespace = c.namespace): Event[] {
  return getJson<{ items: Event[] }>(c, ['-n', namespace, 'events', '--field-selector', `involvedObject.name=${name}`])
    .items;
}

export function waitEvent(
  c: RealCluster,
  name: string,
  reason: string,
  opts: { namespace?: string; timeoutMs?: number } = {},
): Promise<Event> {
  return waitFor(
    `event ${reason} on ${name}`,
    () => eventsOf(c, name, opts.namespace ?? c.namespace).find((e) => e.reason === reason),
    { timeoutMs: opts.timeoutMs ?? 120_000, intervalMs: 500 },
  );
}

/** The VolumeSnapshotContent bound to a VolumeSnapshot of the file's namespace. */
export function contentOf(c: RealCluster, snapshot: string): Obj {
  const name = get(c, 'volumesnapshot', snapshot).status?.boundVolumeSnapshotContentName as string | undefined;
  if (!name) throw new Error(`VolumeSnapshot ${snapshot} has no content yet`);
  return get(c, 'volumesnapshotcontent', name, false);
}

/** The node and CSI handle of a bound claim's PV. */
export function volumeOf(c: RealCluster, claim: string): { pvName: string; volumeHandle: string; node: string } {
  const pvName = get(c, 'pvc', claim).spec.volumeName as string;
  const pv = get(c, 'pv', pvName, false);
  const node = pv.spec.nodeAffinity?.required?.nodeSelectorTerms?.[0]?.matchExpressions?.[0]?.values?.[0] as string;
  return { pvName, volumeHandle: pv.spec.csi.volumeHandle as string, node };
}

/** A claim's dataSource naming a VolumeSnapshot of its namespace. */
export const fromSnapshot = (name: string) => ({ kind: 'VolumeSnapshot', name, apiGroup: 'snapshot.storage.k8s.io' });

/** Merge-patches a claim's requested size. */
export function resizeClaim(c: RealCluster, claim: string, size: string): void {
  c.kubectl([
    '-n',
    c.namespace,
    'patch',
    'pvc',
    claim,
    '--type=merge',
    '-p',
    JSON.stringify({ spec: { resources: { requests: { storage: size } } } }),
  ]);
}

/** Deletes the file's VolumeSnapshots and claims and waits until their PVs and contents are gone. */
export async function deleteVolumesAndSnapshots(c: RealCluster, timeoutMs = 300_000): Promise<void> {
  c.kubectl(['-n', c.namespace, 'delete', 'volumesnapshot', '--all', '--wait=false']);
  c.kubectl(['-n', c.namespace, 'delete', 'pvc', '--all', '--wait=false']);
  await waitFor(
    'the PVs and snapshot contents of the file`s namespace to be deleted',
    () => {
      const pvs = getJson<{ items: Obj[] }>(c, ['pv']).items.filter(
        (p) => p.spec.claimRef?.namespace === c.namespace && p.spec.persistentVolumeReclaimPolicy === 'Delete',
      );
      const contents = getJson<{ items: Obj[] }>(c, ['volumesnapshotcontents']).items.filter(
        (k) => k.spec.volumeSnapshotRef?.namespace === c.namespace && k.spec.deletionPolicy === 'Delete',
      );
      return pvs.length === 0 && contents.length === 0;
    },
    { timeoutMs, intervalMs: 500 },
  );
}
