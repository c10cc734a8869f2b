// SPDX-License-Identifier: Apache-2.0
// The resizer: ControllerExpandVolume for bound claims of our driver that ask for more than they have, and
// the PVC/PV status a Kubernetes 1.33 kubelet waits for before it runs NodeExpandVolume (resize-logic.ts has
// the protocol field by field). Run from the PVC controller's reconcile (provisioner.ts) once the claim is
// bound. Level-based: every step is decided again from the claim and its PV, so a crash between steps
// resumes where it stopped (ControllerExpandVolume is idempotent in the plugin).
import * as grpc from '@grpc/grpc-js';
import type { ReconcileContext, ReconcileResult } from './controller-base.js';
import type { Deps } from './deps.js';
import { ControllerError, CsiCallError, ErrorCode, errorMessage, isCsiFinalError, TerminalError } from './errors.js';
import { Resources } from './kube/resources.js';
import type { PersistentVolume, PersistentVolumeClaim } from './kube/types.js';
import { Reason } from './names.js';
import { volumeCapabilities } from './provision-logic.js';
import { formatQuantityBytes, nowTime } from './quantity.js';
import {
  controllerResizeFailed,
  controllerResizeInProgress,
  decideResizeAction,
  nodeResizePending,
  type PvcStatusPatch,
  resizeFinished,
} from './resize-logic.js';

/** gRPC codes after which the requested size is infeasible (KEP 1790; kubelet's isInfeasibleError). */
const INFEASIBLE_CODES: ReadonlySet<grpc.status> = new Set([
  grpc.status.INVALID_ARGUMENT,
  grpc.status.OUT_OF_RANGE,
  grpc.status.NOT_FOUND,
]);

export function isInfeasibleError(err: unknown): boolean {
  return err instanceof CsiCallError && INFEASIBLE_CODES.has(err.grpcCode);
}

export class Resizer {
  constructor(private readonly d: Deps) {}

  async reconcile(pvc: PersistentVolumeClaim, log: ReconcileContext['log']): Promise<ReconcileResult> {
    const pv = pvc.spec.volumeName ? this.d.caches.pvs.get(pvc.spec.volumeName) : undefined;
    const action = decideResizeAction({ driver: this.d.settings.driverName, pvc, pv });
    if (action.type === 'none') return {};
    const { events } = this.d;
    const R = Resources.PersistentVolumeClaim;
    const pvName = pv!.metadata.name;
    if (action.type === 'fail') {
      events.record(R, pvc, 'Warning', Reason.VolumeResizeFailed, action.message);
      throw new ControllerError(ErrorCode.InvalidSpec, action.message, { reason: Reason.VolumeResizeFailed });
    }
    let claim = await this.patchStatus(
      pvc,
      controllerResizeInProgress(pvc, action.newSize, action.markInProgress, nowTime()),
      true,
    );
    events.record(R, claim, 'Normal', Reason.Resizing, `External resizer is resizing volume ${pvName}`);
    let res: { capacityBytes: bigint; nodeExpansionRequired: boolean };
    try {
      const info = this.d.nodes.requireReady(action.node);
      const cap = volumeCapabilities(pvc, this.storageClass(pvc), this.d.settings.defaultFsType)[0];
      res = await this.d.csi.get(action.node, info.endpoint).controllerExpandVolume({
        volumeId: action.volumeHandle,
        requiredBytes: action.newSize,
        ...(cap ? { capability: cap } : {}),
      });
    } catch (err) {
      await this.recordFailure(claim, pvName, err);
      if (isInfeasibleError(err)) {
        throw new TerminalError(ErrorCode.CsiCallFailed, errorMessage(err), {
          cause: err,
          reason: Reason.VolumeResizeFailed,
        });
      }
      throw err;
    }
    const size = res.capacityBytes > 0n ? res.capacityBytes : action.newSize;
    await this.d.kube.patch<PersistentVolume>(Resources.PersistentVolume, pv!.metadata, {
      spec: { capacity: { storage: formatQuantityBytes(size) } },
    });
    if (res.nodeExpansionRequired) {
      claim = await this.patchStatus(claim, nodeResizePending(claim, nowTime()), true);
      events.record(
        R,
        claim,
        'Normal',
        Reason.FileSystemResizeRequired,
        'Require file system resize of volume on node',
      );
    } else {
      claim = await this.patchStatus(claim, resizeFinished(claim, size), true);
      events.record(R, claim, 'Normal', Reason.VolumeResizeSuccessful, 'Resize volume succeeded');
    }
    log.info(
      { volumeName: pvName, size: formatQuantityBytes(size), nodeExpansionRequired: res.nodeExpansionRequired },
      'Expanded volume',
    );
    return {};
  }

  /**
   * An event for every failure; for a final one the ControllerResizeError condition, and for an infeasible
   * one ControllerResizeInfeasible too (written without a resourceVersion check, as external-resizer does:
   * the failure must land even on a claim that changed meanwhile).
   */
  private async recordFailure(claim: PersistentVolumeClaim, pvName: string, err: unknown): Promise<void> {
    const message = `resize volume "${pvName}" by resizer "${this.d.settings.driverName}" failed: ${errorMessage(err)}`;
    this.d.events.record(Resources.PersistentVolumeClaim, claim, 'Warning', Reason.VolumeResizeFailed, message);
    if (!isCsiFinalError(err)) return;
    const patch = controllerResizeFailed(claim, errorMessage(err), isInfeasibleError(err), nowTime());
    await this.patchStatus(claim, patch, false);
  }

  private patchStatus(
    pvc: PersistentVolumeClaim,
    status: PvcStatusPatch,
    precondition: boolean,
  ): Promise<PersistentVolumeClaim> {
    return this.d.kube.patch<PersistentVolumeClaim>(
      Resources.PersistentVolumeClaim,
      pvc.metadata,
      { status },
      { subresource: 'status', precondition },
    );
  }

  private storageClass(pvc: PersistentVolumeClaim) {
    return pvc.spec.storageClassName ? this.d.caches.storageClasses.get(pvc.spec.storageClassName) : undefined;
  }
}
