// SPDX-License-Identifier: Apache-2.0
// Converts Kubernetes OpenAPI definitions into the standalone, strict JSON schemas kubeconform reads (one
// file per kind), the way yannh/kubernetes-json-schema is made, but from inputs we pin:
//   - built-in kinds: the `definitions` of api/openapi-spec/swagger.json in the k8s.io/kubernetes module
//   - custom kinds: `openAPIV3Schema` of each served version of a CRD file
// "Strict" means every object schema that lists properties and says nothing about others gets
// `additionalProperties: false`, so an unknown or misspelt field fails validation. Pure functions: the
// caller reads and writes files (schema-cache.ts).

export type Schema = Record<string, unknown>;

interface Gvk {
  readonly group: string;
  readonly version: string;
  readonly kind: string;
}

/** Where kubeconform looks for a kind, with -schema-location '<root>/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json'. */
export function schemaRelPath(apiVersion: string, kind: string): string {
  const [first, second] = apiVersion.split('/');
  return `${first}/${kind.toLowerCase()}_${second ?? first}.json`;
}

const INT_OR_STRING: Schema = { oneOf: [{ type: 'string' }, { type: 'integer' }] };
const QUANTITY: Schema = { oneOf: [{ type: 'string' }, { type: 'number' }] };
const DEF_PREFIX = '#/definitions/';

function isObject(v: unknown): v is Schema {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** One swagger (OpenAPI v2) schema node -> JSON schema, strict; `$ref`s stay local (#/definitions/...). */
function convertSwaggerNode(node: Schema): Schema {
  if (node.format === 'int-or-string') return { ...INT_OR_STRING };
  const out: Schema = {};
  for (const [k, v] of Object.entries(node)) {
    if (k === 'properties' && isObject(v)) {
      out.properties = Object.fromEntries(Object.entries(v).map(([p, s]) => [p, convertSwaggerNode(s as Schema)]));
    } else if ((k === 'items' || k === 'additionalProperties') && isObject(v)) {
      out[k] = convertSwaggerNode(v);
    } else if (k.startsWith('x-kubernetes-')) {
      continue;
    } else {
      out[k] = v;
    }
  }
  if (out.properties !== undefined && out.additionalProperties === undefined) out.additionalProperties = false;
  return out;
}

function refsOf(node: unknown, into: Set<string>): void {
  if (Array.isArray(node)) {
    for (const x of node) refsOf(x, into);
  } else if (isObject(node)) {
    for (const [k, v] of Object.entries(node)) {
      if (k === '$ref' && typeof v === 'string' && v.startsWith(DEF_PREFIX)) into.add(v.slice(DEF_PREFIX.length));
      else refsOf(v, into);
    }
  }
}

function convertDefinition(name: string, def: Schema): Schema {
  if (name.endsWith('.api.resource.Quantity')) return { ...QUANTITY };
  if (name.endsWith('.util.intstr.IntOrString')) return { ...INT_OR_STRING };
  return convertSwaggerNode(def);
}

function pinKind(schema: Schema, gvk: Gvk): Schema {
  const props = isObject(schema.properties) ? { ...schema.properties } : {};
  const apiVersion = gvk.group === '' ? gvk.version : `${gvk.group}/${gvk.version}`;
  props.apiVersion = { type: 'string', enum: [apiVersion] };
  props.kind = { type: 'string', enum: [gvk.kind] };
  return { ...schema, properties: props };
}

/**
 * Every kind of a swagger document as { path, schema }: the kind's definition at the root, and every
 * definition it reaches (transitively) under `definitions`, so recursive types (JSONSchemaProps) stay finite.
 */
export function schemasFromSwagger(swagger: {
  definitions: Record<string, Schema>;
}): Array<{ path: string; schema: Schema }> {
  const converted = new Map<string, Schema>();
  const conv = (name: string): Schema => {
    let c = converted.get(name);
    if (!c) {
      const def = swagger.definitions[name];
      if (!def) throw new Error(`swagger definition ${name} is referenced but missing`);
      c = convertDefinition(name, def);
      converted.set(name, c);
    }
    return c;
  };
  const out: Array<{ path: string; schema: Schema }> = [];
  for (const [name, def] of Object.entries(swagger.definitions)) {
    const gvks = def['x-kubernetes-group-version-kind'] as Gvk[] | undefined;
    if (!gvks) continue;
    const closure = new Set<string>();
    const queue = [name];
    while (queue.length > 0) {
      const n = queue.pop()!;
      if (closure.has(n)) continue;
      closure.add(n);
      const refs = new Set<string>();
      refsOf(conv(n), refs);
      for (const r of refs) if (!closure.has(r)) queue.push(r);
    }
    const definitions = Object.fromEntries([...closure].sort().map((n) => [n, conv(n)]));
    for (const gvk of gvks) {
      // The *List kinds and the kinds of the meta API group are not objects anyone writes in a chart.
      if (gvk.kind.endsWith('List') || gvk.group === 'meta.k8s.io') continue;
      const apiVersion = gvk.group === '' ? gvk.version : `${gvk.group}/${gvk.version}`;
      out.push({
        path: schemaRelPath(apiVersion, gvk.kind),
        schema: {
          $schema: 'http://json-schema.org/draft-07/schema#',
          ...pinKind(conv(name), gvk),
          definitions,
        },
      });
    }
  }
  return out;
}

/** One CRD structural-schema node -> JSON schema, strict unless the node preserves unknown fields. */
export function convertCrdNode(node: Schema): Schema {
  if (node['x-kubernetes-int-or-string'] === true) return { ...INT_OR_STRING };
  const out: Schema = {};
  for (const [k, v] of Object.entries(node)) {
    if (k === 'properties' && isObject(v)) {
      out.properties = Object.fromEntries(Object.entries(v).map(([p, s]) => [p, convertCrdNode(s as Schema)]));
    } else if ((k === 'items' || k === 'additionalProperties' || k === 'not') && isObject(v)) {
      out[k] = convertCrdNode(v);
    } else if ((k === 'allOf' || k === 'anyOf' || k === 'oneOf') && Array.isArray(v)) {
      out[k] = v.map((s) => convertCrdNode(s as Schema));
    } else if (k === 'nullable' || k.startsWith('x-kubernetes-')) {
      continue;
    } else {
      out[k] = v;
    }
  }
  if (node.nullable === true && typeof out.type === 'string') out.type = [out.type, 'null'];
  const open = node['x-kubernetes-preserve-unknown-fields'] === true || node['x-kubernetes-embedded-resource'] === true;
  if (out.properties !== undefined && out.additionalProperties === undefined && !open) out.additionalProperties = false;
  return out;
}

interface CrdDoc {
  kind?: string;
  spec?: {
    group: string;
    names: { kind: string };
    versions: Array<{ name: string; served?: boolean; schema?: { openAPIV3Schema?: Schema } }>;
  };
}

/** Every served version of a CRD as { path, schema }; none for other documents. */
export function schemasFromCrd(doc: CrdDoc): Array<{ path: string; schema: Schema }> {
  if (doc.kind !== 'CustomResourceDefinition' || !doc.spec) return [];
  const { group, names, versions } = doc.spec;
  const out: Array<{ path: string; schema: Schema }> = [];
  for (const v of versions) {
    if (v.served === false || !v.schema?.openAPIV3Schema) continue;
    const root = convertCrdNode(v.schema.openAPIV3Schema);
    const props = isObject(root.properties) ? { ...root.properties } : {};
    // The API server checks metadata against ObjectMeta whatever the CRD says; keep it an open object here.
    props.metadata = { type: 'object' };
    out.push({
      path: schemaRelPath(`${group}/${v.name}`, names.kind),
      schema: {
        $schema: 'http://json-schema.org/draft-07/schema#',
        ...pinKind({ ...root, properties: props }, { group, version: v.name, kind: names.kind }),
      },
    });
  }
  return out;
}
