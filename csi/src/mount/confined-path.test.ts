// SPDX-License-Identifier: Apache-2.0
import { mkdir, mkdtemp, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../../common/src/log.js';
import { CsiError } from '../errors.js';
import { ConfinedPaths, confinePath, describeListing, isWithin } from './confined-path.js';
import { locate, PathOpError } from './path-ops.js';

const K = ['/var/lib/kubelet'];
const S = ['/var/lib/kubelet/loopsnap'];

function reason(raw: string): string {
  try {
    confinePath('target_path', raw, K, S);
    return 'ok';
  } catch (err) {
    expect(err).toBeInstanceOf(CsiError);
    expect((err as CsiError).code).toBe('CSI_ERR_PATH_NOT_ALLOWED');
    expect((err as CsiError).grpcStatus).toBe('INVALID_ARGUMENT');
    return (err as Error).message;
  }
}

describe('confinePath (lexical)', () => {
  it.each([
    ['1-1 a kubelet pod target', '/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/pv/mount', 'ok'],
    ['1-2 double and trailing slashes normalised', '/var/lib/kubelet//plugins/x/', 'ok'],
    ['1-3 root', '/', 'outside the kubelet directory'],
    ['1-4 /etc', '/etc/passwd', 'outside the kubelet directory'],
    ['1-5 a sibling with the same prefix', '/var/lib/kubelet-evil/x', 'outside the kubelet directory'],
    ['1-6 the kubelet dir itself', '/var/lib/kubelet/', 'the kubelet directory itself'],
    ['1-7 relative', 'pods/x', 'not an absolute path'],
    ['1-8 dot-dot', '/var/lib/kubelet/pods/../../../etc', '".." segment'],
    ['1-9 dot', '/var/lib/kubelet/./pods', '"." segment'],
    ['1-10 NUL', '/var/lib/kubelet/a\0b', 'NUL or control character'],
    ['1-11 newline', '/var/lib/kubelet/a\nb', 'NUL or control character'],
    ['1-12 inside the state dir', '/var/lib/kubelet/loopsnap/fuse/v', "inside the node plugin's state directory"],
    ['1-13 above the state dir', '/var/lib/kubelet/loopsnap', "inside the node plugin's state directory"],
    ['1-14 too long', `/var/lib/kubelet/${'a/'.repeat(2100)}`, 'longer than 4096 bytes'],
    ['1-15 component too long', `/var/lib/kubelet/${'a'.repeat(256)}`, 'component longer than 255 bytes'],
    ['1-16 unicode is fine', '/var/lib/kubelet/pods/ünïcødé/😀', 'ok'],
    ['1-17 empty', '', 'is empty'],
  ])('%s', (_n, raw, want) => {
    expect(reason(raw)).toContain(want);
  });

  it('1-18 components below the root, and an alias of the kubelet dir', () => {
    expect(confinePath('f', '/var/lib/kubelet/a/b', K, S)).toMatchObject({
      root: '/var/lib/kubelet',
      components: ['a', 'b'],
    });
    const c = confinePath('f', '/data/kubelet/a', [...K, '/data/kubelet'], S);
    expect(c).toMatchObject({ root: '/data/kubelet', components: ['a'], path: '/data/kubelet/a' });
  });

  it('1-19 a state dir that contains the path target is refused too', () => {
    expect(() => confinePath('f', '/var/lib/kubelet/x', K, ['/var/lib/kubelet/x/y/state'])).toThrow(/contains/);
  });

  it('1-20 isWithin and describeListing', () => {
    expect(isWithin('/a/b', '/a')).toBe(true);
    expect(isWithin('/ab', '/a')).toBe(false);
    expect(isWithin('/a', '/a')).toBe(true);
    expect(describeListing({ count: 7, names: ['a', 'b'] })).toBe('7 entries: "a", "b", ... (5 more)');
  });
});

describe('ConfinedPaths on a real directory (inline runner)', () => {
  let dir = '';
  let decoy = '';
  let paths: ConfinedPaths;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'loopsnap-confined-'));
    decoy = await mkdtemp(join(tmpdir(), 'loopsnap-decoy-'));
    await mkdir(join(dir, 'k', 'pods', 'p1'), { recursive: true });
    await writeFile(join(decoy, 'precious'), 'x');
    await symlink(decoy, join(dir, 'k', 'pods', 'link'));
    await symlink('/proc', join(dir, 'k', 'proc'));
    paths = new ConfinedPaths({
      policy: { kubeletDir: join(dir, 'k'), stateDir: join(dir, 'state'), timeoutMs: 1000 },
      log: createLogger({ component: 'test', level: 'silent' }),
      runner: 'inline',
    });
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
    await rm(decoy, { recursive: true, force: true });
  });

  const codeOf = (p: Promise<unknown>): Promise<string> =>
    p.then(
      () => 'ok',
      (e: unknown) => (e as CsiError).code,
    );

  it('2-1 a symlink as the last component or as a parent is refused', async () => {
    expect(await codeOf(paths.ensure(paths.confine('t', join(dir, 'k', 'pods', 'link')), 'dir'))).toBe(
      'CSI_ERR_PATH_SYMLINK',
    );
    expect(await codeOf(paths.ensure(paths.confine('t', join(dir, 'k', 'pods', 'link', 'new')), 'dir'))).toBe(
      'CSI_ERR_PATH_SYMLINK',
    );
    expect(await codeOf(paths.inspect(paths.confine('t', join(dir, 'k', 'proc', 'self'))))).toBe(
      'CSI_ERR_PATH_SYMLINK',
    );
    await expect(stat(join(decoy, 'new'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('2-2 a missing parent is PATH_UNUSABLE; inspectIfPresent says null', async () => {
    const c = paths.confine('t', join(dir, 'k', 'nope', 'x'));
    expect(await codeOf(paths.ensure(c, 'dir'))).toBe('CSI_ERR_PATH_UNUSABLE');
    expect(await paths.inspectIfPresent(c)).toBeNull();
  });

  it('2-3 a created directory is removed, an existing one is not ours, content is in the way', async () => {
    const c = paths.confine('t', join(dir, 'k', 'pods', 'p1', 'target'));
    const { created } = await paths.ensure(c, 'dir');
    expect(created?.kind).toBe('dir');
    expect((await paths.ensure(c, 'dir')).created).toBeNull();
    await writeFile(join(dir, 'k', 'pods', 'p1', 'target', 'x.log'), 'x');
    expect(await codeOf(paths.ensure(c, 'dir'))).toBe('CSI_ERR_TARGET_IN_THE_WAY');
    const r = await paths.removeCreated(c, created!);
    expect(r).toMatchObject({ outcome: 'not-empty', listing: { count: 1, names: ['x.log'] } });
    await rm(join(dir, 'k', 'pods', 'p1', 'target', 'x.log'));
    expect(await paths.removeCreated(c, created!)).toEqual({ outcome: 'removed' });
    expect(await paths.removeCreated(c, created!)).toEqual({ outcome: 'gone' });
    // Another directory at the same path is not the one created: kept.
    await mkdir(join(dir, 'k', 'pods', 'p1', 'target'));
    expect(await paths.removeCreated(c, created!)).toEqual({ outcome: 'not-ours' });
  });

  it('2-4 a file target: new is created, a non-empty one is in the way, a directory is the wrong type', async () => {
    const c = paths.confine('t', join(dir, 'k', 'pods', 'p1', 'block'));
    const { created } = await paths.ensure(c, 'file');
    expect(created?.kind).toBe('file');
    await writeFile(join(dir, 'k', 'pods', 'p1', 'block'), 'data');
    expect(await codeOf(paths.ensure(c, 'file'))).toBe('CSI_ERR_TARGET_IN_THE_WAY');
    expect(await paths.removeCreated(c, created!)).toMatchObject({ outcome: 'not-empty', size: 4 });
    expect(await codeOf(paths.ensure(paths.confine('t', join(dir, 'k', 'pods', 'p1')), 'file'))).toBe(
      'CSI_ERR_TARGET_IN_THE_WAY',
    );
  });

  it('2-5 a walk into procfs is refused as a special file system', () => {
    expect(() => locate('/proc', ['self', 'x'])).toThrow(PathOpError);
    try {
      locate('/proc', ['self', 'x']);
    } catch (err) {
      expect((err as PathOpError).failure).toMatchObject({ reason: 'special-fs', fsType: 'proc' });
    }
  });

  it.skipIf(process.getuid?.() !== 0)(
    '2-6 the file system parses mount options (fsopen + fsconfig, root)',
    async () => {
      expect(await paths.checkFsOptions('ext4', ['noatime', 'errors=remount-ro', 'discard'])).toBeNull();
      expect(await paths.checkFsOptions('ext4', ['foo'])).toMatchObject({ option: 'foo', reason: /Unknown parameter/ });
      expect(await paths.checkFsOptions('xfs', ['nouuid', 'bogus=1'])).toMatchObject({ option: 'bogus=1' });
    },
  );
});
