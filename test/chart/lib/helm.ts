// SPDX-License-Identifier: Apache-2.0
// Runs the pinned Go-built tools (helm, kubeconform, promtool) on charts/loopsnap and parses what they print.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseAllDocuments, stringify } from 'yaml';
import { toolBin } from '../../support/cluster.js';
import { pinnedVersion } from '../../support/go-modules.js';
import { REPO_ROOT } from '../../support/paths.js';

export const CHART_DIR = join(REPO_ROOT, 'charts', 'loopsnap');

/** A rendered Kubernetes object (only the fields the tests read are typed). */
export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: {
    name: string;
    namespace?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
  [key: string]: unknown;
}

export interface ToolResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a tool; never throws for a non-zero exit (the result carries it). */
export function runTool(
  tool: 'helm' | 'kubeconform' | 'promtool',
  args: readonly string[],
  opts: { input?: string; env?: NodeJS.ProcessEnv } = {},
): ToolResult {
  try {
    const stdout = execFileSync(toolBin(tool), args, {
      input: opts.input,
      env: { ...process.env, ...opts.env },
      stdio: ['pipe', 'pipe', 'pipe'],
      maxBuffer: 64 * 1024 * 1024,
      timeout: 300_000,
    }).toString();
    return { code: 0, stdout, stderr: '' };
  } catch (err) {
    const e = err as { status?: number; stdout?: Buffer; stderr?: Buffer; message: string };
    if (e.status === undefined || e.status === null) throw err;
    return { code: e.status, stdout: e.stdout?.toString() ?? '', stderr: e.stderr?.toString() ?? e.message };
  }
}

export function toolAvailable(tool: 'helm' | 'kubeconform' | 'promtool'): boolean {
  return existsSync(toolBin(tool));
}

/** Helm prints this on every load of the chart (files/crds and the subchart's crds are symlinks). */
const SYMLINK_NOTICE = /^walk\.go:\d+: found symbolic link in path: .*$/gm;

export function cleanStderr(stderr: string): string {
  return stderr.replace(SYMLINK_NOTICE, '').trim();
}

export interface RenderOptions {
  readonly release?: string;
  readonly namespace?: string;
  /** Values, written to a temporary values file. */
  readonly values?: Record<string, unknown>;
  readonly includeCrds?: boolean;
  /** Extra helm arguments (e.g. --set, --api-versions). */
  readonly args?: readonly string[];
  /** With a kubeconfig, lookup() sees that cluster (helm template --dry-run=server). */
  readonly kubeconfig?: string;
}

/** The Kubernetes version tests render for (the pinned control plane's). */
export const KUBE_VERSION = pinnedVersion('K8S_VERSION');

function withValuesFile<T>(values: Record<string, unknown> | undefined, fn: (args: string[]) => T): T {
  if (!values) return fn([]);
  const dir = mkdtempSync(join(tmpdir(), 'loopsnap-values-'));
  try {
    const file = join(dir, 'values.yaml');
    // YAML 1.1 quoting: Helm reads values as YAML 1.1, where an unquoted `on` or `yes` is a boolean.
    writeFileSync(file, stringify(values, { version: '1.1' }));
    return fn(['-f', file]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export function helmTemplate(opts: RenderOptions = {}): ToolResult {
  return withValuesFile(opts.values, (valueArgs) =>
    runTool('helm', [
      'template',
      opts.release ?? 'loopsnap',
      CHART_DIR,
      '--namespace',
      opts.namespace ?? 'loopsnap',
      '--kube-version',
      KUBE_VERSION,
      ...(opts.includeCrds ? ['--include-crds'] : []),
      ...(opts.kubeconfig ? ['--dry-run=server', '--kubeconfig', opts.kubeconfig] : []),
      ...valueArgs,
      ...(opts.args ?? []),
    ]),
  );
}

export function helmLint(values?: Record<string, unknown>): ToolResult {
  return withValuesFile(values, (valueArgs) =>
    runTool('helm', ['lint', CHART_DIR, '--strict', '--kube-version', KUBE_VERSION, ...valueArgs]),
  );
}

/** Renders and parses; throws with helm's message when rendering fails. */
export function render(opts: RenderOptions = {}): { text: string; objects: K8sObject[] } {
  const r = helmTemplate(opts);
  if (r.code !== 0) throw new Error(`helm template failed: ${cleanStderr(r.stderr)}`);
  return { text: r.stdout, objects: parseManifests(r.stdout) };
}

export function parseManifests(text: string): K8sObject[] {
  const out: K8sObject[] = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length > 0) throw new Error(`rendered YAML does not parse: ${doc.errors[0]?.message}`);
    const o = doc.toJS() as K8sObject | null;
    if (o) out.push(o);
  }
  return out;
}

export function find(objects: readonly K8sObject[], kind: string, name?: string): K8sObject[] {
  return objects.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name));
}

export function only(objects: readonly K8sObject[], kind: string, name?: string): K8sObject {
  const found = find(objects, kind, name);
  if (found.length !== 1) throw new Error(`expected one ${kind}${name ? ` ${name}` : ''}, found ${found.length}`);
  return found[0]!;
}
