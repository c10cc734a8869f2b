// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from 'vitest';
import { parseConfig, parseDuration, usage } from './config.js';

const env = { hostname: 'h', pid: 7 };
const tls = ['--tls-ca-file', 'ca', '--tls-cert-file', 'c', '--tls-key-file', 'k'];

describe('controller flags', () => {
  it('3-1 - defaults follow upstream snapshot-controller where a flag exists', () => {
    const c = parseConfig(tls, { ...env, KUBECONFIG: '/k' });
    expect(c).toMatchObject({
      kubeconfig: '/k',
      driverName: 'csi.loopsnap.dev',
      namespace: 'kube-system',
      registryNamespace: 'kube-system',
      leaderElection: true,
      leaderElectionId: 'loopsnap-controller-leader',
      leaderElectionIdentity: 'h_7',
      leaderElectionLeaseDurationMs: 15_000,
      leaderElectionRenewDeadlineMs: 10_000,
      workerThreads: 10,
      retryIntervalStartMs: 1000,
      retryIntervalMaxMs: 300_000,
      timeoutMs: 60_000,
      metricsPath: '/metrics',
      snapshotNamePrefix: 'snapshot',
    });
    expect(Object.isFrozen(c)).toBe(true);
  });

  it('3-2 - accepts --flag=value, --flag value and bare booleans', () => {
    const c = parseConfig(
      [...tls, '--namespace=ls', '--worker-threads', '3', '--insecure-node-connections', '--leader-election=false'],
      env,
    );
    expect(c).toMatchObject({
      namespace: 'ls',
      registryNamespace: 'ls',
      leaderElectionNamespace: 'ls',
      workerThreads: 3,
      leaderElection: false,
    });
  });

  it.each([
    [['--worker-threads', '0'], /--worker-threads must be a positive integer/],
    [['--bogus'], /unknown flag --bogus/],
    [['--timeout', 'soon'], /--timeout: invalid duration "soon"/],
    [['--retry-interval-start', '10m', '--retry-interval-max', '1m'], /must not exceed/],
    [['--leader-election-renew-deadline', '20s'], /renew-deadline must be shorter/],
    [['--http-endpoint', 'nope'], /host:port/],
    [['positional'], /unexpected argument "positional"/],
  ])('3-3 - rejects %j with a one-line reason', (args, re) => {
    expect(() => parseConfig([...tls, ...args], env)).toThrow(re);
  });

  it('3-4 - requires mutual TLS material unless insecure connections are asked for', () => {
    expect(() => parseConfig([], env)).toThrow(/--tls-ca-file, --tls-cert-file and --tls-key-file are required/);
    expect(parseConfig(['--insecure-node-connections'], env).insecureNodeConnections).toBe(true);
  });

  it('3-5 - durations: 500ms, 15s, 5m, 1h, 1m30s', () => {
    expect(['500ms', '15s', '5m', '1h', '1m30s'].map(parseDuration)).toEqual([500, 15_000, 300_000, 3_600_000, 90_000]);
    expect(() => parseDuration('')).toThrow();
    expect(usage()).toContain('--retry-interval-max=<duration>');
  });
});
