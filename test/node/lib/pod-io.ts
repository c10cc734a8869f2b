// SPDX-License-Identifier: Apache-2.0
// Data in and out of a pod's volume with kubectl exec and busybox only: checksummed files under /data, ranges
// of a raw block device (DEVICE) written from /dev/urandom, checksums of ranges and bytes read back. Block writes are O_DIRECT with an fsync, so they are on the device when the call returns.
import { execFileSync } from 'node:child_process';
import { toolBin } from '../../support/cluster.js';
import type { RealCluster } from '../../support/real-node.js';
import { DEVICE, exec } from './workloads.js';

export const MiB = 1 << 20;

/** `sh -c script` in the pod with binary stdin and stdout. */
export function execBytes(c: RealCluster, pod: string, script: string, input?: Buffer): Buffer {
  const args = ['--kubeconfig', c.kubeconfigPath, '-n', c.namespace, 'exec', ...(input ? ['-i'] : [])];
  try {
    return execFileSync(toolBin('kubectl'), [...args, pod, '--', 'sh', '-c', script], {
      input,
      stdio: ['pipe', 'pipe', 'pipe'],
      maxBuffer: 1 << 30,
      timeout: 600_000,
    });
  } catch (err) {
    const e = err as { stderr?: Buffer; message: string };
    throw new Error(`kubectl exec ${pod} failed: ${e.stderr?.toString().trim() || e.message}`, { cause: err });
  }
}

function parseSums(out: string): Record<string, string> {
  const sums: Record<string, string> = {};
  for (const line of out.trim().split('\n').filter(Boolean)) {
    const [sum, path] = line.trim().split(/\s+/);
    sums[path!.replace(/^\/data\//, '')] = sum!;
  }
  return sums;
}

/** (Over)writes /data/<prefix>-<i>.bin with sizes[i] random bytes, synced; name -> sha256. */
export function writeFiles(c: RealCluster, pod: string, sizes: readonly number[], prefix = 'file') {
  const names = sizes.map((_, i) => `/data/${prefix}-${i}.bin`);
  const write = sizes.map((s, i) => `head -c ${s} /dev/urandom > ${names[i]}`).join(' && ');
  return parseSums(exec(c, pod, `${write} && sync && sha256sum ${names.join(' ')}`));
}

/** sha256 of every regular file directly under /data (lost+found is a directory); name -> sha256. */
export function fileSums(c: RealCluster, pod: string): Record<string, string> {
  return parseSums(exec(c, pod, 'for f in /data/*; do [ -f "$f" ] && sha256sum "$f"; done; true'));
}

/** Writes `length` bytes from /dev/urandom at `offset` of the pod's device; their sha256. */
export function writeRandomAt(c: RealCluster, pod: string, offset: number, length: number): string {
  const script = `set -e; head -c ${length} /dev/urandom > /tmp/chunk
dd if=/tmp/chunk of=${DEVICE} bs=1M seek=${offset} oflag=seek_bytes,direct conv=notrunc,fsync 2>/dev/null
sha256sum < /tmp/chunk; rm /tmp/chunk`;
  return exec(c, pod, script).trim().split(/\s+/)[0]!;
}

/**
 * sha256 of `length` bytes at `offset` of the pod's device (or of another file of the pod), read through the
 * page cache as a program would.
 */
export function sumAt(c: RealCluster, pod: string, offset: number, length: number, path = DEVICE): string {
  const script = `dd if=${path} bs=1M skip=${offset} count=${length} iflag=skip_bytes,count_bytes 2>/dev/null | sha256sum`;
  return exec(c, pod, script).trim().split(/\s+/)[0]!;
}

export function readBytesAt(c: RealCluster, pod: string, offset: number, length: number, path = DEVICE): Buffer {
  const script = `dd if=${path} bs=1M skip=${offset} count=${length} iflag=skip_bytes,count_bytes 2>/dev/null`;
  return execBytes(c, pod, script);
}

/** Size of the pod's device in bytes. */
export function deviceBytes(c: RealCluster, pod: string): number {
  return Number(exec(c, pod, `blockdev --getsize64 ${DEVICE}`).trim());
}
