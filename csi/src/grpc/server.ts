// SPDX-License-Identifier: Apache-2.0
// Builds the node plugin's gRPC servers; binding them to addresses is main.ts's job (listen() below).
//   buildNodeServer   Identity + Controller + Node + SnapshotMetadata, for the unix socket (kubelet,
//                     csi-sanity, upstream sidecars)
//   buildRemoteServer Identity + Controller + SnapshotMetadata, for the TCP mutual-TLS endpoint our
//                     controller dials. Room for loopsnap's own services (csi/proto/, issues 4/8): pass them
//                     in `extraServices`.
import * as grpc from '@grpc/grpc-js';
import { csiService } from '../../../common/src/csi-proto.js';
import { type ControllerDeps, controllerHandlers } from './controller-server.js';
import { type IdentityDeps, identityHandlers } from './identity-server.js';
import { type NodeDeps, nodeHandlers } from './node-server.js';
import { type SnapshotMetadataDeps, snapshotMetadataHandlers } from './snapshot-metadata-server.js';

export type ServerDeps = IdentityDeps & ControllerDeps & NodeDeps & SnapshotMetadataDeps;

export interface ExtraService {
  readonly definition: grpc.ServiceDefinition;
  readonly implementation: grpc.UntypedServiceImplementation;
}

const SERVER_OPTIONS: grpc.ServerOptions = {
  'grpc.max_concurrent_streams': 128,
  'grpc.keepalive_permit_without_calls': 1,
};

export function buildNodeServer(deps: ServerDeps, extraServices: readonly ExtraService[] = []): grpc.Server {
  const server = new grpc.Server(SERVER_OPTIONS);
  server.addService(csiService('Identity').service, identityHandlers(deps));
  server.addService(csiService('Controller').service, controllerHandlers(deps));
  server.addService(csiService('Node').service, nodeHandlers(deps));
  server.addService(csiService('SnapshotMetadata').service, snapshotMetadataHandlers(deps));
  for (const s of extraServices) server.addService(s.definition, s.implementation);
  return server;
}

export function buildRemoteServer(deps: ServerDeps, extraServices: readonly ExtraService[] = []): grpc.Server {
  const server = new grpc.Server(SERVER_OPTIONS);
  server.addService(csiService('Identity').service, identityHandlers(deps));
  server.addService(csiService('Controller').service, controllerHandlers(deps));
  server.addService(csiService('SnapshotMetadata').service, snapshotMetadataHandlers(deps));
  for (const s of extraServices) server.addService(s.definition, s.implementation);
  return server;
}

/** Binds `server` to `address` (`unix:///path` or `host:port`); resolves with the bound port (0 for unix). */
export function listen(server: grpc.Server, address: string, credentials: grpc.ServerCredentials): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(address, credentials, (err, port) => (err ? reject(err) : resolve(port)));
  });
}

/** Stops accepting calls, waits up to `graceMs` for calls in flight, then cancels the rest. */
export function shutdown(server: grpc.Server, graceMs: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, graceMs);
    server.tryShutdown(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}
