// SPDX-License-Identifier: Apache-2.0
// A worker's table of exposed views, fed by the main thread's control messages (drained without an event
// loop, with receiveMessageOnPort) and pruned by the shared view state (CTL_STATE).
import { staleGeneration } from '../engine/shared-state.js';
import { FUSE_ROOT_ID, S_IFDIR, S_IFREG } from './fuse-abi.js';
import type { Attr } from './fuse-reply.js';
import {
  CTL_STATE,
  CTL_VERSION,
  type EngineFastPath,
  VIEW_ACTIVE,
  type ViewDescriptor,
  type WorkerControl,
} from './view-protocol.js';

export interface ViewState {
  readonly d: ViewDescriptor;
  readonly ctl: Int32Array;
  readonly engine: EngineFastPath | null;
  readonly blockBytes: number;
  /** Bytes per meta-bit-map granule (live views). */
  readonly granuleBytes: number;
}

export class WorkerViews {
  private readonly byId = new Map<number, ViewState>();
  private readonly ids = new Map<string, number>();

  constructor(
    /** Next pending control message, if any (non-blocking). */
    private readonly control: () => WorkerControl | undefined,
    private readonly onStop: () => void,
  ) {}

  add(d: ViewDescriptor): void {
    const blockBytes = 2 ** d.blockShift;
    this.byId.set(d.nodeId, {
      d,
      ctl: new Int32Array(d.ctl),
      engine: d.engine,
      blockBytes,
      granuleBytes: d.engine ? d.engine.blockSize * 2 ** d.engine.granuleShift : blockBytes,
    });
    this.ids.set(d.name, d.nodeId);
  }

  /** Applies pending control messages. */
  private applyControl(): void {
    for (let m = this.control(); m; m = this.control()) {
      if (m.t === 'add' || m.t === 'update') this.add(m.view);
      else if (m.t === 'stop') this.onStop();
    }
  }

  /** Applies pending control messages and forgets removed views. */
  drain(): void {
    this.applyControl();
    for (const [id, v] of this.byId) {
      if (Atomics.load(v.ctl, CTL_STATE) !== VIEW_ACTIVE) {
        this.byId.delete(id);
        if (this.ids.get(v.d.name) === id) this.ids.delete(v.d.name);
      }
    }
  }

  /** The active view with this node id (draining control messages on a miss or a stale engine). */
  get(nodeId: number): ViewState | undefined {
    let v = this.byId.get(nodeId);
    if (!v || Atomics.load(v.ctl, CTL_STATE) !== VIEW_ACTIVE || staleDescriptor(v) || staleEngine(v)) {
      this.drain();
      v = this.byId.get(nodeId);
    }
    return v && Atomics.load(v.ctl, CTL_STATE) === VIEW_ACTIVE ? v : undefined;
  }

  /**
   * Any known view with this node id, active or not (RELEASE of a removed view). A miss applies pending control
   * messages first without pruning: the OPEN may have been answered by another worker, and this one may not
   * have seen the view yet (a lost RELEASE would keep the view open for ever).
   */
  peek(nodeId: number): ViewState | undefined {
    const v = this.byId.get(nodeId);
    if (v) return v;
    this.applyControl();
    return this.byId.get(nodeId);
  }

  byName(name: string): ViewState | undefined {
    this.drain();
    const id = this.ids.get(name);
    return id === undefined ? undefined : this.get(id);
  }

  /** Active views, after draining. */
  active(): ViewState[] {
    this.drain();
    return [...this.byId.values()].filter((v) => Atomics.load(v.ctl, CTL_STATE) === VIEW_ACTIVE);
  }
}

/** The main thread has posted a newer descriptor of the view (new size or engine arrays). */
function staleDescriptor(v: ViewState): boolean {
  return Atomics.load(v.ctl, CTL_VERSION) !== v.d.version;
}

/** The engine replaced its arrays (resize); the main thread has posted the new ones. */
function staleEngine(v: ViewState): boolean {
  return v.engine !== null && staleGeneration(v.engine);
}

const DIR_ATTR_MODE = S_IFDIR | 0o755;
const STARTED_SEC = Math.floor(Date.now() / 1000);

export function dirAttr(): Attr {
  return { ino: FUSE_ROOT_ID, size: 0, mode: DIR_ATTR_MODE, nlink: 2, mtimeSec: STARTED_SEC, blksize: 4096 };
}

export function fileAttr(v: ViewState): Attr {
  return {
    ino: v.d.nodeId,
    size: v.d.sizeBytes,
    mode: S_IFREG | (v.d.readOnly ? 0o400 : 0o600),
    nlink: 1,
    mtimeSec: v.d.mtimeSec,
    blksize: v.blockBytes,
  };
}
