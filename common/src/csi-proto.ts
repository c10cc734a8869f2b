// SPDX-License-Identifier: Apache-2.0
// Loads the CSI spec's csi.proto (copied from the Go module cache into gen/proto/ by hack/protos.sh; never
// committed) into a grpc-js package definition shared by the node plugin (servers) and the controller
// (clients). Field names stay snake_case as in the spec; int64/uint64 are decoded as strings (no precision
// loss), enums as strings, and default values are filled in.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { LoopsnapError } from './errors.js';

export const CSI_PROTO_LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

/** Repository (or image) root: this file is common/src/csi-proto.ts, or dist/common/src/csi-proto.js. */
function rootDir(): string {
  const here = fileURLToPath(new URL('.', import.meta.url));
  return here.includes('/dist/') ? join(here, '..', '..', '..') : join(here, '..', '..');
}

/** gen/proto/ of the repository (or image): third-party protos copied there by hack/protos.sh. */
export function generatedProtoDir(): string {
  return join(rootDir(), 'gen', 'proto');
}

export function defaultCsiProtoPath(): string {
  return join(generatedProtoDir(), 'csi.proto');
}

let cached: grpc.GrpcObject | undefined;

/** The `csi.v1` namespace: Identity, Controller, Node, SnapshotMetadata, GroupController service constructors. */
export function loadCsiPackage(protoPath = defaultCsiProtoPath()): grpc.GrpcObject {
  if (cached && protoPath === defaultCsiProtoPath()) return cached;
  if (!existsSync(protoPath)) {
    throw new LoopsnapError(
      'LOOPSNAP_PROTO_MISSING',
      `csi.proto not found at ${protoPath}; run hack/protos.sh (copies it from the Go module cache)`,
    );
  }
  const def = protoLoader.loadSync(protoPath, CSI_PROTO_LOADER_OPTIONS);
  const root = grpc.loadPackageDefinition(def);
  const csi = (root.csi as grpc.GrpcObject | undefined)?.v1 as grpc.GrpcObject | undefined;
  if (!csi) throw new LoopsnapError('LOOPSNAP_PROTO_INVALID', `${protoPath} does not define package csi.v1`);
  if (protoPath === defaultCsiProtoPath()) cached = csi;
  return csi;
}

export type ServiceName = 'Identity' | 'Controller' | 'Node' | 'SnapshotMetadata' | 'GroupController';

export function csiService(name: ServiceName, protoPath?: string): grpc.ServiceClientConstructor {
  const ctor = loadCsiPackage(protoPath)[name] as grpc.ServiceClientConstructor | undefined;
  if (!ctor?.service) throw new LoopsnapError('LOOPSNAP_PROTO_INVALID', `csi.v1.${name} is not a service`);
  return ctor;
}
