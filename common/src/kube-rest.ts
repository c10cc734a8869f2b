// SPDX-License-Identifier: Apache-2.0
// A thin JSON client for the Kubernetes REST API, shared by the controller and the node plugin's registry.
// Objects travel as plain JSON exactly as the API server sends them (no generated model classes: custom
// resources, MicroTime fields and unknown fields round-trip untouched). Authentication and TLS come from a
// client-node KubeConfig. Errors are KubeApiError with the HTTP status and the Status `reason`.
import http from 'node:http';
import https from 'node:https';
import type { KubeConfig } from '@kubernetes/client-node';
import { LoopsnapError } from './errors.js';

export type PatchType = 'merge' | 'json' | 'strategic';

const PATCH_CONTENT_TYPE: Record<PatchType, string> = {
  merge: 'application/merge-patch+json',
  json: 'application/json-patch+json',
  strategic: 'application/strategic-merge-patch+json',
};

export interface KubeRequest {
  readonly method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  readonly path: string;
  readonly query?: Readonly<Record<string, string | number | boolean | undefined>>;
  readonly body?: unknown;
  readonly contentType?: string;
  readonly timeoutMs?: number;
}

/** A failed API call. `statusCode` 0 means the server was not reached (connection refused, reset, timeout). */
export class KubeApiError extends LoopsnapError {
  readonly statusCode: number;
  readonly reason: string;
  /** The response's Retry-After header in seconds, when it had one. */
  readonly retryAfterSeconds: number | undefined;

  constructor(
    statusCode: number,
    reason: string,
    message: string,
    options?: { cause?: unknown; retryAfterSeconds?: number },
  ) {
    super(statusCode === 0 ? 'KUBE_UNREACHABLE' : `KUBE_HTTP_${statusCode}`, message, options);
    this.statusCode = statusCode;
    this.reason = reason;
    this.retryAfterSeconds = options?.retryAfterSeconds;
  }
}

/** 429 answers retried per request (client-go: 10), and the longest Retry-After honoured. */
export const MAX_THROTTLE_RETRIES = 5;
export const MAX_RETRY_AFTER_SECONDS = 10;

export const isNotFound = (err: unknown): boolean => err instanceof KubeApiError && err.statusCode === 404;
export const isConflict = (err: unknown): boolean => err instanceof KubeApiError && err.statusCode === 409;
export const isAlreadyExists = (err: unknown): boolean =>
  err instanceof KubeApiError && err.statusCode === 409 && err.reason === 'AlreadyExists';

/** Throttles requests: `qps` tokens per second, up to `burst` saved. */
export class TokenBucket {
  private tokens: number;
  private last = Date.now();
  private readonly waiters: Array<() => void> = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly qps: number,
    private readonly burst: number,
  ) {
    this.tokens = burst;
  }

  async take(): Promise<void> {
    this.refill();
    if (this.waiters.length === 0 && this.tokens >= 1) {
      this.tokens -= 1;
      return;
    }
    await new Promise<void>((resolve) => {
      this.waiters.push(resolve);
      this.schedule();
    });
  }

  private refill(): void {
    const now = Date.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.qps);
    this.last = now;
  }

  private schedule(): void {
    if (this.timer) return;
    const waitMs = Math.max(1, Math.ceil(((1 - this.tokens) / this.qps) * 1000));
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.refill();
      while (this.waiters.length > 0 && this.tokens >= 1) {
        this.tokens -= 1;
        this.waiters.shift()?.();
      }
      if (this.waiters.length > 0) this.schedule();
    }, waitMs);
  }
}

export interface KubeRestOptions {
  /** Client-side throttle; none when absent. */
  readonly rateLimit?: { readonly qps: number; readonly burst: number };
  /** Per-request timeout (default 30 s). */
  readonly timeoutMs?: number;
  readonly userAgent?: string;
}

export class KubeRest {
  private readonly server: URL;
  private readonly agent: http.Agent;
  private readonly limiter: TokenBucket | undefined;
  private readonly timeoutMs: number;
  private readonly userAgent: string;

  private constructor(
    private readonly kc: KubeConfig,
    tlsOpts: https.AgentOptions,
    opts: KubeRestOptions,
  ) {
    const cluster = kc.getCurrentCluster();
    if (!cluster) throw new LoopsnapError('KUBE_NO_CLUSTER', 'kubeconfig has no current cluster');
    this.server = new URL(cluster.server);
    const agentOpts = { keepAlive: true, maxSockets: 64 };
    this.agent =
      this.server.protocol === 'https:'
        ? new https.Agent({ ...tlsOpts, ...agentOpts })
        : new http.Agent({ ...agentOpts, keepAlive: true });
    this.limiter = opts.rateLimit ? new TokenBucket(opts.rateLimit.qps, opts.rateLimit.burst) : undefined;
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    this.userAgent = opts.userAgent ?? 'loopsnap';
  }

  static async fromKubeConfig(kc: KubeConfig, opts: KubeRestOptions = {}): Promise<KubeRest> {
    const o: https.RequestOptions = {};
    await kc.applyToHTTPSOptions(o);
    const tls: https.AgentOptions = {};
    if (o.ca) tls.ca = o.ca;
    if (o.cert) tls.cert = o.cert;
    if (o.key) tls.key = o.key;
    if (o.rejectUnauthorized !== undefined) tls.rejectUnauthorized = o.rejectUnauthorized;
    if (o.servername) tls.servername = o.servername;
    return new KubeRest(kc, tls, opts);
  }

  close(): void {
    this.agent.destroy();
  }

  /**
   * One API call. A 429 (the API server's priority and fairness, or a webhook) is retried after its
   * Retry-After, as client-go does: up to MAX_THROTTLE_RETRIES times, each wait capped at
   * MAX_RETRY_AFTER_SECONDS; then the 429 is the caller's.
   */
  async request<T>(req: KubeRequest): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.requestOnce<T>(req);
      } catch (err) {
        if (!(err instanceof KubeApiError) || err.statusCode !== 429 || attempt >= MAX_THROTTLE_RETRIES) throw err;
        const waitS = Math.min(err.retryAfterSeconds ?? 1, MAX_RETRY_AFTER_SECONDS);
        await new Promise((r) => setTimeout(r, waitS * 1000));
      }
    }
  }

  private async requestOnce<T>(req: KubeRequest): Promise<T> {
    if (this.limiter) await this.limiter.take();
    const authOpts: https.RequestOptions = { headers: {} };
    await this.kc.applyToHTTPSOptions(authOpts);
    const url = new URL(this.server.toString().replace(/\/$/, '') + req.path);
    for (const [k, v] of Object.entries(req.query ?? {})) if (v !== undefined) url.searchParams.set(k, String(v));
    const body = req.body === undefined ? undefined : Buffer.from(toJson(req.body));
    const headers: Record<string, string> = {
      accept: 'application/json',
      'user-agent': this.userAgent,
    };
    for (const [k, v] of Object.entries(authOpts.headers ?? {})) if (typeof v === 'string') headers[k] = v;
    if (authOpts.auth) headers.authorization = `Basic ${Buffer.from(authOpts.auth).toString('base64')}`;
    if (body) {
      headers['content-type'] = req.contentType ?? 'application/json';
      headers['content-length'] = String(body.length);
    }
    const mod = url.protocol === 'https:' ? https : http;
    const timeoutMs = req.timeoutMs ?? this.timeoutMs;
    return new Promise<T>((resolve, reject) => {
      const r = mod.request(url, { method: req.method, headers, agent: this.agent }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', (err) => reject(unreachable(req, err)));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          const status = res.statusCode ?? 0;
          let parsed: unknown;
          try {
            parsed = text.length > 0 ? JSON.parse(text) : undefined;
          } catch {
            parsed = undefined;
          }
          if (status >= 200 && status < 300) {
            resolve(parsed as T);
            return;
          }
          const st = (parsed ?? {}) as { reason?: string; message?: string };
          const retryAfter = Number(res.headers['retry-after']);
          reject(
            new KubeApiError(
              status,
              st.reason ?? res.statusMessage ?? '',
              `${req.method} ${req.path}: ${status} ${st.message ?? text.slice(0, 200)}`,
              Number.isFinite(retryAfter) && retryAfter >= 0 ? { retryAfterSeconds: retryAfter } : {},
            ),
          );
        });
      });
      r.setTimeout(timeoutMs, () => r.destroy(new Error(`timed out after ${timeoutMs} ms`)));
      r.on('error', (err) => reject(unreachable(req, err)));
      if (body) r.write(body);
      r.end();
    });
  }

  get<T>(path: string, query?: KubeRequest['query']): Promise<T> {
    return this.request<T>({ method: 'GET', path, ...(query ? { query } : {}) });
  }

  create<T>(path: string, body: unknown): Promise<T> {
    return this.request<T>({ method: 'POST', path, body });
  }

  replace<T>(path: string, body: unknown): Promise<T> {
    return this.request<T>({ method: 'PUT', path, body });
  }

  patch<T>(path: string, body: unknown, type: PatchType = 'merge'): Promise<T> {
    return this.request<T>({ method: 'PATCH', path, body, contentType: PATCH_CONTENT_TYPE[type] });
  }

  /** Deletes; it is not an error when the object is already gone (returns false then). */
  async delete(path: string, opts?: { preconditionUid?: string }): Promise<boolean> {
    const body = opts?.preconditionUid
      ? { kind: 'DeleteOptions', preconditions: { uid: opts.preconditionUid } }
      : undefined;
    try {
      await this.request({ method: 'DELETE', path, ...(body ? { body } : {}) });
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw err;
    }
  }
}

const BIGINT_MARK = '\u0000bigint:';

/** JSON with bigint values written as exact integers (int64 fields such as nanosecond timestamps). */
export function toJson(value: unknown): string {
  let sawBigint = false;
  const text = JSON.stringify(value, (_k, v: unknown) => {
    if (typeof v !== 'bigint') return v;
    sawBigint = true;
    return `${BIGINT_MARK}${v}`;
  });
  return sawBigint ? text.replace(/"\\u0000bigint:(-?\d+)"/g, '$1') : text;
}

function unreachable(req: KubeRequest, err: unknown): KubeApiError {
  const msg = err instanceof Error ? err.message : String(err);
  return new KubeApiError(0, 'Unreachable', `${req.method} ${req.path}: ${msg}`, { cause: err });
}

/** RFC 3339 with microseconds, the wire format of metav1.MicroTime. */
export function microTime(d: Date = new Date()): string {
  return d.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
}
