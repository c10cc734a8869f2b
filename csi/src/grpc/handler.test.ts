// SPDX-License-Identifier: Apache-2.0
// The per-call wrapper on a real grpc-js server over a unix socket: one log line per call (asserted on the
// logger's real JSON output), metrics, status mapping, UNAVAILABLE while not serving, streaming errors.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { csiService } from '../../../common/src/csi-proto.js';
import { createLogger } from '../../../common/src/log.js';
import { CsiError } from '../errors.js';
import { CsiMetrics } from '../metrics.js';
import { type HandlerDeps, requestFields, serverStream, unary } from './handler.js';
import { listen } from './server.js';

describe('gRPC call wrapper', () => {
  const lines: Record<string, unknown>[] = [];
  const registry = new Registry();
  let serving = true;
  let dir: string;
  let server: grpc.Server;
  let client: grpc.Client;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'loopsnap-grpc-'));
    const log = createLogger({
      component: 'test',
      level: 'trace',
      destination: new Writable({
        write(chunk: Buffer, _e, cb) {
          for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
          cb();
        },
      }),
    });
    const deps: HandlerDeps = { log, metrics: new CsiMetrics(registry), serving: () => serving };
    server = new grpc.Server();
    server.addService(csiService('Controller').service, {
      CreateVolume: unary(deps, 'CreateVolume', async (req: { name: string }) => {
        if (req.name === 'taken') throw new CsiError('CSI_ERR_NAME_CONFLICT', 'name taken');
        if (req.name === 'boom') throw new Error('unexpected');
        return { volume: { volume_id: 'vol-1', capacity_bytes: '4096' } };
      }),
    });
    server.addService(csiService('Identity').service, {
      Probe: unary(deps, 'Probe', async () => ({ ready: { value: true } })),
    });
    server.addService(csiService('SnapshotMetadata').service, {
      GetMetadataAllocated: serverStream(deps, 'GetMetadataAllocated', async (req: { snapshot_id: string }, send) => {
        await send({ block_metadata_type: 'VARIABLE_LENGTH', volume_capacity_bytes: '1', block_metadata: [] });
        if (req.snapshot_id === 'bad') throw new CsiError('CSI_ERR_OFFSET', 'offset out of range');
      }),
    });
    await listen(server, `unix://${join(dir, 's.sock')}`, grpc.ServerCredentials.createInsecure());
    client = new (csiService('Controller'))(`unix://${join(dir, 's.sock')}`, grpc.credentials.createInsecure());
  });

  afterAll(async () => {
    client.close();
    server.forceShutdown();
    await rm(dir, { recursive: true, force: true });
  });

  const create = (name: string, secrets: Record<string, string> = {}) =>
    new Promise<unknown>((resolve, reject) =>
      (
        client as unknown as {
          CreateVolume: (r: object, cb: (e: grpc.ServiceError | null, r: unknown) => void) => void;
        }
      ).CreateVolume({ name, secrets }, (e, r) => (e ? reject(e) : resolve(r))),
    );

  it('11-1 success: one info line with method, ids, duration and code OK; secrets never logged', async () => {
    lines.length = 0;
    await create('pvc-1', { token: 's3cret' });
    const served = lines.filter((l) => l.msg === 'Served CSI call');
    expect(served).toHaveLength(1);
    expect(served[0]).toMatchObject({ method: 'CreateVolume', name: 'pvc-1', code: 'OK', level: 'info' });
    expect(typeof served[0]!.durationSeconds).toBe('number');
    expect(JSON.stringify(lines)).not.toContain('s3cret');
    expect(JSON.stringify(lines)).toContain('[REDACTED]');
  });

  it.each([
    ['11-2a catalogue error', 'taken', grpc.status.ALREADY_EXISTS, 'warn', 'CSI_ERR_NAME_CONFLICT'],
    ['11-2b unexpected error', 'boom', grpc.status.INTERNAL, 'error', undefined],
  ])('%s: status, trailer and one failure line', async (_n, name, code, level, errorCode) => {
    lines.length = 0;
    const err = (await create(name).catch((e: unknown) => e)) as grpc.ServiceError;
    expect(err.code).toBe(code);
    expect(err.metadata.get('loopsnap-error-code')).toEqual(errorCode ? [errorCode] : []);
    const failed = lines.filter((l) => l.msg === 'Failed CSI call');
    expect(failed).toHaveLength(1);
    expect(failed[0]).toMatchObject({ method: 'CreateVolume', level, ...(errorCode ? { errorCode } : {}) });
  });

  it('11-3 while not serving, storage calls get UNAVAILABLE', async () => {
    serving = false;
    try {
      await expect(create('x')).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
    } finally {
      serving = true;
    }
  });

  it('11-4 metrics count calls by method and code', async () => {
    const text = await registry.metrics();
    expect(text).toMatch(/loopsnap_csi_operations_total\{method="CreateVolume",code="OK"\} 1/);
    expect(text).toMatch(/loopsnap_csi_operations_total\{method="CreateVolume",code="ALREADY_EXISTS"\} 1/);
    expect(text).toMatch(/loopsnap_csi_operations_total\{method="CreateVolume",code="UNAVAILABLE"\} 1/);
    expect(text).toMatch(/loopsnap_csi_operation_duration_seconds_count\{method="CreateVolume"\} 4/);
  });

  it('11-5 a stream error after some messages reaches the client as its status', async () => {
    const meta = new (csiService('SnapshotMetadata'))(
      `unix://${join(dir, 's.sock')}`,
      grpc.credentials.createInsecure(),
    );
    try {
      const got: unknown[] = [];
      const err = await new Promise<grpc.ServiceError>((resolve, reject) => {
        const s = (
          meta as unknown as { GetMetadataAllocated(r: object): grpc.ClientReadableStream<unknown> }
        ).GetMetadataAllocated({
          snapshot_id: 'bad',
        });
        s.on('data', (m) => got.push(m));
        s.on('error', resolve);
        s.on('end', () => reject(new Error('stream ended without error')));
      });
      expect(got).toHaveLength(1);
      expect(err.code).toBe(grpc.status.OUT_OF_RANGE);
    } finally {
      meta.close();
    }
  });

  it('11-6 requestFields picks ids and paths only', () => {
    expect(requestFields({ volume_id: 'v', secrets: { a: 'b' }, target_path: '/t', readonly: true })).toEqual({
      volumeId: 'v',
      targetPath: '/t',
    });
  });
});
