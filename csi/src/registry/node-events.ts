// SPDX-License-Identifier: Apache-2.0
// Warning events on the plugin's Node for volumes it could not open at start (damaged, or no space to
// recover): what `kubectl describe node <node>` shows next to the kubelet's own events.
//
// Event format: namespace `default` (--node-events-namespace; the API server keeps events of cluster-scoped
// objects there, and the chart's Role allows the plugin `create` of events in it, nothing else);
// involvedObject = { kind: Node, name: <node>, uid: <node> }: the reference kubectl builds for a Node (the
// kubelet's convention, so no read of the Node object is needed); reason `VolumeUnavailable`; one event per
// volume and start, named `<node>.<volume>.<start in hex>`, so a retry of the same report is a conflict, not a
// second event.
import { isAlreadyExists, type KubeRest } from '../../../common/src/kube-rest.js';
import type { Logger } from '../../../common/src/log.js';

export const VOLUME_UNAVAILABLE_REASON = 'VolumeUnavailable';
export const NODE_EVENT_COMPONENT = 'loopsnap-node';

export interface UnopenedVolume {
  readonly volumeId: string;
  readonly reason: string;
}

export interface NodeEventBody {
  apiVersion: 'v1';
  kind: 'Event';
  metadata: { name: string; namespace: string };
  involvedObject: { apiVersion: 'v1'; kind: 'Node'; name: string; uid: string };
  reason: string;
  message: string;
  type: 'Warning';
  count: 1;
  firstTimestamp: string;
  lastTimestamp: string;
  source: { component: string; host: string };
  reportingComponent: string;
  reportingInstance: string;
}

/** The Event for one volume; `startedAtMs` makes the name unique per plugin start. Messages are cut at 1 KiB. */
export function unopenedVolumeEvent(
  nodeName: string,
  namespace: string,
  v: UnopenedVolume,
  startedAtMs: number,
): NodeEventBody {
  const ts = new Date(startedAtMs).toISOString().replace(/\.\d{3}Z$/, 'Z');
  const message = `volume ${v.volumeId} could not be opened and is not served: ${v.reason}`.slice(0, 1024);
  return {
    apiVersion: 'v1',
    kind: 'Event',
    metadata: { name: `${nodeName}.${v.volumeId}.${startedAtMs.toString(16)}`, namespace },
    involvedObject: { apiVersion: 'v1', kind: 'Node', name: nodeName, uid: nodeName },
    reason: VOLUME_UNAVAILABLE_REASON,
    message,
    type: 'Warning',
    count: 1,
    firstTimestamp: ts,
    lastTimestamp: ts,
    source: { component: NODE_EVENT_COMPONENT, host: nodeName },
    reportingComponent: NODE_EVENT_COMPONENT,
    reportingInstance: nodeName,
  };
}

/**
 * Posts one Warning event per unopened volume; an event that exists already (a retry) counts as posted.
 * Never throws: a failure is logged, the volumes' VolumeCondition still carries the state.
 */
export async function reportUnopenedVolumes(opts: {
  rest: KubeRest;
  nodeName: string;
  namespace: string;
  volumes: readonly UnopenedVolume[];
  startedAtMs: number;
  log: Logger;
}): Promise<number> {
  let posted = 0;
  for (const v of opts.volumes) {
    const body = unopenedVolumeEvent(opts.nodeName, opts.namespace, v, opts.startedAtMs);
    try {
      await opts.rest.create(`/api/v1/namespaces/${opts.namespace}/events`, body);
      posted++;
    } catch (err) {
      if (isAlreadyExists(err)) {
        posted++;
        continue;
      }
      opts.log.warn({ err, volumeId: v.volumeId }, 'Could not record the unopened volume on the Node');
    }
  }
  return posted;
}
