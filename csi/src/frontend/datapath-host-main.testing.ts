// SPDX-License-Identifier: Apache-2.0
// Entry point of the data-path host process (fork this file from dist/). See datapath-host.testing.ts.
import { baseMethods, serveHost } from './datapath-host.testing.js';
import { engineMethods } from './datapath-host-engine.testing.js';

serveHost({ ...baseMethods, ...engineMethods });
