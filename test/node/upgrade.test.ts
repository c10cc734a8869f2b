// SPDX-License-Identifier: Apache-2.0
// A rollout of the node plugin with pods writing (ADR 0011): `helm upgrade` to a changed image (the local
// target retags the image built here, so the DaemonSet's pod template changes and every node plugin pod is
// replaced by the surge-and-handover path), and back. Two pods write all along, a file writer on ext4 and
// a block writer on a raw device, each ending with a message in its termination log at the first failed
// write. Afterwards both pods never restarted and saw no error, their data checks, the node plugin pods
// are new ones that took the data path over, and the mounts and loop devices on the node are the very same
// (mount ids, devices and back files unchanged).
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { nodeClusterEnv, realNodeUsable, RELEASE_NS, useRealCluster } from '../support/real-node.js';
import { waitFor } from '../support/wait.js';
import { getJson, volumeOf } from './lib/objects.js';
import { upgradeWith } from './lib/release.js';
import { apply, claim, DEVICE, exec, pod, waitPodReady } from './lib/workloads.js';

/** 4 KiB O_DIRECT+fsync files over 64 names, round and round; the count of completed writes in /tmp/n. */
const FILE_LOOP = `mkdir -p /data/u && i=0
while :; do
  i=$((i+1)); f=/data/u/f-$((i % 64))
  head -c 4096 /dev/urandom > /tmp/r
  dd if=/tmp/r of=$f.new bs=4096 oflag=direct conv=fsync 2>/tmp/err && mv $f.new $f && sha256sum $f > $f.sum \\
    || { echo "file write $i failed: $(cat /tmp/err)" > /dev/termination-log; exit 1; }
  echo $i > /tmp/n
  sleep 0.01
done`;
const FILE_CHECK = `cd /data/u && cat f-*.sum | sha256sum -c -s && echo OK`;

const BLOCK_LOOP = `i=0
while :; do
  i=$((i+1))
  printf 'LSUP %012d\\n' $i | dd of=${DEVICE} bs=4096 count=1 seek=$((i % 1024)) conv=sync,notrunc oflag=direct 2>/tmp/err \\
    || { echo "block write $i failed: $(cat /tmp/err)" > /dev/termination-log; exit 1; }
  echo $i > /tmp/n
done`;

type PodStatus = {
  metadata: { name: string; uid: string };
  status: {
    containerStatuses?: Array<{
      restartCount: number;
      ready: boolean;
      lastState?: { terminated?: { message?: string } };
      state?: { terminated?: { message?: string } };
    }>;
  };
};

describe('node plugin rollout with pods writing (ADR 0011)', () => {
  if (!realNodeUsable()) return;
  const c = useRealCluster('upgrade');
  const writes = (p: string): number => Number(exec(c, p, 'cat /tmp/n 2>/dev/null || echo 0').trim());
  const nodePods = (): string[] =>
    getJson<{ items: PodStatus[] }>(c, ['-n', RELEASE_NS, 'pods', '-l', 'app.kubernetes.io/component=node'])
      .items.map((p) => p.metadata.name)
      .sort();
  // A retired node plugin pod exits once the kubelet stops it, a moment after the rollout is done.
  const oldPodsGone = (old: readonly string[]) =>
    waitFor('the old node plugin pods to be gone', () => !nodePods().some((p) => old.includes(p)), {
      timeoutMs: 120_000,
      intervalMs: 500,
    });
  const writerProblems = (names: readonly string[]): string[] =>
    names.flatMap((n) => {
      const s = getJson<PodStatus>(c, ['-n', c.namespace, 'pod', n]).status.containerStatuses?.[0];
      if (!s) return [`${n}: no container status`];
      const msg = s.lastState?.terminated?.message ?? s.state?.terminated?.message;
      return [
        ...(s.restartCount > 0 ? [`${n}: restarted ${s.restartCount} times`] : []),
        ...(msg ? [`${n}: ${msg.trim()}`] : []),
        ...(s.ready ? [] : [`${n}: not ready`]),
      ];
    });

  it('helm upgrade to a changed image and back: no pod sees an error, mounts and loop devices stay', async () => {
    apply(c, claim(c.namespace, 'up-file'));
    apply(c, claim(c.namespace, 'up-block', { volumeMode: 'Block' }));
    apply(c, pod(c.namespace, 'up-file', c.workloadImage, { claim: 'up-file', script: FILE_LOOP }));
    apply(c, pod(c.namespace, 'up-block', c.workloadImage, { claim: 'up-block', block: true, script: BLOCK_LOOP }));
    waitPodReady(c, 'up-file');
    waitPodReady(c, 'up-block');
    const writers = ['up-file', 'up-block'];
    const vols = writers.map((w) => volumeOf(c, w));
    const node = vols[0]!.node;
    // Mount ids change when anything is mounted again; loop devices are named with their back files. The
    // kubelet's paths hold the PV name (publish, block staging) or the sha256 of the handle (file staging).
    const keys = vols.flatMap((v) => [
      v.pvName,
      v.volumeHandle,
      createHash('sha256').update(v.volumeHandle).digest('hex'),
    ]);
    // The node plugin's loop devices are backed by files below its state dir (vol-<handle>); the kubelet
    // holds one more per raw block volume, on the device file below volumeDevices/<pv name>/.
    const stateDir = (c.values() as unknown as { node: { stateDir: string } }).node.stateDir;
    const dataPath = (): { mounts: string[]; loops: string[] } => {
      const out = c.onNode(
        node,
        `grep -F ${keys.map((k) => `-e ${k}`).join(' ')} /proc/self/mountinfo | cut -d' ' -f1,3,5 | sed 's/^/mount /'
         losetup -l -n -O NAME,BACK-FILE | grep -F -e '${stateDir}/' ${vols.flatMap((v) => [`-e ${v.volumeHandle}`, `-e ${v.pvName}`]).join(' ')} | sed 's/^/loop /'`,
      );
      const lines = out.trim().split('\n').sort();
      // A loop's back file is named through the mount it was opened in; once the pod that attached it is
      // gone the kernel names it inside the FUSE file system only (/vol-<id>): same device, same file.
      return {
        mounts: lines.filter((l) => l.startsWith('mount ')),
        loops: lines
          .filter((l) => l.startsWith('loop '))
          .map((l) => l.replace(/ \S*\/(vol-[0-9a-f]+)$/, ' $1'))
          .sort(),
      };
    };
    const before = dataPath();
    const allLoops = (): string =>
      c.onNode(node, 'losetup -l -n -O NAME,BACK-FILE; echo; cat /proc/self/mountinfo | grep -F fuse');
    expect(before.loops.length, allLoops()).toBeGreaterThanOrEqual(3);
    expect(before.mounts.length).toBeGreaterThanOrEqual(3);
    for (const w of writers) await waitFor(`${w} writing`, () => writes(w) >= 20, { timeoutMs: 60_000 });

    const rollOnce = async (extra: readonly string[]): Promise<() => Promise<void>> => {
      const oldPods = nodePods();
      const counts = writers.map(writes);
      const restore = await upgradeWith(c, extra);
      await oldPodsGone(oldPods);
      for (const [i, w] of writers.entries()) {
        await waitFor(`${w} writing after the rollout`, () => writes(w) >= counts[i]! + 20, { timeoutMs: 60_000 });
      }
      for (const p of nodePods()) {
        expect(c.kubectl(['-n', RELEASE_NS, 'logs', p, '-c', 'node-plugin'])).toContain(
          'Took over the data path of the previous process',
        );
      }
      expect(writerProblems(writers)).toEqual([]);
      expect(dataPath()).toEqual(before);
      return restore;
    };

    const extra: string[] = [];
    if (c.target === 'local') {
      // Same bits, another name: the pod template's image changes, as with a new release.
      const sock = join(nodeClusterEnv().LOOPSNAP_CLUSTER_DIR ?? '', 'node', 'run', 'containerd.sock');
      const image = getJson<{ spec: { template: { spec: { containers: Array<{ image: string }> } } } }>(c, [
        '-n',
        RELEASE_NS,
        'daemonset',
        'loopsnap-node',
      ]).spec.template.spec.containers[0]!.image;
      const rolled = `${image}-rolled`;
      const ctr = (args: string[]) => execFileSync('ctr', ['-a', sock, '-n', 'k8s.io', 'images', ...args]);
      ctr(['tag', '--force', image, rolled]);
      onTestFinished(() => {
        ctr(['rm', rolled]);
      });
      extra.push('--set', `image.tag=${rolled.slice(rolled.lastIndexOf(':') + 1)}`);
    } else {
      extra.push('--set-string', `node.podAnnotations.loopsnap\\.dev/rolled=${Date.now()}`);
    }
    const restore = await rollOnce(extra);
    // And back to the values it had: a second rollout, just as invisible.
    const oldPods = nodePods();
    await restore();
    await oldPodsGone(oldPods);
    const counts = writers.map(writes);
    for (const [i, w] of writers.entries()) {
      await waitFor(`${w} writing after the rollback`, () => writes(w) >= counts[i]! + 20, { timeoutMs: 60_000 });
    }
    expect(writerProblems(writers)).toEqual([]);
    expect(dataPath()).toEqual(before);
    expect(exec(c, 'up-file', FILE_CHECK).trim()).toBe('OK');
  });
});
