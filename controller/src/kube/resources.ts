// SPDX-License-Identifier: Apache-2.0
// REST coordinates of the resources the controller touches.

export interface Resource {
  readonly group: string; // '' for core
  readonly version: string;
  readonly plural: string;
  readonly kind: string;
  readonly namespaced: boolean;
}

export const Resources = {
  VolumeSnapshot: {
    group: 'snapshot.storage.k8s.io',
    version: 'v1',
    plural: 'volumesnapshots',
    kind: 'VolumeSnapshot',
    namespaced: true,
  },
  VolumeSnapshotContent: {
    group: 'snapshot.storage.k8s.io',
    version: 'v1',
    plural: 'volumesnapshotcontents',
    kind: 'VolumeSnapshotContent',
    namespaced: false,
  },
  VolumeSnapshotClass: {
    group: 'snapshot.storage.k8s.io',
    version: 'v1',
    plural: 'volumesnapshotclasses',
    kind: 'VolumeSnapshotClass',
    namespaced: false,
  },
  PersistentVolumeClaim: {
    group: '',
    version: 'v1',
    plural: 'persistentvolumeclaims',
    kind: 'PersistentVolumeClaim',
    namespaced: true,
  },
  PersistentVolume: {
    group: '',
    version: 'v1',
    plural: 'persistentvolumes',
    kind: 'PersistentVolume',
    namespaced: false,
  },
  StorageClass: {
    group: 'storage.k8s.io',
    version: 'v1',
    plural: 'storageclasses',
    kind: 'StorageClass',
    namespaced: false,
  },
  Lease: { group: 'coordination.k8s.io', version: 'v1', plural: 'leases', kind: 'Lease', namespaced: true },
  CSIStorageCapacity: {
    group: 'storage.k8s.io',
    version: 'v1',
    plural: 'csistoragecapacities',
    kind: 'CSIStorageCapacity',
    namespaced: true,
  },
  Event: { group: '', version: 'v1', plural: 'events', kind: 'Event', namespaced: true },
  VolumeRestore: {
    group: 'loopsnap.dev',
    version: 'v1alpha1',
    plural: 'volumerestores',
    kind: 'VolumeRestore',
    namespaced: true,
  },
  VolumeRefresh: {
    group: 'loopsnap.dev',
    version: 'v1alpha1',
    plural: 'volumerefreshes',
    kind: 'VolumeRefresh',
    namespaced: true,
  },
} as const satisfies Record<string, Resource>;

export function apiVersionOf(r: Resource): string {
  return r.group === '' ? r.version : `${r.group}/${r.version}`;
}

/** Collection path (name undefined) or object path, optionally with a subresource. */
export function resourcePath(
  r: Resource,
  opts: { namespace?: string; name?: string; subresource?: string } = {},
): string {
  const prefix = r.group === '' ? `/api/${r.version}` : `/apis/${r.group}/${r.version}`;
  const ns = r.namespaced && opts.namespace ? `/namespaces/${encodeURIComponent(opts.namespace)}` : '';
  const name = opts.name ? `/${encodeURIComponent(opts.name)}` : '';
  const sub = opts.name && opts.subresource ? `/${opts.subresource}` : '';
  return `${prefix}${ns}/${r.plural}${name}${sub}`;
}

/** Work queue key: `namespace/name` for namespaced objects, `name` otherwise. */
export function keyOf(meta: { name: string; namespace?: string }): string {
  return meta.namespace ? `${meta.namespace}/${meta.name}` : meta.name;
}

export function splitKey(key: string): { namespace?: string; name: string } {
  const i = key.indexOf('/');
  return i < 0 ? { name: key } : { namespace: key.slice(0, i), name: key.slice(i + 1) };
}
