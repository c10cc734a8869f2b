// SPDX-License-Identifier: Apache-2.0
import { describe, expect, it } from 'vitest';
import { ConfigError, FLAGS, helpText, parseConfig, socketPath } from './config.js';

const base = ['--node-id', 'n1'];

describe('parseConfig', () => {
  it('8-1 defaults, and the result is frozen', () => {
    const c = parseConfig(base);
    expect(c).toMatchObject({
      nodeId: 'n1',
      driverName: 'csi.loopsnap.dev',
      endpoint: 'unix:///run/loopsnap/csi.sock',
      stateDir: '/var/lib/loopsnap',
      tcpEndpoint: '',
      blockSizeBytes: 4096,
      insecureTcp: false,
    });
    expect(Object.isFrozen(c)).toBe(true);
    expect(socketPath(c)).toBe('/run/loopsnap/csi.sock');
  });

  it('8-2 both flag spellings, bare booleans', () => {
    const c = parseConfig([
      ...base,
      '--state-dir=/s',
      '--fuse-workers',
      '4',
      '--tcp-endpoint',
      '127.0.0.1:0',
      '--insecure-tcp',
    ]);
    expect(c).toMatchObject({ stateDir: '/s', fuseWorkers: 4, tcpEndpoint: '127.0.0.1:0', insecureTcp: true });
    expect(parseConfig([...base, '--insecure-tcp=false']).insecureTcp).toBe(false);
  });

  it.each([
    ['8-3a no node id', [], /no node id provided/],
    ['8-3b unknown flag', [...base, '--nope'], /unknown flag --nope/],
    ['8-3c missing value', [...base, '--state-dir'], /needs a value/],
    ['8-3d bad integer', [...base, '--fuse-workers', 'two'], /non-negative integer/],
    ['8-3e relative state dir', [...base, '--state-dir', 'rel'], /absolute/],
    ['8-3f tcp endpoint', [...base, '--endpoint', 'tcp://x:1'], /unix:\/\/\//],
    ['8-3g TLS required', [...base, '--tcp-endpoint', ':9820'], /needs --tls-cert-file/],
    ['8-3h block size', [...base, '--block-size-bytes', '3000'], /power of two/],
    ['8-3i fs type', [...base, '--default-fs-type', 'btrfs'], /ext4 or xfs/],
    ['8-3j registry without endpoint', [...base, '--in-cluster'], /needs --tcp-endpoint/],
    ['8-3k positional', [...base, 'extra'], /unexpected argument/],
    ['8-3l lease too short', [...base, '--node-lease-duration-seconds', '1'], /between 2 and 3600/],
  ])('%s', (_n, argv, message) => {
    expect(() => parseConfig(argv)).toThrow(ConfigError);
    expect(() => parseConfig(argv)).toThrow(message);
  });

  it('8-6 node lease duration', () => {
    expect(parseConfig(base).nodeLeaseDurationSeconds).toBe(40);
    expect(parseConfig([...base, '--node-lease-duration-seconds=6']).nodeLeaseDurationSeconds).toBe(6);
  });

  it('8-4 TLS files satisfy the TCP endpoint', () => {
    const c = parseConfig([
      ...base,
      '--tcp-endpoint',
      ':9820',
      '--tls-cert-file',
      'c',
      '--tls-key-file',
      'k',
      '--tls-client-ca-file',
      'ca',
    ]);
    expect(c).toMatchObject({ tlsCertFile: 'c', tlsKeyFile: 'k', tlsClientCaFile: 'ca' });
  });

  describe('kubelet registration', () => {
    const sock = '/var/lib/kubelet/plugins_registry/csi.loopsnap.dev-reg.sock';
    const path = '/var/lib/kubelet/plugins/csi.loopsnap.dev/csi.sock';

    it('8-7 off by default; both flags together turn it on', () => {
      expect(parseConfig(base)).toMatchObject({ kubeletRegistrationSocket: '', kubeletRegistrationPath: '' });
      const c = parseConfig([...base, `--kubelet-registration-socket=${sock}`, '--kubelet-registration-path', path]);
      expect(c).toMatchObject({ kubeletRegistrationSocket: sock, kubeletRegistrationPath: path });
    });

    it.each([
      ['8-8a socket without path', [`--kubelet-registration-socket=${sock}`], /needs --kubelet-registration-path/],
      ['8-8b path without socket', [`--kubelet-registration-path=${path}`], /needs --kubelet-registration-socket/],
      [
        '8-8c relative socket',
        ['--kubelet-registration-socket=reg.sock', `--kubelet-registration-path=${path}`],
        /--kubelet-registration-socket must be an absolute path/,
      ],
      [
        '8-8d path as a URL',
        [`--kubelet-registration-socket=${sock}`, `--kubelet-registration-path=unix://${path}`],
        /--kubelet-registration-path must be an absolute path \(no unix:\/\/ prefix\)/,
      ],
      [
        '8-8e socket path too long',
        [`--kubelet-registration-socket=/${'x'.repeat(107)}`, `--kubelet-registration-path=${path}`],
        /is 108 bytes long; unix socket paths are limited to 107/,
      ],
      [
        '8-8f hidden file name',
        ['--kubelet-registration-socket=/r/.reg.sock', `--kubelet-registration-path=${path}`],
        /must not name a file starting with "\."/,
      ],
      [
        '8-8g same socket as --endpoint',
        ['--kubelet-registration-socket=/run/loopsnap/csi.sock', `--kubelet-registration-path=${path}`],
        /must differ from --endpoint's socket/,
      ],
    ])('%s', (_n, argv, message) => {
      expect(() => parseConfig([...base, ...argv])).toThrow(ConfigError);
      expect(() => parseConfig([...base, ...argv])).toThrow(message);
    });
  });

  it('8-9 kubelet dir (default /var/lib/kubelet) and path timeout', () => {
    expect(parseConfig(base)).toMatchObject({ kubeletDir: '/var/lib/kubelet', pathTimeoutSeconds: 10 });
    const c = parseConfig([...base, '--kubelet-dir=/var/lib/k0s/kubelet', '--path-timeout-seconds', '3']);
    expect(c).toMatchObject({ kubeletDir: '/var/lib/k0s/kubelet', pathTimeoutSeconds: 3 });
  });

  it.each([
    ['8-10a relative kubelet dir', ['--kubelet-dir', 'kubelet'], /absolute path/],
    ['8-10b root', ['--kubelet-dir', '/'], /system directory/],
    ['8-10c /etc', ['--kubelet-dir', '/etc/kubelet'], /system directory/],
    ['8-10d /proc', ['--kubelet-dir', '/proc/1/root'], /system directory/],
    ['8-10e dot-dot', ['--kubelet-dir', '/var/lib/../etc'], /without \. or \.\./],
    ['8-10f zero timeout', ['--path-timeout-seconds', '0'], /between 1 and 600/],
  ])('%s', (_n, argv, message) => {
    expect(() => parseConfig([...base, ...argv])).toThrow(message);
  });

  it('8-5 help lists every flag with its default', () => {
    const h = helpText();
    for (const name of Object.keys(FLAGS)) expect(h).toContain(`--${name}`);
    expect(h).toContain('(default csi.loopsnap.dev)');
  });
});
