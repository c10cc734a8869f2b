// SPDX-License-Identifier: Apache-2.0
// The node registry protocol between node plugins (writers) and the controller (reader).
//
// Each node plugin keeps one coordination.k8s.io/v1 Lease named `loopsnap-node-<nodeId>` in the registry
// namespace. It renews `spec.renewTime` every `leaseDurationSeconds / 4` while it serves; the controller
// treats the node as down when it has not seen a renewal for `leaseDurationSeconds`, or when
// `spec.holderIdentity` is not the node id (a plugin that stops cleanly clears it). Annotations carry what
// the controller needs to reach and place work on the node:
//
//   loopsnap.dev/endpoint        host:port of the plugin's CSI gRPC server (TCP, mutual TLS)
//   loopsnap.dev/capacity-bytes  free bytes for new volumes, decimal
//   loopsnap.dev/version         plugin version
//
// The Lease is labelled `loopsnap.dev/node-lease: "true"` so the controller can watch only these.

export const NODE_LEASE_PREFIX = 'loopsnap-node-';
export const NODE_LEASE_LABEL = 'loopsnap.dev/node-lease';
export const ANN_ENDPOINT = 'loopsnap.dev/endpoint';
export const ANN_CAPACITY_BYTES = 'loopsnap.dev/capacity-bytes';
export const ANN_VERSION = 'loopsnap.dev/version';
export const DEFAULT_REGISTRY_NAMESPACE = 'kube-system';
export const DEFAULT_NODE_LEASE_DURATION_SECONDS = 40;

/** Lease names are DNS subdomains: node ids are Kubernetes node names, which already are. */
export function nodeLeaseName(nodeId: string): string {
  return `${NODE_LEASE_PREFIX}${nodeId}`;
}

export function nodeIdFromLeaseName(name: string): string | undefined {
  return name.startsWith(NODE_LEASE_PREFIX) ? name.slice(NODE_LEASE_PREFIX.length) : undefined;
}
