// SPDX-License-Identifier: Apache-2.0
// /metrics, /healthz, /healthz/leader-election and /readyz on --http-endpoint.
import http from 'node:http';
import type { Registry } from 'prom-client';

export interface HealthSource {
  readonly isLeader: boolean;
  readonly ready: boolean;
}

export function buildHttpServer(registry: Registry, health: HealthSource, metricsPath: string): http.Server {
  return http.createServer((req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    const send = (code: number, body: string, type = 'text/plain; charset=utf-8'): void => {
      res.writeHead(code, { 'content-type': type });
      res.end(body);
    };
    if (url === metricsPath) {
      registry.metrics().then(
        (text) => send(200, text, registry.contentType),
        (err: unknown) => send(500, String(err)),
      );
      return;
    }
    if (url === '/healthz' || url === '/livez') return send(200, 'ok\n');
    if (url === '/healthz/leader-election') return send(200, health.isLeader ? 'leader\n' : 'standby\n');
    if (url === '/readyz') return health.ready ? send(200, 'ok\n') : send(503, 'caches not synced\n');
    send(404, 'not found\n');
  });
}
