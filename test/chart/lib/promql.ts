// SPDX-License-Identifier: Apache-2.0
// Metric names used by PromQL expressions (alert rules, Grafana panels and template-variable queries), and the
// metric names a /metrics exposition declares. Enough of PromQL's lexical structure to tell a metric name from
// a function, an aggregation, a keyword, a label name or a Grafana variable; lib/promql cases in
// metrics.test.ts pin the corner cases.

const KEYWORDS = new Set([
  'and',
  'or',
  'unless',
  'by',
  'without',
  'on',
  'ignoring',
  'group_left',
  'group_right',
  'bool',
  'offset',
  'start',
  'end',
  'inf',
  'nan',
]);

/** Metric names an expression selects. Grafana variables ($x, ${x}, [[x]]) may appear anywhere. */
export function metricNames(expr: string): string[] {
  let s = expr
    // string literals (label values, label_replace arguments)
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, ' "" ')
    // Grafana variables
    .replace(/\$\{[^}]*\}|\$\w+|\[\[\w+\]\]/g, ' 0 ')
    // label matchers and range / subquery selectors
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ');
  // label lists of grouping and vector-matching modifiers
  s = s.replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/gi, ' ');
  const names = new Set<string>();
  const token = /(\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|([a-zA-Z_:][a-zA-Z0-9_:]*)/g;
  for (let m = token.exec(s); m; m = token.exec(s)) {
    const id = m[2];
    if (id === undefined) continue;
    if (KEYWORDS.has(id.toLowerCase())) continue;
    const rest = s.slice(token.lastIndex);
    if (/^\s*\(/.test(rest)) continue; // function or aggregation operator
    names.add(id);
  }
  return [...names].sort();
}

/** A Grafana Prometheus variable query: label_values(expr, label) or a plain expression. */
export function variableQueryNames(query: string): string[] {
  const m = /^\s*label_values\s*\(([\s\S]*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$/.exec(query);
  if (m) return metricNames(m[1] ?? '');
  if (/^\s*label_values\s*\(\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$/.test(query)) return [];
  if (/^\s*(label_names|metrics)\s*\(/.test(query)) return [];
  return metricNames(query.replace(/^\s*query_result\s*\(([\s\S]*)\)\s*$/, '$1'));
}

/**
 * Every series name a text exposition can carry: each `# TYPE` family, with _bucket/_sum/_count for histograms
 * and _sum/_count for summaries, plus the names of sample lines.
 */
export function exposedNames(exposition: string): Set<string> {
  const out = new Set<string>();
  for (const line of exposition.split('\n')) {
    const t = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\w+)/.exec(line);
    if (t) {
      const [, name, type] = t as unknown as [string, string, string];
      out.add(name);
      if (type === 'histogram') for (const s of ['_bucket', '_sum', '_count']) out.add(name + s);
      if (type === 'summary') for (const s of ['_sum', '_count']) out.add(name + s);
      continue;
    }
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]/.exec(line);
    if (sample?.[1]) out.add(sample[1]);
  }
  return out;
}

/** Series Prometheus makes itself for every scrape target; no component exports them. */
export const SCRAPE_SERIES = new Set(['up']);
