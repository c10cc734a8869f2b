// SPDX-License-Identifier: Apache-2.0
import { defineConfig } from 'vitest/config';

// Two projects: `unit` (co-located *.test.ts next to the code, no root, no cluster) and `integration`
// (test/**: real control plane, real loop devices and FUSE; files run one at a time because they share
// the machine's loop devices and one control plane per run).
export default defineConfig({
  test: {
    reporters: ['default'],
    projects: [
      {
        test: {
          name: 'unit',
          include: [
            'common/src/**/*.test.ts',
            'controller/src/**/*.test.ts',
            'csi/src/**/*.test.ts',
            'hack/**/*.test.ts',
          ],
          testTimeout: 60_000,
        },
      },
      {
        test: {
          name: 'integration',
          include: ['test/**/*.test.ts'],
          globalSetup: ['test/support/global-setup.ts'],
          testTimeout: 300_000,
          hookTimeout: 300_000,
          fileParallelism: false,
        },
      },
    ],
  },
});
