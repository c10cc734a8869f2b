// SPDX-License-Identifier: Apache-2.0
// Test helpers shared by the driver-level unit tests (csi/src/driver/*.test.ts, csi/src/agent/*.test.ts): the
// driver context of a node `node-a` over a backend and real state files, a 4 MiB block volume request, and
// assertions on typed errors and large buffers.
import { expect } from 'vitest';
import { LoopsnapError } from '../../../common/src/errors.js';
import type { Logger } from '../../../common/src/log.js';
import type { DriverState } from '../state/driver-state.js';
import type { VolumeBackend } from './backend.js';
import { DriverContext } from './context.js';
import type { CreateVolumeInput } from './volume-service.js';

export const MiB = 1024 * 1024;
export const blockCap = { block: {}, access_mode: { mode: 'SINGLE_NODE_WRITER' as const } };

/** Volumes of 1-64 MiB (8 MiB by default) in 4 KiB units, no volume limit. */
export function testDriverContext(state: DriverState, backend: VolumeBackend, log: Logger): DriverContext {
  return new DriverContext(
    {
      driverName: 'csi.loopsnap.dev',
      vendorVersion: 'test',
      nodeId: 'node-a',
      maxVolumesPerNode: 0,
      defaultFsType: 'ext4',
      capacity: { defaultBytes: 8 * MiB, alignBytes: 4096, minBytes: MiB, maxBytes: 64 * MiB },
    },
    state,
    backend,
    log,
  );
}

/** A CreateVolume request for a 4 MiB raw block volume. */
export function blockVolumeInput(name: string, extra: Partial<CreateVolumeInput> = {}): CreateVolumeInput {
  return {
    name,
    capacityRange: { required_bytes: String(4 * MiB) },
    capabilities: [blockCap],
    parameters: {},
    contentSource: null,
    accessibility: null,
    ...extra,
  };
}

/** The same for a class with `hydrate: "false"`: a restore or clone of it stays a thin clone. */
export function thinVolumeInput(name: string, extra: Partial<CreateVolumeInput> = {}): CreateVolumeInput {
  return blockVolumeInput(name, { parameters: { hydrate: 'false' }, ...extra });
}

/** `p` rejects with a LoopsnapError of stable code `code` (and a message matching `message`). */
export async function rejectsWithCode(p: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, 'expected a rejection').toBeInstanceOf(LoopsnapError);
  expect((err as LoopsnapError).code).toBe(code);
  if (message) expect((err as Error).message).toMatch(message);
}

/** Byte equality of large buffers (vitest's deep equality is slow on MiBs). */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(a, b) === 0;
}

/** Polls `cond` every 5 ms for up to 10 s. */
export async function until(what: string, cond: () => boolean): Promise<void> {
  for (let i = 0; i < 2000; i++) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`timed out waiting for ${what}`);
}
