// SPDX-License-Identifier: Apache-2.0
// csi.v1.Identity: plugin name and version, the capabilities the plugin advertises, readiness.
import type * as grpc from '@grpc/grpc-js';
import type { BackendFeatures } from '../driver/backend.js';
import { CsiError } from '../errors.js';
import { type HandlerDeps, unary } from './handler.js';

export interface IdentityDeps extends HandlerDeps {
  readonly driverName: string;
  readonly vendorVersion: string;
  readonly features: BackendFeatures;
  /** Probe's answer: the plugin can serve storage calls now. */
  readonly ready: () => boolean;
  /** Why the plugin is unhealthy (Probe answers FAILED_PRECONDITION with it), or undefined. */
  readonly unhealthy?: () => Promise<string | undefined>;
}

export const PLUGIN_SERVICE_CAPABILITIES = [
  'CONTROLLER_SERVICE',
  'VOLUME_ACCESSIBILITY_CONSTRAINTS',
  'SNAPSHOT_METADATA_SERVICE',
] as const;

export function pluginCapabilities(features: BackendFeatures): object[] {
  return [
    ...PLUGIN_SERVICE_CAPABILITIES.map((type) => ({ service: { type } })),
    { volume_expansion: { type: features.onlineResize ? 'ONLINE' : 'OFFLINE' } },
  ];
}

export function identityHandlers(deps: IdentityDeps): grpc.UntypedServiceImplementation {
  return {
    GetPluginInfo: unary(deps, 'GetPluginInfo', async () => ({
      name: deps.driverName,
      vendor_version: deps.vendorVersion,
      manifest: { url: 'https://loopsnap.dev' },
    })),
    GetPluginCapabilities: unary(deps, 'GetPluginCapabilities', async () => ({
      capabilities: pluginCapabilities(deps.features),
    })),
    Probe: unary(deps, 'Probe', async () => {
      const why = await deps.unhealthy?.();
      if (why !== undefined) throw new CsiError('CSI_ERR_DATAPATH_DOWN', `${why}: no volume can be served`);
      return { ready: { value: deps.ready() } };
    }),
  };
}
