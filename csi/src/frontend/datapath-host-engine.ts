// SPDX-License-Identifier: Apache-2.0
// Engine-backed methods of the data-path host (volumes, snapshots and their views). Filled in once the
// engine core (csi/src/engine, csi/src/store) is available.
import type { HostMethod } from './datapath-host.js';

export const engineMethods: Record<string, HostMethod> = {};
