// SPDX-License-Identifier: Apache-2.0
// The images hack/image.sh builds: build (a no-op when nothing changed), and read what is inside an OCI archive
// with the system's tar, the way a registry or containerd sees it.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { REPO_ROOT } from '../support/paths.js';

export const IMAGE_SCRIPT = join(REPO_ROOT, 'hack', 'image.sh');
export const IMAGE_DIR = process.env.LOOPSNAP_IMAGE_DIR ?? join(REPO_ROOT, '.loopsnap', 'image');

export interface ImageSummary {
  ref: string;
  manifest: string;
  config: string;
  layers: Array<{ digest: string; size: number; diffId: string; createdBy: string }>;
}

/** A pin of hack/image/versions.env, e.g. imagePin('NODE_VERSION'). */
export function imagePin(key: string): string {
  const text = readFileSync(join(REPO_ROOT, 'hack', 'image', 'versions.env'), 'utf8');
  const m = new RegExp(`^${key}=(\\S+)$`, 'm').exec(text);
  if (!m?.[1]) throw new Error(`${key} is not pinned in hack/image/versions.env`);
  return m[1];
}

/** Runs hack/image.sh with the given arguments; a failure carries its last output lines. */
export function imageSh(args: readonly string[], timeoutMs: number): string {
  try {
    return execFileSync(IMAGE_SCRIPT, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: timeoutMs,
      maxBuffer: 64 << 20,
    })
      .toString()
      .trim();
  } catch (err) {
    const e = err as { stderr?: Buffer; stdout?: Buffer; status?: number };
    const tail = `${e.stdout?.toString() ?? ''}${e.stderr?.toString() ?? ''}`.trim().split('\n').slice(-25).join('\n');
    throw new Error(`hack/image.sh ${args.join(' ')} failed (exit ${e.status ?? '?'}):\n${tail}`, { cause: err });
  }
}

/** Builds `name` when its inputs changed (cold: minutes, needs root for mmdebstrap) and returns its summary. */
export function builtImage(name: 'loopsnap' | 'pause' | 'busybox'): { summary: ImageSummary; archive: string } {
  const ref = imageSh(['build', name], 1_200_000);
  const summary = JSON.parse(readFileSync(join(IMAGE_DIR, `${name}.json`), 'utf8')) as ImageSummary;
  if (summary.ref !== ref) throw new Error(`hack/image.sh build printed ${ref} but ${name}.json says ${summary.ref}`);
  return { summary, archive: join(IMAGE_DIR, `${name}.oci.tar`) };
}

/** The raw bytes of a blob of an OCI archive. */
export function blob(archive: string, digest: string): Buffer {
  return execFileSync('tar', ['-xOf', archive, `blobs/sha256/${digest.replace(/^sha256:/, '')}`], {
    maxBuffer: 1 << 30,
  });
}

export interface LayerEntry {
  readonly path: string; // without a leading ./ or /
  readonly type: 'file' | 'dir' | 'symlink' | 'hardlink' | 'other';
  readonly mode: number;
  readonly linkTarget: string;
  readonly size: number;
}

/** Entries of a gzip layer blob, read with a small ustar/pax reader (names longer than 100 bytes included). */
export function layerEntries(archive: string, digest: string): LayerEntry[] {
  const tar = gunzipSync(blob(archive, digest));
  const out: LayerEntry[] = [];
  let pax: Record<string, string> = {};
  for (let off = 0; off + 512 <= tar.length;) {
    const h = tar.subarray(off, off + 512);
    if (h.every((b) => b === 0)) break;
    const str = (a: number, n: number) =>
      h
        .subarray(a, a + n)
        .toString('utf8')
        .replace(/\0.*$/s, '');
    const size = parseInt(str(124, 12).trim() || '0', 8);
    const typeflag = String.fromCharCode(h[156]!);
    const body = tar.subarray(off + 512, off + 512 + size);
    off += 512 + Math.ceil(size / 512) * 512;
    if (typeflag === 'x') {
      pax = {};
      for (let p = 0; p < body.length;) {
        const sp = body.indexOf(0x20, p);
        const len = parseInt(body.subarray(p, sp).toString(), 10);
        const rec = body.subarray(sp + 1, p + len - 1).toString('utf8');
        const eq = rec.indexOf('=');
        pax[rec.slice(0, eq)] = rec.slice(eq + 1);
        p += len;
      }
      continue;
    }
    if (typeflag === 'g') continue;
    const prefix = str(345, 155);
    const name = pax.path ?? (prefix ? `${prefix}/${str(0, 100)}` : str(0, 100));
    const type =
      typeflag === '0' || typeflag === '\0'
        ? 'file'
        : typeflag === '5'
          ? 'dir'
          : typeflag === '2'
            ? 'symlink'
            : typeflag === '1'
              ? 'hardlink'
              : 'other';
    out.push({
      path: name.replace(/^\.?\//, '').replace(/\/$/, ''),
      type,
      mode: parseInt(str(100, 8).trim() || '0', 8),
      linkTarget: pax.linkpath ?? str(157, 100),
      size,
    });
    pax = {};
  }
  return out;
}

/** Content of one file of a layer. */
export function layerFile(archive: string, digest: string, path: string): Buffer {
  return execFileSync('tar', ['-xzO', path], { input: blob(archive, digest), maxBuffer: 1 << 30 });
}
