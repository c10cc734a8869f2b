// SPDX-License-Identifier: Apache-2.0
// Loads the kubelet plugin-registration API (`pluginregistration.Registration`: GetInfo,
// NotifyRegistrationStatus) from gen/proto/pluginregistration/v1/api.proto, which hack/protos.sh copies from
// the k8s.io/kubelet Go module (never committed), with the loader options of csi.proto (snake_case fields).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { CSI_PROTO_LOADER_OPTIONS, generatedProtoDir } from '../../../common/src/csi-proto.js';
import { LoopsnapError } from '../../../common/src/errors.js';

export function registrationProtoPath(): string {
  return join(generatedProtoDir(), 'pluginregistration', 'v1', 'api.proto');
}

/** PluginInfo as it travels (the kubelet's answer to GetInfo). */
export interface PluginInfoMessage {
  type: string;
  name: string;
  endpoint: string;
  supported_versions: string[];
}

/** RegistrationStatus as it travels (what the kubelet reports after trying to register the plugin). */
export interface RegistrationStatusMessage {
  plugin_registered: boolean;
  error: string;
}

let cached: grpc.ServiceClientConstructor | undefined;

/** The `pluginregistration.Registration` service constructor (client) and definition (`.service`, for servers). */
export function registrationService(): grpc.ServiceClientConstructor {
  if (cached) return cached;
  const path = registrationProtoPath();
  if (!existsSync(path)) {
    throw new LoopsnapError(
      'LOOPSNAP_PROTO_MISSING',
      `kubelet plugin-registration proto not found at ${path}; run hack/protos.sh (copies it from the Go module cache)`,
    );
  }
  const root = grpc.loadPackageDefinition(protoLoader.loadSync(path, CSI_PROTO_LOADER_OPTIONS));
  const ctor = (root.pluginregistration as grpc.GrpcObject | undefined)?.Registration as
    grpc.ServiceClientConstructor | undefined;
  if (!ctor?.service) {
    throw new LoopsnapError('LOOPSNAP_PROTO_INVALID', `${path} does not define pluginregistration.Registration`);
  }
  cached = ctor;
  return ctor;
}
