// SPDX-License-Identifier: Apache-2.0
// Leader election on a coordination.k8s.io/v1 Lease, with client-go's algorithm and defaults:
// - a candidate takes the Lease when it has no holder, or when the current record has not changed for
//   leaseDuration as observed on the candidate's own clock (no trust in other clocks);
// - the leader renews every retryPeriod and steps down when it could not renew within renewDeadline;
// - writes are optimistic (resourceVersion), so two candidates never both win the same record;
// - release() (clean shutdown) clears the holder so another replica takes over at once.
import type { KubeRest } from '../../common/src/kube-rest.js';
import { isConflict, isNotFound, microTime } from '../../common/src/kube-rest.js';
import type { Logger } from '../../common/src/log.js';
import { Resources, resourcePath } from './kube/resources.js';
import type { Lease } from './kube/types.js';

export interface LeaderElectionConfig {
  readonly namespace: string;
  readonly name: string;
  readonly identity: string;
  readonly leaseDurationMs: number;
  readonly renewDeadlineMs: number;
  readonly retryPeriodMs: number;
}

export interface LeaderCallbacks {
  onStartedLeading(): void | Promise<void>;
  /** Called once when leadership is lost (not after release()). */
  onStoppedLeading(): void;
}

export class LeaderElector {
  private observedRv: string | undefined;
  private observedAtMs = 0;
  private leading = false;
  private stopped = false;
  private lastRenewMs = 0;
  private timer: NodeJS.Timeout | undefined;
  private current: Lease | undefined;

  constructor(
    private readonly rest: KubeRest,
    private readonly cfg: LeaderElectionConfig,
    private readonly cb: LeaderCallbacks,
    private readonly log: Logger,
  ) {
    if (cfg.renewDeadlineMs >= cfg.leaseDurationMs)
      throw new Error('leader election: renew deadline must be shorter than lease duration');
  }

  get isLeader(): boolean {
    return this.leading;
  }

  private get path(): string {
    return resourcePath(Resources.Lease, { namespace: this.cfg.namespace, name: this.cfg.name });
  }

  /** Starts campaigning; returns immediately. */
  run(): void {
    this.stopped = false;
    const tick = async (): Promise<void> => {
      if (this.stopped) return;
      let ok = false;
      try {
        ok = await this.tryAcquireOrRenew();
      } catch (err) {
        this.log.debug({ err: (err as Error).message, lease: this.cfg.name }, 'Leader election attempt failed');
      }
      const now = Date.now();
      if (ok) {
        this.lastRenewMs = now;
        if (!this.leading) {
          this.leading = true;
          this.log.info(
            { lease: this.cfg.name, namespace: this.cfg.namespace, identity: this.cfg.identity },
            'Became leader',
          );
          // Not awaited: renewals must go on while the controllers start (cache sync can take a while).
          Promise.resolve()
            .then(() => this.cb.onStartedLeading())
            .catch((err: unknown) => this.log.error({ err }, 'Failed to start leading'));
        }
      } else if (this.leading && now - this.lastRenewMs > this.cfg.renewDeadlineMs) {
        this.leading = false;
        this.stopped = true;
        this.log.error(
          { lease: this.cfg.name, identity: this.cfg.identity },
          'Lost leadership: could not renew the Lease in time',
        );
        this.cb.onStoppedLeading();
        return;
      }
      if (!this.stopped) {
        this.timer = setTimeout(() => void tick(), this.cfg.retryPeriodMs);
      }
    };
    void tick();
  }

  private async tryAcquireOrRenew(): Promise<boolean> {
    const now = new Date();
    let lease: Lease | undefined;
    try {
      lease = await this.rest.get<Lease>(this.path);
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    const durationS = Math.ceil(this.cfg.leaseDurationMs / 1000);
    if (!lease) {
      const created = await this.rest.create<Lease>(resourcePath(Resources.Lease, { namespace: this.cfg.namespace }), {
        apiVersion: 'coordination.k8s.io/v1',
        kind: 'Lease',
        metadata: { name: this.cfg.name, namespace: this.cfg.namespace },
        spec: {
          holderIdentity: this.cfg.identity,
          leaseDurationSeconds: durationS,
          acquireTime: microTime(now),
          renewTime: microTime(now),
          leaseTransitions: 0,
        },
      });
      this.observe(created);
      return true;
    }
    if (lease.metadata.resourceVersion !== this.observedRv) this.observe(lease);
    const holder = lease.spec?.holderIdentity ?? '';
    const mine = holder === this.cfg.identity;
    const expired = Date.now() - this.observedAtMs > (lease.spec?.leaseDurationSeconds ?? durationS) * 1000;
    if (holder && !mine && !expired) return false;
    const spec = {
      holderIdentity: this.cfg.identity,
      leaseDurationSeconds: durationS,
      acquireTime: mine ? (lease.spec?.acquireTime ?? microTime(now)) : microTime(now),
      renewTime: microTime(now),
      leaseTransitions: (lease.spec?.leaseTransitions ?? 0) + (mine ? 0 : 1),
    };
    try {
      const updated = await this.rest.replace<Lease>(this.path, { ...lease, spec });
      this.observe(updated);
      return true;
    } catch (err) {
      if (isConflict(err)) return false;
      throw err;
    }
  }

  private observe(lease: Lease): void {
    this.current = lease;
    this.observedRv = lease.metadata.resourceVersion;
    this.observedAtMs = Date.now();
  }

  /** Stops campaigning; a leader clears the holder so that another replica takes over immediately. */
  async release(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    if (!this.leading) return;
    this.leading = false;
    try {
      const lease = await this.rest.get<Lease>(this.path);
      if (lease.spec?.holderIdentity !== this.cfg.identity) return;
      await this.rest.replace(this.path, {
        ...lease,
        spec: { ...lease.spec, holderIdentity: '', leaseDurationSeconds: 1, renewTime: microTime() },
      });
      this.log.info({ lease: this.cfg.name }, 'Released leadership');
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'Failed to release the leader Lease');
    }
  }

  /** Holder identity of the last record seen. */
  get holder(): string | undefined {
    return this.current?.spec?.holderIdentity;
  }
}
