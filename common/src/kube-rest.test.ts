// SPDX-License-Identifier: Apache-2.0
// KubeRest against a real HTTP server on 127.0.0.1 answering as a throttling API server would: a 429 with
// Retry-After is retried after it (issue 19), up to MAX_THROTTLE_RETRIES; other errors are not retried.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { KubeConfig } from '@kubernetes/client-node';
import { afterEach, describe, expect, it } from 'vitest';
import { KubeApiError, KubeRest, MAX_THROTTLE_RETRIES } from './kube-rest.js';

let server: Server | undefined;
afterEach(async () => {
  await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
  server = undefined;
});

/** Serves `answers` in order (the last one repeats); returns a client and the number of requests seen. */
async function serve(answers: Array<{ status: number; retryAfter?: string }>) {
  const seen = { n: 0 };
  server = createServer((req, res) => {
    const a = answers[Math.min(seen.n, answers.length - 1)]!;
    seen.n++;
    res.writeHead(a.status, {
      'content-type': 'application/json',
      ...(a.retryAfter === undefined ? {} : { 'retry-after': a.retryAfter }),
    });
    res.end(
      JSON.stringify(a.status === 200 ? { kind: 'Namespace' } : { reason: 'TooManyRequests', message: 'slow down' }),
    );
  });
  await new Promise<void>((r) => server!.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as AddressInfo).port;
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: 'c', server: `http://127.0.0.1:${port}`, skipTLSVerify: true }],
    users: [{ name: 'u' }],
    contexts: [{ name: 'x', cluster: 'c', user: 'u' }],
    currentContext: 'x',
  });
  return { rest: await KubeRest.fromKubeConfig(kc), seen };
}

describe('KubeRest', () => {
  it('1-1 retries a 429 after its Retry-After and returns the answer that follows', async () => {
    const { rest, seen } = await serve([
      { status: 429, retryAfter: '0' },
      { status: 429, retryAfter: '0' },
      { status: 200 },
    ]);
    try {
      expect(await rest.get('/api/v1/namespaces/x')).toEqual({ kind: 'Namespace' });
      expect(seen.n).toBe(3);
    } finally {
      rest.close();
    }
  });

  it('1-2 gives the 429 to the caller after MAX_THROTTLE_RETRIES retries; other errors are not retried', async () => {
    const throttled = await serve([{ status: 429, retryAfter: '0' }]);
    try {
      const err = await throttled.rest.get('/api/v1/namespaces/x').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(KubeApiError);
      expect((err as KubeApiError).statusCode).toBe(429);
      expect((err as KubeApiError).retryAfterSeconds).toBe(0);
      expect(throttled.seen.n).toBe(MAX_THROTTLE_RETRIES + 1);
    } finally {
      throttled.rest.close();
    }
    await new Promise<void>((r) => server!.close(() => r()));
    server = undefined;
    const failing = await serve([{ status: 500 }]);
    try {
      await expect(failing.rest.get('/api/v1/namespaces/x')).rejects.toMatchObject({ statusCode: 500 });
      expect(failing.seen.n).toBe(1);
    } finally {
      failing.rest.close();
    }
  });
});
