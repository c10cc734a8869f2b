// SPDX-License-Identifier: Apache-2.0
// Every metric name the Grafana dashboard and the PrometheusRule alerts use is exported by a running
// controller or node plugin: both run here for real (node plugin as root: FUSE and loop devices; controller
// against the test control plane), their /metrics are scraped, and the names in the rendered rules and the
// dashboard's queries are compared with what they expose. The alert rules also pass `promtool check rules`.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { cleanupDir, isRoot, PluginProcess } from '../csi/plugin.js';
import { useCluster } from '../support/cluster.js';
import { baseArgs, ControllerProcess, freePort } from '../support/controller-harness.js';
import { installOurCrds } from '../support/crds-install.js';
import { createTestPki, type TestPki } from '../support/tls.js';
import { waitFor } from '../support/wait.js';
import { find, render, runTool, toolAvailable } from './lib/helm.js';
import { exposedNames, metricNames, SCRAPE_SERIES, variableQueryNames } from './lib/promql.js';

interface Rule {
  alert?: string;
  record?: string;
  expr: string;
}
interface RuleGroup {
  name: string;
  rules: Rule[];
}

/** The PrometheusRule's groups for one value of node.saveQuotaBytes (LoopsnapSavePoolFilling has two branches). */
function ruleGroupsFor(saveQuotaBytes: number): RuleGroup[] {
  const { objects } = render({ values: { node: { saveQuotaBytes }, metrics: { prometheusRule: { enabled: true } } } });
  const [rule] = find(objects, 'PrometheusRule');
  return (rule!.spec as { groups: RuleGroup[] }).groups;
}

const QUOTAS = [0, 1 << 30];

function renderedRuleGroups(): RuleGroup[] {
  return QUOTAS.flatMap(ruleGroupsFor);
}

interface Panel {
  title?: string;
  type: string;
  targets?: Array<{ expr?: string }>;
  panels?: Panel[];
}
interface Dashboard {
  panels: Panel[];
  templating: { list: Array<{ name: string; type: string; query?: string | { query: string } }> };
}

function dashboardQueries(): Array<{ where: string; names: string[] }> {
  const { objects } = render({ values: { metrics: { grafanaDashboard: { enabled: true } } } });
  const [cm] = find(objects, 'ConfigMap');
  const dash = JSON.parse((cm!.data as Record<string, string>)['loopsnap.json']!) as Dashboard;
  const out: Array<{ where: string; names: string[] }> = [];
  const walk = (ps: Panel[]): void => {
    for (const p of ps) {
      for (const t of p.targets ?? [])
        if (t.expr) out.push({ where: `panel "${p.title}"`, names: metricNames(t.expr) });
      if (p.panels) walk(p.panels);
    }
  };
  walk(dash.panels);
  for (const v of dash.templating.list) {
    if (v.type !== 'query' || v.query === undefined) continue;
    const q = typeof v.query === 'string' ? v.query : v.query.query;
    out.push({ where: `variable $${v.name}`, names: variableQueryNames(q) });
  }
  return out;
}

describe('PromQL metric-name extraction (lib/promql.ts)', () => {
  it.each([
    ['up{job="x"} == 0', ['up']],
    ['sum by (le, method) (rate(a_seconds_bucket{code!="OK"}[$__rate_interval]))', ['a_seconds_bucket']],
    ['a / on(namespace, volume_id) group_left(node) b > 0.8', ['a', 'b']],
    ['histogram_quantile(0.95, sum(rate(x_bucket[5m])) by (le)) > 1e3', ['x_bucket']],
    ['absent(up{job=~".*-node"}) or vector(0)', ['up']],
    ['max(m{namespace="$namespace", node=~"${node}"}) < count(up == 1) unless on() c offset 5m', ['c', 'm', 'up']],
    ['label_replace(k, "dst", "$1", "src", "(.*)")', ['k']],
    ['topk(10, s:recorded:rate5m) and bool 1', ['s:recorded:rate5m']],
  ])('%s -> %j', (expr, names) => {
    expect(metricNames(expr)).toEqual(names);
  });

  it.each([
    ['label_values(up{namespace="$namespace", job=~".*-node-metrics"}, node)', ['up']],
    ['label_values(loopsnap_controller_is_leader, namespace)', ['loopsnap_controller_is_leader']],
    ['label_values(namespace)', []],
    ['query_result(topk(5, a))', ['a']],
  ])('variable %s -> %j', (query, names) => {
    expect(variableQueryNames(query)).toEqual(names);
  });

  it('reads families and their histogram series from an exposition', () => {
    const names = exposedNames(
      '# HELP h_seconds x\n# TYPE h_seconds histogram\nh_seconds_bucket{le="1"} 0\n# TYPE g gauge\n# TYPE c_total counter\nc_total 3\n',
    );
    expect([...names].sort()).toEqual([
      'c_total',
      'g',
      'h_seconds',
      'h_seconds_bucket',
      'h_seconds_count',
      'h_seconds_sum',
    ]);
  });
});

describe('alert rules', () => {
  it.skipIf(!toolAvailable('promtool')).each(QUOTAS)(
    'pass promtool check rules --lint-fatal with node.saveQuotaBytes=%d (promtool built by hack/build-tools.sh)',
    (quota) => {
      const dir = mkdtempSync(join(tmpdir(), 'loopsnap-rules-'));
      try {
        const file = join(dir, 'rules.yaml');
        const groups = ruleGroupsFor(quota);
        writeFileSync(file, stringify({ groups }));
        const r = runTool('promtool', ['check', 'rules', '--lint-fatal', file]);
        const count = groups.reduce((n, g) => n + g.rules.length, 0);
        expect(`${r.stdout}${r.stderr}`).toContain(`SUCCESS: ${count} rules found`);
        expect(r.code, r.stderr).toBe(0);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );

  it.skipIf(!toolAvailable('promtool'))('promtool check rules fails a broken expression (the check is real)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'loopsnap-rules-'));
    try {
      const file = join(dir, 'rules.yaml');
      const groups = ruleGroupsFor(0);
      groups[0]!.rules[0]!.expr = 'sum(rate(loopsnap_csi_operations_total[5m]) by'; // unbalanced
      writeFileSync(file, stringify({ groups }));
      const r = runTool('promtool', ['check', 'rules', file]);
      expect(r.code).not.toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('cover the alerts the issue asks for', () => {
    const alerts = new Set(renderedRuleGroups().flatMap((g) => g.rules.map((r) => r.alert)));
    for (const a of [
      'LoopsnapNodePluginDown',
      'LoopsnapSavePoolFilling',
      'LoopsnapSnapshotErrors',
      'LoopsnapSnapshotCallErrors',
      'LoopsnapRestoreStuck',
      'LoopsnapDataPathErrors',
    ]) {
      expect(alerts, a).toContain(a);
    }
  });
});

describe.skipIf(!isRoot)('names used by the dashboard and the alerts are exported (root: a real node plugin)', () => {
  const cluster = useCluster('chart-metrics');
  let plugin: PluginProcess | undefined;
  let controller: ControllerProcess | undefined;
  let pki: TestPki | undefined;
  const exported = new Set<string>();
  let logDir = '';

  beforeAll(async () => {
    installOurCrds(cluster);
    pki = await createTestPki();
    const port = await freePort();
    plugin = await PluginProcess.start({ nodeId: 'metrics-node', extraArgs: ['--http-endpoint', `127.0.0.1:${port}`] });
    const pluginText = await waitFor('node plugin /metrics', async () => {
      const r = await fetch(`http://127.0.0.1:${port}/metrics`);
      return r.ok ? r.text() : undefined;
    });
    for (const n of exposedNames(pluginText)) exported.add(n);
    logDir = mkdtempSync(join(tmpdir(), 'loopsnap-ctl-log-'));
    controller = await ControllerProcess.start(
      baseArgs({ namespace: cluster.namespace, pki, kubeconfigPath: cluster.kubeconfigPath }),
      join(logDir, 'controller.log'),
    );
    const ctl = controller;
    const ctlText = await waitFor('controller /metrics', async () => {
      const r = await ctl.http('/metrics');
      return r?.status === 200 ? r.body : undefined;
    });
    for (const n of exposedNames(ctlText)) exported.add(n);
  });

  afterAll(async () => {
    await controller?.stop();
    rmSync(logDir, { recursive: true, force: true });
    await plugin?.stop();
    if (plugin) await cleanupDir(plugin.dir);
    await pki?.cleanup();
  });

  it('scraped both components', () => {
    expect(exported).toContain('loopsnap_csi_operations_total');
    expect(exported).toContain('loopsnap_reconcile_total');
  });

  it('every metric an alert rule uses', () => {
    const missing: string[] = [];
    let used = 0;
    for (const g of renderedRuleGroups()) {
      for (const r of g.rules) {
        for (const n of metricNames(r.expr)) {
          used++;
          if (!exported.has(n) && !SCRAPE_SERIES.has(n)) missing.push(`${r.alert}: ${n}`);
        }
      }
    }
    expect(used).toBeGreaterThan(10);
    expect(missing).toEqual([]);
  });

  it('every metric a dashboard panel or variable uses', () => {
    const queries = dashboardQueries();
    expect(queries.length).toBeGreaterThan(20);
    const missing = queries.flatMap((q) =>
      q.names.filter((n) => !exported.has(n) && !SCRAPE_SERIES.has(n)).map((n) => `${q.where}: ${n}`),
    );
    expect(missing).toEqual([]);
    expect(new Set(queries.flatMap((q) => q.names)).size).toBeGreaterThan(15);
  });
});
