// SPDX-License-Identifier: Apache-2.0
// The chart's RBAC as rendered: no role grants a wildcard (or escalate/bind/impersonate, or non-resource
// URLs) in any matrix case, and the node plugin gets nothing beyond its Leases. That these rules are also
// enough is shown by test/node/chart-e2e.test.ts, which runs the components under them.
import { describe, expect, it } from 'vitest';
import { find, type K8sObject, only, render } from './lib/helm.js';
import { MATRIX } from './lib/matrix.js';

interface Rule {
  apiGroups?: string[];
  resources?: string[];
  verbs: string[];
  nonResourceURLs?: string[];
  resourceNames?: string[];
}

describe('RBAC rules', () => {
  it.each(MATRIX)('grant no wildcard verbs, resources or groups with $name', ({ values }) => {
    const { objects } = render({ values });
    const roles = [...find(objects, 'Role'), ...find(objects, 'ClusterRole')];
    if ((values.rbac as { create?: boolean } | undefined)?.create === false) expect(roles).toEqual([]);
    else expect(roles.length).toBe(4);
    for (const r of roles) {
      for (const rule of (r as K8sObject & { rules: Rule[] }).rules) {
        const where = `${r.kind} ${r.metadata.name}: ${JSON.stringify(rule)}`;
        expect(rule.verbs, where).not.toContain('*');
        expect(rule.resources ?? [], where).not.toContain('*');
        expect(rule.apiGroups ?? [], where).not.toContain('*');
        expect(rule.resources?.some((x) => x.endsWith('/*')) ?? false, where).toBe(false);
        expect(rule.nonResourceURLs, where).toBeUndefined();
        expect(rule.verbs, where).not.toContain('escalate');
        expect(rule.verbs, where).not.toContain('bind');
        expect(rule.verbs, where).not.toContain('impersonate');
      }
    }
  });

  it('give the node plugin nothing cluster-wide; outside its namespace only events in default (Node events)', () => {
    const { objects } = render();
    const bindings = [...find(objects, 'ClusterRoleBinding'), ...find(objects, 'RoleBinding')] as Array<
      K8sObject & {
        metadata: { namespace?: string };
        subjects: Array<{ name: string }>;
        roleRef: { kind: string; name: string };
      }
    >;
    const nodeBindings = bindings.filter((b) => b.subjects.some((s) => s.name === 'loopsnap-node'));
    expect(nodeBindings.map((b) => `${b.kind}/${b.roleRef.kind}/${b.metadata.namespace}`).sort()).toEqual(
      ['RoleBinding/Role/default', 'RoleBinding/Role/loopsnap'].sort(),
    );
    const role = only(objects, 'Role', 'loopsnap-node') as K8sObject & { rules: Rule[] };
    expect(role.rules).toEqual([
      { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['get', 'create', 'update'] },
    ]);
    const events = only(objects, 'Role', 'loopsnap-node-node-events') as K8sObject & {
      metadata: { namespace?: string };
      rules: Rule[];
    };
    expect(events.metadata.namespace).toBe('default');
    expect(events.rules).toEqual([{ apiGroups: [''], resources: ['events'], verbs: ['create'] }]);
  });
});
