// SPDX-License-Identifier: Apache-2.0
// `npm run bench -- restart --json`: how long pods' I/O pauses when the node plugin restarts under its keeper
// (ADR 0011), and whether any write fails. One node plugin with --keeper; 1, 8 and 32 volumes (ext4 and raw
// block alternating), each with a record writer (4 KiB O_DIRECT|O_DSYNC writes, every acknowledgement
// logged, any error fatal). Per volume count: `--restarts` SIGKILLs of the serving process (a crash) and as
// many upgrades by handover (a second keeper on the same state dir, then SIGTERM to the first, as a surging
// DaemonSet rollout does).
//
//   restart_pause_ms_p99_upgrade / _kill   p99 over every writer and restart of the longest gap between two
//                                          acknowledgements around the restart (all volume counts)
//   restart_pause_ms_max_{upgrade,kill}_<n>vols  the longest such gap with n volumes
//   steady_gap_ms_p99                      the same measure over an equal window without a restart, same
//                                          run (the baseline: what a writer sees anyway on this machine)
//   pause_vs_steady_{upgrade,kill}         restart p99 / steady p99
//   pause_vs_target_{upgrade,kill}         restart p99 / the target (2000 ms upgrade, 5000 ms crash)
//   restart_io_errors                      writers that saw an error (each stops at its first)
//   restart_lost_writes                    acknowledged records not read back intact afterwards
//
// Flags: --restarts N (per kind and volume count, default 5), --volumes 1,8,32.
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { capability } from '../test/csi/volumes.js';
import { cleanupPluginDir, csiCall, isRoot, NodePlugin } from '../test/support/node-plugin.js';
import { RecordWriter } from '../test/support/record-writers.js';
import type { BenchContext, BenchSuite } from './suite.js';

const MiB = 1024 * 1024;
const SLOTS = 128;
const TARGET_MS = { upgrade: 2000, kill: 5000 } as const;
const HANDED_OVER = 'Handed the data path to the successor; retired until the pod stops';
const round = (n: number, digits = 1): number => Math.round(n * 10 ** digits) / 10 ** digits;

function p99(xs: readonly number[]): number {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(0.99 * s.length) - 1)]!;
}

async function until(p: NodePlugin, msg: string, n: number, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (p.lines.filter((l) => l.msg === msg).length < n) {
    if (p.exited) throw new Error(`node plugin exited before logging "${msg}"`);
    if (Date.now() > deadline) throw new Error(`"${msg}" not logged within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const count = (p: NodePlugin, msg: string): number => p.lines.filter((l) => l.msg === msg).length;

/** The longest gap between acknowledgements from index `from` on (the one before `from` included). */
function gapSince(w: RecordWriter, from: number): number {
  let gap = 0;
  for (let i = Math.max(1, from); i < w.acks.length; i++) gap = Math.max(gap, w.acks[i]!.ms - w.acks[i - 1]!.ms);
  return gap;
}

interface Volume {
  id: string;
  staging: string;
  target: string;
}

async function provision(p: NodePlugin, n: number): Promise<{ volumes: Volume[]; writers: RecordWriter[] }> {
  const volumes: Volume[] = [];
  const writers: RecordWriter[] = [];
  for (let i = 0; i < n; i++) {
    const block = i % 2 === 1;
    const cap = block ? capability('block') : capability('mount', 'SINGLE_NODE_WRITER', 'ext4');
    const r = await csiCall<{ volume: { volume_id: string } }>(p.clients.controller, 'CreateVolume', {
      name: `restart-${n}-${i}`,
      capacity_range: { required_bytes: String(32 * MiB) },
      volume_capabilities: [cap],
    });
    const id = r.volume.volume_id;
    const staging = join(p.dir, 'kubelet', id, 'staging');
    const target = join(p.dir, 'kubelet', id, 'target');
    await mkdir(staging, { recursive: true });
    await csiCall(p.clients.node, 'NodeStageVolume', {
      volume_id: id,
      staging_target_path: staging,
      volume_capability: cap,
    });
    await csiCall(p.clients.node, 'NodePublishVolume', {
      volume_id: id,
      staging_target_path: staging,
      target_path: target,
      volume_capability: cap,
    });
    volumes.push({ id, staging, target });
    writers.push(
      block ? RecordWriter.start(target, SLOTS) : RecordWriter.start(join(target, 'records'), SLOTS, SLOTS * 4096),
    );
  }
  return { volumes, writers };
}

/** Waits until every live writer acknowledged `n` more records; writers that failed are skipped. */
async function progress(writers: readonly RecordWriter[], n: number): Promise<void> {
  await Promise.all(writers.filter((w) => w.error === undefined).map((w) => w.more(n).catch(() => undefined)));
}

async function run(ctx: BenchContext): Promise<Record<string, number | string | boolean | null>> {
  if (!isRoot) throw new Error('the restart benchmark runs a real node plugin: it needs root (loop devices, FUSE)');
  const arg = (name: string): string | undefined => {
    const i = ctx.args.indexOf(name);
    return i >= 0 ? ctx.args[i + 1] : undefined;
  };
  const restarts = Number(arg('--restarts') ?? 5);
  const counts = (arg('--volumes') ?? '1,8,32').split(',').map(Number);
  const out: Record<string, number> = {};
  const all = { upgrade: [] as number[], kill: [] as number[], steady: [] as number[] };
  let errors = 0;
  let lost = 0;
  for (const n of counts) {
    let p = await NodePlugin.start({ nodeId: 'bench-restart', args: ['--keeper'] });
    const dir = p.dir;
    const plugins = [p];
    let writers: RecordWriter[] = [];
    try {
      const setup = await provision(p, n);
      writers = setup.writers;
      await progress(writers, 16);
      const sample = async (kind: 'upgrade' | 'kill' | 'steady', act: () => Promise<void>): Promise<number> => {
        const from = writers.map((w) => w.acks.length);
        await act();
        await progress(writers, 8);
        const gaps = writers.map((w, i) => gapSince(w, from[i]!));
        all[kind].push(...gaps);
        return Math.max(...gaps);
      };
      const per = { upgrade: [] as number[], kill: [] as number[] };
      for (let r = 0; r < restarts; r++) {
        // Baseline window: as long as a restart takes, without one.
        await sample('steady', () => new Promise((res) => setTimeout(res, 500)));
        per.kill.push(
          await sample('kill', async () => {
            const started = count(p, 'Started node plugin');
            const pid = p.lines.filter((l) => l.msg === 'Started node plugin').at(-1)?.pid;
            if (typeof pid !== 'number') throw new Error('no server pid logged');
            process.kill(pid, 'SIGKILL');
            await until(p, 'Started node plugin', started + 1);
          }),
        );
        per.upgrade.push(
          await sample('upgrade', async () => {
            const next = await NodePlugin.start({ nodeId: 'bench-restart', dir, args: ['--keeper'] });
            plugins.push(next);
            await until(p, HANDED_OVER, 1);
            await until(next, 'Started node plugin', 1);
            await p.stop();
            p = next;
          }),
        );
      }
      out[`restart_pause_ms_max_kill_${n}vols`] = round(Math.max(...per.kill));
      out[`restart_pause_ms_max_upgrade_${n}vols`] = round(Math.max(...per.upgrade));
      ctx.log(
        `[restart] ${n} volumes: kill max ${Math.max(...per.kill).toFixed(0)} ms, upgrade max ${Math.max(...per.upgrade).toFixed(0)} ms`,
      );
      await Promise.all(writers.map((w) => w.stop()));
      for (const w of writers) {
        if (w.error !== undefined) {
          errors++;
          ctx.log(`[restart] writer on ${w.target}: ${w.error}`);
        }
        lost += (await w.verify()).length;
      }
      for (const v of setup.volumes) {
        await csiCall(p.clients.node, 'NodeUnpublishVolume', { volume_id: v.id, target_path: v.target });
        await csiCall(p.clients.node, 'NodeUnstageVolume', { volume_id: v.id, staging_target_path: v.staging });
        await csiCall(p.clients.controller, 'DeleteVolume', { volume_id: v.id });
      }
    } finally {
      for (const w of writers) w.kill();
      for (const x of plugins) if (!x.exited) await x.kill9();
      await cleanupPluginDir(dir);
    }
  }
  const steady = p99(all.steady);
  const up = p99(all.upgrade);
  const kill = p99(all.kill);
  return {
    restart_pause_ms_p99_upgrade: round(up),
    restart_pause_ms_p99_kill: round(kill),
    ...out,
    steady_gap_ms_p99: round(steady),
    pause_vs_steady_upgrade: round(up / Math.max(steady, 0.001), 2),
    pause_vs_steady_kill: round(kill / Math.max(steady, 0.001), 2),
    pause_vs_target_upgrade: round(up / TARGET_MS.upgrade, 3),
    pause_vs_target_kill: round(kill / TARGET_MS.kill, 3),
    restart_io_errors: errors,
    restart_lost_writes: lost,
    restarts_per_kind: restarts * counts.length,
  };
}

export const restartSuite: BenchSuite = {
  description: 'I/O pause and errors of pods while the node plugin crashes or is upgraded under its keeper',
  run,
};
