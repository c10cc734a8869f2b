// SPDX-License-Identifier: Apache-2.0
// Entry point of the data-path host process (fork this file from dist/). See datapath-host.ts.
import { baseMethods, serveHost } from './datapath-host.js';
import { engineMethods } from './datapath-host-engine.js';

serveHost({ ...baseMethods, ...engineMethods });
