// SPDX-License-Identifier: Apache-2.0
// Pods of the real-node tests that use one claim each: started and Ready, or gone with their volumes torn
// down on the node. The kubelet deletes the pod object after NodeUnpublish and NodeUnstages about a second
// later; stopPod waits for the claim's volume to leave the kubelet's staging directory too, so that what comes
// next (an in-place restore, a kill of the node plugin) finds the volume unused.
import type { RealCluster } from '../../support/real-node.js';
import { waitFor } from '../../support/wait.js';
import { find } from './objects.js';
import { apply, deletePod, pod, waitPodReady } from './workloads.js';

export interface StartOptions {
  readonly block?: boolean;
  /** Default: sleep for ever. */
  readonly script?: string;
}

/** Creates pod `name` using `claim` and waits until it is Ready. */
export function startPod(c: RealCluster, name: string, claim: string, opts: StartOptions = {}): void {
  apply(
    c,
    pod(c.namespace, name, c.workloadImage, {
      claim,
      block: opts.block ?? false,
      script: opts.script ?? 'exec sleep 86400',
    }),
  );
  waitPodReady(c, name);
}

/** Deletes the pod and waits until its claim's volume is unstaged on the node (no pod of the claim left). */
export async function stopPod(c: RealCluster, name: string): Promise<void> {
  const p = find(c, 'pod', name);
  deletePod(c, name);
  const claim = p?.spec.volumes?.find((v: { persistentVolumeClaim?: unknown }) => v.persistentVolumeClaim)
    ?.persistentVolumeClaim?.claimName as string | undefined;
  const node = p?.spec.nodeName as string | undefined;
  if (!claim || !node) return;
  const pv = find(c, 'pvc', claim)?.spec.volumeName as string | undefined;
  if (!pv) return;
  const handle = find(c, 'pv', pv, false)?.spec.csi?.volumeHandle as string;
  // The kubelet stages at plugins/kubernetes.io/csi/<driver>/<sha256 of the handle>/globalmount.
  const staged = `h=$(printf %s '${handle}' | sha256sum | cut -d' ' -f1)
findmnt -rn -o TARGET | grep -F "/$h/globalmount" || true; losetup -l -n -O BACK-FILE | grep -F '${handle}' || true`;
  await waitFor(`volume of ${claim} unstaged on ${node}`, () => c.onNode(node, staged).trim() === '', {
    timeoutMs: 120_000,
    intervalMs: 300,
  });
}
