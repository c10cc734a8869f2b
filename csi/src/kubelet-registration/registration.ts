// SPDX-License-Identifier: Apache-2.0
// Kubelet plugin registration served by the node plugin itself (what node-driver-registrar does as a sidecar).
//
// The kubelet's plugin watcher watches <kubelet-dir>/plugins_registry/ and, for each new unix socket there
// whose name does not start with '.':
//   1. dials it and calls GetInfo (1 s deadline)             -> {type CSIPlugin, name, endpoint, versions}
//   2. checks the type and that a version is 1.x, dials `endpoint` (a plain path on the host, not a URL)
//      and calls NodeGetInfo, then writes the Node annotation and the CSINode entry of the driver
//   3. calls NotifyRegistrationStatus with the outcome (plugin_registered, error text)
// Removing the socket is how the plugin deregisters. A failure in step 2 is not retried by the kubelet
// until the socket is created anew, so after a failed registration the socket is re-created after a delay
// (doubling up to a maximum, reset by a success); a failed GetInfo the kubelet retries on its own.
// The CSI socket must be serving (not answering UNAVAILABLE) before start() is called.
import { rm } from 'node:fs/promises';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../../../common/src/log.js';
import { listen, shutdown } from '../grpc/server.js';
import { removeStaleSocket } from '../grpc/unix-socket.js';
import type { KubeletRegistrationMetrics } from '../metrics.js';
import { type PluginInfoMessage, type RegistrationStatusMessage, registrationService } from './proto.js';

/** PluginInfo.type of CSI drivers (k8s.io/kubelet/pkg/apis/pluginregistration/v1 CSIPlugin). */
export const CSI_PLUGIN_TYPE = 'CSIPlugin';
/** CSI versions offered to the kubelet, whose CSI handler accepts any 1.x (as node-driver-registrar does). */
export const SUPPORTED_CSI_VERSIONS: readonly string[] = ['1.0.0'];

const RETRY_DELAY_INITIAL_MS = 10_000;
const RETRY_DELAY_MAX_MS = 300_000;
// Re-creating the socket: the kubelet's connection of the failed attempt gets this long to close.
const RESERVE_GRACE_MS = 1_000;

export interface KubeletRegistrationOptions {
  /** Where to serve the Registration service, normally <kubelet-dir>/plugins_registry/<driver>-reg.sock. */
  readonly socketPath: string;
  readonly driverName: string;
  /** The CSI socket's path as the kubelet sees it on the host (PluginInfo.endpoint). */
  readonly csiEndpoint: string;
  readonly log: Logger;
  readonly metrics: KubeletRegistrationMetrics;
  /** Delay before the socket is re-created after a failed registration, doubling up to `max`. */
  readonly retryDelayMs?: { readonly initial: number; readonly max: number };
}

export class KubeletRegistration {
  private server: grpc.Server | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private reserving: Promise<void> | undefined;
  private consecutiveFailures = 0;
  private stopped = false;
  private readonly log: Logger;

  private constructor(private readonly opts: KubeletRegistrationOptions) {
    this.log = opts.log.child({ registrationSocket: opts.socketPath });
  }

  /** Serves the Registration service on `opts.socketPath`, replacing a stale socket (never any other file). */
  static async start(opts: KubeletRegistrationOptions): Promise<KubeletRegistration> {
    const r = new KubeletRegistration(opts);
    await r.serve();
    r.log.info(
      { driverName: opts.driverName, endpoint: opts.csiEndpoint },
      'Serving kubelet plugin registration; waiting for the kubelet',
    );
    return r;
  }

  /** Stops serving and removes the socket, which deregisters the plugin from the kubelet. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    await this.reserving;
    await this.unserve();
  }

  private async serve(): Promise<void> {
    await removeStaleSocket(this.opts.socketPath);
    const server = new grpc.Server();
    server.addService(registrationService().service, this.handlers());
    await listen(server, `unix://${this.opts.socketPath}`, grpc.ServerCredentials.createInsecure());
    this.server = server;
  }

  private async unserve(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (server) await shutdown(server, RESERVE_GRACE_MS);
    await rm(this.opts.socketPath, { force: true });
  }

  private handlers(): grpc.UntypedServiceImplementation {
    const getInfo: grpc.handleUnaryCall<unknown, PluginInfoMessage> = (_call, callback) => {
      const info: PluginInfoMessage = {
        type: CSI_PLUGIN_TYPE,
        name: this.opts.driverName,
        endpoint: this.opts.csiEndpoint,
        supported_versions: [...SUPPORTED_CSI_VERSIONS],
      };
      this.log.info({ driverName: info.name, endpoint: info.endpoint }, 'Sent plugin info to the kubelet');
      callback(null, info);
    };
    const notify: grpc.handleUnaryCall<RegistrationStatusMessage, Record<string, never>> = (call, callback) => {
      this.onStatus(call.request);
      callback(null, {});
    };
    return { GetInfo: getInfo, NotifyRegistrationStatus: notify };
  }

  private onStatus(status: RegistrationStatusMessage): void {
    this.opts.metrics.observe(status.plugin_registered);
    const fields = { driverName: this.opts.driverName, endpoint: this.opts.csiEndpoint };
    if (status.plugin_registered) {
      this.consecutiveFailures = 0;
      this.log.info(fields, 'Registered with the kubelet');
      return;
    }
    this.consecutiveFailures++;
    const { initial, max } = this.opts.retryDelayMs ?? { initial: RETRY_DELAY_INITIAL_MS, max: RETRY_DELAY_MAX_MS };
    const delayMs = Math.min(max, initial * 2 ** Math.min(this.consecutiveFailures - 1, 30));
    this.log.error(
      { ...fields, kubeletError: status.error, retrySeconds: delayMs / 1000 },
      'Kubelet failed to register the plugin; the registration socket will be re-created',
    );
    if (this.stopped) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.reserving = this.reserve().finally(() => (this.reserving = undefined));
    }, delayMs);
  }

  /** Re-creates the socket: the kubelet sees it removed (deregisters) and created (registers again). */
  private async reserve(): Promise<void> {
    try {
      await this.unserve();
      if (this.stopped) return;
      await this.serve();
      this.log.warn({ driverName: this.opts.driverName }, 'Re-created the registration socket for the kubelet');
    } catch (err) {
      this.log.error({ err }, 'Failed to re-create the registration socket; restart the node plugin to register');
    }
  }
}
