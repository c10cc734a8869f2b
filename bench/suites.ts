// SPDX-License-Identifier: Apache-2.0
// Registry of benchmark suites; each issue's suite adds one line here.
import { controllerSuite } from './controller.js';
import { datapathSuite } from './datapath.js';
import { engineSuite } from './engine.js';
import { metaBitmapSuite } from './meta-bitmap.js';
import { nodeSuite } from './node.js';
import { restartSuite } from './restart.js';
import { restoreSuite } from './restore.js';
import type { BenchSuite } from './suite.js';

export const suites: Record<string, BenchSuite> = {
  controller: controllerSuite,
  datapath: datapathSuite,
  engine: engineSuite,
  'meta-bitmap': metaBitmapSuite,
  node: nodeSuite,
  restart: restartSuite,
  restore: restoreSuite,
};
