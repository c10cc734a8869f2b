// SPDX-License-Identifier: Apache-2.0
// Parser for /proc/self/mountinfo (proc(5)):
//   36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//   (1)(2) (3)   (4)   (5)      (6)      (7)   (8) (9)    (10)        (11)
// Fields 4, 5 and 10 escape space, tab, newline and backslash as \ooo octal.
import { readFile } from 'node:fs/promises';

export interface MountEntry {
  readonly id: number;
  readonly parentId: number;
  readonly major: number;
  readonly minor: number;
  /** Root of the mount within its file system ("/" unless a bind mount of a subtree). */
  readonly root: string;
  readonly mountPoint: string;
  readonly options: string;
  readonly fsType: string;
  readonly source: string;
  readonly superOptions: string;
}

export function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(Number.parseInt(oct, 8)));
}

export function parseMountInfo(text: string): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const parts = line.split(' ');
    const sep = parts.indexOf('-', 6);
    if (sep < 0 || parts.length < sep + 3) continue;
    const [maj, min] = (parts[2] ?? '').split(':');
    out.push({
      id: Number(parts[0]),
      parentId: Number(parts[1]),
      major: Number(maj),
      minor: Number(min),
      root: unescapeMountField(parts[3] ?? ''),
      mountPoint: unescapeMountField(parts[4] ?? ''),
      options: parts[5] ?? '',
      fsType: parts[sep + 1] ?? '',
      source: unescapeMountField(parts[sep + 2] ?? ''),
      superOptions: parts[sep + 3] ?? '',
    });
  }
  return out;
}

export async function readMountInfo(): Promise<MountEntry[]> {
  return parseMountInfo(await readFile('/proc/self/mountinfo', 'utf8'));
}

/** The mount entries whose mount point is exactly `path` (the last one is on top). */
export async function mountsAt(path: string): Promise<MountEntry[]> {
  return (await readMountInfo()).filter((m) => m.mountPoint === path);
}

export async function isMountPoint(path: string): Promise<boolean> {
  return (await mountsAt(path)).length > 0;
}
