// SPDX-License-Identifier: Apache-2.0
// `npm run bench -- meta-bitmap --json`: what the trim before a meta-bitmap cut (ADR 0013) saves and costs,
// against save-volume (the baseline) and against the alternative, online `discard`, in the same run. One node
// plugin per variant, real data path (loop -> FUSE -> engine), ext4 and xfs.
//
// Workload per file system and variant, on a nearly full volume (ext4 560 MiB, xfs 640 MiB): 8 files of
// 64 MiB (fsync), half of them deleted, cut S1, 4 new files of 64 MiB (they land in the freed blocks), cut S2.
//
//   growth_mib_<fs>_<variant>          save-pool growth while the new files are written (what keeping S1 costs)
//   meta_bitmap_saved_ratio_<fs>       growth of meta-bitmap (trim before the cut) / growth of save-volume
//   meta_bitmap_saved_ratio            the larger of the two file systems
//   online_discard_saved_ratio_<fs>    growth of meta-bitmap with `discard` mounted and no trim / save-volume
//   write_mb_s_<fs>_<variant>          throughput of writing the new files (4 x 64 MiB, each fsync'd)
//   rm_ms_<fs>_<variant>               deleting the 4 files plus sync
//   cut_ms_<fs>_<variant>              CreateSnapshot wall time of S1 (the trim included for meta-bitmap)
//   trim_cut_ms_p99_<fs>               p99 of 20 meta-bitmap CreateSnapshot calls, each after 8 MiB freed
//   cut_ms_p99_<fs>                    the same 20 cuts as save-volume (no trim): the baseline
//   trim_cut_vs_baseline_<fs>          trim_cut_ms_p99 / cut_ms_p99
//   trim_cut_ms_p99                    the larger of the two file systems
//
// Variants: save-volume, meta-bitmap (the product: trim before the cut), meta-bitmap-discard (mounted with
// `discard`, plugin started with --trim-before-cut=false).
import { randomBytes } from 'node:crypto';
import { mkdir, open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { cleanupPluginDir, csiCall, isRoot, NodePlugin } from '../test/support/node-plugin.js';
import type { BenchContext, BenchSuite } from './suite.js';

const execFileP = promisify(execFile);
const MiB = 1024 * 1024;
const VOLUME_BYTES: Record<string, number> = { ext4: 560 * MiB, xfs: 640 * MiB };
const FILE_BYTES = 64 * MiB;
const CUTS = 20;
const round = (n: number, digits = 1): number => Math.round(n * 10 ** digits) / 10 ** digits;

type Variant = 'save-volume' | 'meta-bitmap' | 'meta-bitmap-discard';
const VARIANTS: readonly Variant[] = ['save-volume', 'meta-bitmap', 'meta-bitmap-discard'];

function p99(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(0.99 * s.length) - 1)] ?? 0;
}

async function writeFile(path: string, data: Uint8Array): Promise<void> {
  const fh = await open(path, 'w');
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

interface Mounted {
  readonly volumeId: string;
  readonly staging: string;
  readonly target: string;
}

async function mountVolume(p: NodePlugin, name: string, fsType: string, flags: string[]): Promise<Mounted> {
  const cap = { mount: { fs_type: fsType, mount_flags: flags }, access_mode: { mode: 'SINGLE_NODE_WRITER' } };
  const r = await csiCall<{ volume: { volume_id: string } }>(p.clients.controller, 'CreateVolume', {
    name,
    capacity_range: { required_bytes: String(VOLUME_BYTES[fsType]) },
    volume_capabilities: [cap],
  });
  const volumeId = r.volume.volume_id;
  const staging = join(p.dir, 'kubelet', volumeId, 'staging');
  const target = join(p.dir, 'kubelet', volumeId, 'target');
  await mkdir(staging, { recursive: true });
  await csiCall(p.clients.node, 'NodeStageVolume', {
    volume_id: volumeId,
    staging_target_path: staging,
    volume_capability: cap,
  });
  await csiCall(p.clients.node, 'NodePublishVolume', {
    volume_id: volumeId,
    staging_target_path: staging,
    target_path: target,
    volume_capability: cap,
  });
  return { volumeId, staging, target };
}

async function unmountVolume(p: NodePlugin, v: Mounted): Promise<void> {
  await csiCall(p.clients.node, 'NodeUnpublishVolume', { volume_id: v.volumeId, target_path: v.target });
  await csiCall(p.clients.node, 'NodeUnstageVolume', { volume_id: v.volumeId, staging_target_path: v.staging });
}

async function savePoolUsed(metricsUrl: string, volumeId: string): Promise<number> {
  const text = await (await fetch(metricsUrl)).text();
  const m = new RegExp(`^loopsnap_save_pool_used_bytes\\{volume_id="${volumeId}"\\} (\\d+)$`, 'm').exec(text);
  if (!m) throw new Error(`no save-pool gauge for ${volumeId}`);
  return Number(m[1]);
}

async function cut(p: NodePlugin, name: string, volumeId: string, method: string): Promise<number> {
  const t0 = performance.now();
  await csiCall(p.clients.controller, 'CreateSnapshot', { name, source_volume_id: volumeId, parameters: { method } });
  return performance.now() - t0;
}

interface VariantResult {
  growthBytes: number;
  writeMbS: number;
  rmMs: number;
  cutMs: number;
  cutP99Ms: number;
}

async function runVariant(ctx: BenchContext, fsType: string, variant: Variant): Promise<VariantResult> {
  const method = variant === 'save-volume' ? 'save-volume' : 'meta-bitmap';
  const p = await NodePlugin.start({
    nodeId: `bench-${variant}`,
    args: ['--http-endpoint', '127.0.0.1:0', ...(variant === 'meta-bitmap-discard' ? ['--trim-before-cut=false'] : [])],
  });
  try {
    const port = p.lines.find((l) => l.msg === 'Serving metrics and health endpoints')?.port;
    const metricsUrl = `http://127.0.0.1:${String(port)}/metrics`;
    const v = await mountVolume(p, 'bench', fsType, variant === 'meta-bitmap-discard' ? ['discard'] : []);
    const data = randomBytes(FILE_BYTES);
    for (let i = 0; i < 8; i++) {
      data[0] = i;
      await writeFile(join(v.target, `f${i}`), data);
    }
    const t0 = performance.now();
    for (let i = 0; i < 4; i++) await rm(join(v.target, `f${i}`));
    await execFileP('sync', ['-f', v.target]);
    const rmMs = performance.now() - t0;
    const cutMs = await cut(p, 's1', v.volumeId, method);
    const before = await savePoolUsed(metricsUrl, v.volumeId);
    const t1 = performance.now();
    for (let i = 0; i < 4; i++) {
      data[0] = 100 + i;
      await writeFile(join(v.target, `n${i}`), data);
    }
    const writeMbS = (4 * FILE_BYTES) / MiB / ((performance.now() - t1) / 1000);
    const growthBytes = (await savePoolUsed(metricsUrl, v.volumeId)) - before;
    await cut(p, 's2', v.volumeId, method);
    // Cut latency: each cut after 8 MiB written and 8 MiB freed (room made first: the volume is full).
    for (let i = 0; i < 4; i++) await rm(join(v.target, `n${i}`));
    const small = randomBytes(8 * MiB);
    const samples: number[] = [];
    for (let i = 0; i < CUTS; i++) {
      await writeFile(join(v.target, `c${i}`), small);
      if (i > 0) await rm(join(v.target, `c${i - 1}`));
      samples.push(await cut(p, `c${i}`, v.volumeId, method));
    }
    ctx.log(
      `[meta-bitmap] ${fsType} ${variant}: growth ${round(growthBytes / MiB)} MiB, write ${round(writeMbS)} MB/s, ` +
        `rm ${round(rmMs)} ms, S1 cut ${round(cutMs)} ms, cut p99 ${round(p99(samples))} ms`,
    );
    await unmountVolume(p, v);
    return { growthBytes, writeMbS, rmMs, cutMs, cutP99Ms: p99(samples) };
  } finally {
    await p.stop();
    await cleanupPluginDir(p.dir);
  }
}

async function run(ctx: BenchContext): Promise<Record<string, number | string | boolean | null>> {
  if (!isRoot) throw new Error('the meta-bitmap benchmark runs a real node plugin: it needs root (loop devices, FUSE)');
  const out: Record<string, number> = {};
  for (const fsType of ['ext4', 'xfs']) {
    const r: Partial<Record<Variant, VariantResult>> = {};
    for (const variant of VARIANTS) {
      const x = await runVariant(ctx, fsType, variant);
      r[variant] = x;
      out[`growth_mib_${fsType}_${variant}`] = round(x.growthBytes / MiB);
      out[`write_mb_s_${fsType}_${variant}`] = round(x.writeMbS);
      out[`rm_ms_${fsType}_${variant}`] = round(x.rmMs);
      out[`cut_ms_${fsType}_${variant}`] = round(x.cutMs);
    }
    const sv = r['save-volume']!;
    out[`meta_bitmap_saved_ratio_${fsType}`] = round(r['meta-bitmap']!.growthBytes / sv.growthBytes, 4);
    out[`online_discard_saved_ratio_${fsType}`] = round(r['meta-bitmap-discard']!.growthBytes / sv.growthBytes, 4);
    out[`trim_cut_ms_p99_${fsType}`] = round(r['meta-bitmap']!.cutP99Ms);
    out[`cut_ms_p99_${fsType}`] = round(sv.cutP99Ms);
    out[`trim_cut_vs_baseline_${fsType}`] = round(r['meta-bitmap']!.cutP99Ms / sv.cutP99Ms, 2);
    out[`discard_write_vs_trim_${fsType}`] = round(r['meta-bitmap-discard']!.writeMbS / r['meta-bitmap']!.writeMbS, 2);
  }
  out.meta_bitmap_saved_ratio = Math.max(out.meta_bitmap_saved_ratio_ext4!, out.meta_bitmap_saved_ratio_xfs!);
  out.trim_cut_ms_p99 = Math.max(out.trim_cut_ms_p99_ext4!, out.trim_cut_ms_p99_xfs!);
  return out;
}

export const metaBitmapSuite: BenchSuite = {
  description: 'meta-bitmap: save-pool growth with the trim before the cut vs save-volume and online discard',
  run,
};
