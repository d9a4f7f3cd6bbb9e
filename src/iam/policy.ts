/**
 * Fine-grained policy documents (Huawei IAM "Version 1.1" semantics, close to AWS IAM):
 * validation and evaluation. Pure functions, no I/O: the IAM service loads the policies
 * attached to a principal and asks `evaluatePolicies` for the one decision.
 *
 * Decision rules: default deny; any matching Deny statement wins over any Allow.
 */
import { BlockList, isIP } from 'node:net';
import { Type, type Static } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';

export const MAX_POLICY_CHARS = 6144;

const Scalar = Type.Union([Type.String({ maxLength: 1024 }), Type.Number(), Type.Boolean()]);
const ConditionValues = Type.Union([Scalar, Type.Array(Scalar, { minItems: 1, maxItems: 100 })]);
const ActionPattern = Type.String({ pattern: '^(\\*|[A-Za-z0-9*?]+:[A-Za-z0-9*?]+:[A-Za-z0-9*?]+)$', maxLength: 256 });
const ResourcePattern = Type.String({ minLength: 1, maxLength: 1024 });

const StatementSchema = Type.Object(
  {
    Sid: Type.Optional(Type.String({ maxLength: 128 })),
    Effect: Type.Union([Type.Literal('Allow'), Type.Literal('Deny')]),
    Action: Type.Optional(Type.Array(ActionPattern, { minItems: 1, maxItems: 100 })),
    NotAction: Type.Optional(Type.Array(ActionPattern, { minItems: 1, maxItems: 100 })),
    Resource: Type.Optional(Type.Array(ResourcePattern, { minItems: 1, maxItems: 100 })),
    NotResource: Type.Optional(Type.Array(ResourcePattern, { minItems: 1, maxItems: 100 })),
    Condition: Type.Optional(Type.Record(Type.String(), Type.Record(Type.String(), ConditionValues))),
  },
  { additionalProperties: false },
);
const DocumentSchema = Type.Object(
  {
    Version: Type.Literal('1.1'),
    Statement: Type.Array(StatementSchema, { minItems: 1, maxItems: 50 }),
  },
  { additionalProperties: false },
);

export type PolicyStatement = Static<typeof StatementSchema>;
export type PolicyDocument = Static<typeof DocumentSchema>;

/** A value the request context supplies for a condition key. Absent keys are `undefined`. */
export type ConditionValue = string | number | boolean | null | undefined | readonly (string | number | boolean)[];

export interface Decision {
  effect: 'allow' | 'explicit-deny' | 'implicit-deny';
  /** The policy and statement that decided, when one did. */
  matched?: { policyId: string; statement: number };
}

/**
 * Who a statement of a resource-based policy (a bucket policy) applies to. Principals are of the
 * resource's own account: tenants cannot address one another's resources.
 */
export type PrincipalPattern =
  | { kind: 'any' }
  | { kind: 'account'; accountId: string }
  | { kind: 'user'; userId: string }
  | { kind: 'agency'; agencyName: string };

/** A policy attached to a resource: statements in IAM form, each with the principals it names. */
export interface ResourcePolicy {
  id: string;
  statements: readonly { principals: readonly PrincipalPattern[]; statement: PolicyStatement }[];
}

export interface EvaluationRequest {
  action: string;
  /** Resource URN `service:region:account:type:id`, or null for actions on no particular resource. */
  resource: string | null;
  conditions: Record<string, ConditionValue>;
}

type Base = 'String' | 'Number' | 'Date' | 'Bool' | 'Ip' | 'Null';
interface OperatorSpec {
  base: Base;
  negated: boolean;
  test: (requestValue: string, policyValue: string) => boolean;
}

const OPERATORS: Record<string, OperatorSpec> = {
  StringEquals: { base: 'String', negated: false, test: (a, b) => a === b },
  StringNotEquals: { base: 'String', negated: true, test: (a, b) => a === b },
  StringEqualsIgnoreCase: { base: 'String', negated: false, test: (a, b) => a.toLowerCase() === b.toLowerCase() },
  StringNotEqualsIgnoreCase: { base: 'String', negated: true, test: (a, b) => a.toLowerCase() === b.toLowerCase() },
  StringLike: { base: 'String', negated: false, test: (a, b) => wildcard(b, false).test(a) },
  StringNotLike: { base: 'String', negated: true, test: (a, b) => wildcard(b, false).test(a) },
  StringStartWith: { base: 'String', negated: false, test: (a, b) => a.startsWith(b) },
  StringEndWith: { base: 'String', negated: false, test: (a, b) => a.endsWith(b) },
  NumberEquals: { base: 'Number', negated: false, test: (a, b) => num(a) === num(b) },
  NumberNotEquals: { base: 'Number', negated: true, test: (a, b) => num(a) === num(b) },
  NumberLessThan: { base: 'Number', negated: false, test: (a, b) => num(a) < num(b) },
  NumberLessThanEquals: { base: 'Number', negated: false, test: (a, b) => num(a) <= num(b) },
  NumberGreaterThan: { base: 'Number', negated: false, test: (a, b) => num(a) > num(b) },
  NumberGreaterThanEquals: { base: 'Number', negated: false, test: (a, b) => num(a) >= num(b) },
  DateEquals: { base: 'Date', negated: false, test: (a, b) => date(a) === date(b) },
  DateNotEquals: { base: 'Date', negated: true, test: (a, b) => date(a) === date(b) },
  DateLessThan: { base: 'Date', negated: false, test: (a, b) => date(a) < date(b) },
  DateLessThanEquals: { base: 'Date', negated: false, test: (a, b) => date(a) <= date(b) },
  DateGreaterThan: { base: 'Date', negated: false, test: (a, b) => date(a) > date(b) },
  DateGreaterThanEquals: { base: 'Date', negated: false, test: (a, b) => date(a) >= date(b) },
  Bool: { base: 'Bool', negated: false, test: (a, b) => a.toLowerCase() === b.toLowerCase() },
  IpAddress: { base: 'Ip', negated: false, test: (a, b) => ipIn(a, b) },
  NotIpAddress: { base: 'Ip', negated: true, test: (a, b) => ipIn(a, b) },
  Null: { base: 'Null', negated: false, test: () => false },
};

interface ParsedOperator {
  spec: OperatorSpec;
  quantifier: 'any' | 'all' | null;
  ifExists: boolean;
}

function parseOperator(name: string): ParsedOperator | null {
  let rest = name;
  let quantifier: ParsedOperator['quantifier'] = null;
  if (rest.startsWith('ForAnyValue:')) {
    quantifier = 'any';
    rest = rest.slice('ForAnyValue:'.length);
  } else if (rest.startsWith('ForAllValues:')) {
    quantifier = 'all';
    rest = rest.slice('ForAllValues:'.length);
  }
  let ifExists = false;
  if (rest.endsWith('IfExists')) {
    ifExists = true;
    rest = rest.slice(0, -'IfExists'.length);
  }
  const spec = OPERATORS[rest];
  if (!spec) return null;
  if (spec.base === 'Null' && (ifExists || quantifier)) return null;
  return { spec, quantifier, ifExists };
}

const CONDITION_KEY = /^[A-Za-z0-9]+:[A-Za-z0-9_.\-/]+$/;

function num(s: string): number {
  const n = Number(s);
  return Number.isFinite(n) ? n : Number.NaN;
}
function date(s: string): number {
  if (/^\d+$/.test(s)) return Number(s) * 1000; // epoch seconds, as in AWS
  const t = Date.parse(s);
  return Number.isFinite(t) ? t : Number.NaN;
}
function normalizeIp(ip: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  return m?.[1] ?? ip;
}
function parseCidr(s: string): { net: string; prefix: number; family: 'ipv4' | 'ipv6' } | null {
  const [addr, bits, extra] = s.split('/');
  if (addr === undefined || extra !== undefined) return null;
  const ip = normalizeIp(addr);
  const v = isIP(ip);
  if (v === 0) return null;
  const max = v === 4 ? 32 : 128;
  const prefix = bits === undefined ? max : /^\d{1,3}$/.test(bits) ? Number(bits) : -1;
  if (prefix < 0 || prefix > max) return null;
  return { net: ip, prefix, family: v === 4 ? 'ipv4' : 'ipv6' };
}
const cidrCache = new Map<string, BlockList | null>();
function ipIn(requestIp: string, cidr: string): boolean {
  let list = cidrCache.get(cidr);
  if (list === undefined) {
    const c = parseCidr(cidr);
    if (c) {
      list = new BlockList();
      list.addSubnet(c.net, c.prefix, c.family);
    } else list = null;
    if (cidrCache.size > 10_000) cidrCache.clear();
    cidrCache.set(cidr, list);
  }
  if (!list) return false;
  const ip = normalizeIp(requestIp);
  const v = isIP(ip);
  if (v === 0) return false;
  return list.check(ip, v === 4 ? 'ipv4' : 'ipv6');
}

const patternCache = new Map<string, RegExp>();
/** `*` matches any run of characters, `?` exactly one; everything else literally. */
function wildcard(pattern: string, ignoreCase: boolean): RegExp {
  const key = `${ignoreCase ? 'i' : 's'}${pattern}`;
  let re = patternCache.get(key);
  if (!re) {
    const body = pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
    re = new RegExp(`^${body}$`, ignoreCase ? 'is' : 's');
    if (patternCache.size > 10_000) patternCache.clear();
    patternCache.set(key, re);
  }
  return re;
}

/** Actions are `service:resource-type:operation`, matched case-insensitively with wildcards. */
export function actionMatches(pattern: string, action: string): boolean {
  if (pattern === '*') return true;
  return wildcard(pattern, true).test(action);
}

/**
 * Resource URNs are `service:region:account:type:id`. The service is matched case-insensitively
 * (Huawei writes `OBS:*:*:bucket:x`), the rest case-sensitively; `*` and `?` are wildcards.
 * An action on no particular resource is matched only by a statement that covers every resource.
 */
export function resourceMatches(pattern: string, resource: string | null): boolean {
  if (pattern === '*') return true;
  const p = splitUrn(pattern);
  if (resource === null) return p !== null && p.slice(1).every((part) => /^\*+$/.test(part));
  const r = splitUrn(resource);
  if (!p || !r) return false;
  for (let i = 0; i < 5; i++) {
    const last = i === 4;
    const pp = p[i] as string;
    const rr = r[i] as string;
    if (last ? !wildcard(pp, false).test(rr) : !wildcard(pp, i === 0).test(rr)) return false;
  }
  return true;
}
function splitUrn(urn: string): string[] | null {
  const parts: string[] = [];
  let rest = urn;
  for (let i = 0; i < 4; i++) {
    const c = rest.indexOf(':');
    if (c < 0) return null;
    parts.push(rest.slice(0, c));
    rest = rest.slice(c + 1);
  }
  parts.push(rest);
  return parts;
}

export type ValidationResult = { ok: true; document: PolicyDocument } | { ok: false; errors: string[] };

/** Schema check plus the semantic checks a schema cannot express (operators, keys, CIDRs, size). */
export function validatePolicyDocument(input: unknown): ValidationResult {
  const text = JSON.stringify(input ?? null);
  if (text.length > MAX_POLICY_CHARS) return { ok: false, errors: [`the policy is ${text.length} characters; at most ${MAX_POLICY_CHARS} are allowed`] };
  if (!Value.Check(DocumentSchema, input)) {
    const errors = [...Value.Errors(DocumentSchema, input)].slice(0, 5).map((e) => `${e.path || '/'}: ${e.message}`);
    return { ok: false, errors };
  }
  const doc = input;
  const errors: string[] = [];
  doc.Statement.forEach((st, i) => {
    if ((st.Action === undefined) === (st.NotAction === undefined)) errors.push(`/Statement/${i}: give exactly one of Action and NotAction`);
    if (st.Resource !== undefined && st.NotResource !== undefined) errors.push(`/Statement/${i}: give at most one of Resource and NotResource`);
    for (const r of [...(st.Resource ?? []), ...(st.NotResource ?? [])]) {
      if (r !== '*' && splitUrn(r) === null) errors.push(`/Statement/${i}/Resource: "${r}" is not of the form service:region:account:type:id`);
    }
    for (const [opName, block] of Object.entries(st.Condition ?? {})) {
      const op = parseOperator(opName);
      if (!op) {
        errors.push(`/Statement/${i}/Condition: unknown operator "${opName}"`);
        continue;
      }
      for (const [key, raw] of Object.entries(block)) {
        if (!CONDITION_KEY.test(key)) errors.push(`/Statement/${i}/Condition/${opName}: "${key}" is not a condition key such as g:SourceIp`);
        for (const v of toStrings(raw)) {
          const bad =
            (op.spec.base === 'Number' && Number.isNaN(num(v))) ||
            (op.spec.base === 'Date' && Number.isNaN(date(v))) ||
            ((op.spec.base === 'Bool' || op.spec.base === 'Null') && !/^(true|false)$/i.test(v)) ||
            (op.spec.base === 'Ip' && parseCidr(v) === null);
          if (bad) errors.push(`/Statement/${i}/Condition/${opName}/${key}: "${v}" is not a valid ${op.spec.base === 'Ip' ? 'IP address or CIDR block' : op.spec.base.toLowerCase()} value`);
        }
      }
    }
  });
  return errors.length ? { ok: false, errors } : { ok: true, document: doc };
}

function toStrings(v: ConditionValue | Static<typeof ConditionValues>): string[] {
  if (v === undefined || v === null) return [];
  if (Array.isArray(v)) return v.map((x) => String(x));
  return [String(v)];
}

/** Condition keys are case-insensitive; the context is looked up once per evaluation. */
function lowerKeys(conditions: Record<string, ConditionValue>): Map<string, ConditionValue> {
  const m = new Map<string, ConditionValue>();
  for (const [k, v] of Object.entries(conditions)) if (v !== undefined) m.set(k.toLowerCase(), v);
  return m;
}

function conditionHolds(opName: string, key: string, policyRaw: Static<typeof ConditionValues>, ctx: Map<string, ConditionValue>): boolean {
  const op = parseOperator(opName);
  if (!op) return false; // validated documents never get here; fail closed if one does
  const present = ctx.has(key.toLowerCase()) && ctx.get(key.toLowerCase()) !== null;
  const policyValues = toStrings(policyRaw);
  if (op.spec.base === 'Null') {
    const wantAbsent = (policyValues[0] ?? 'true').toLowerCase() === 'true';
    return wantAbsent ? !present : present;
  }
  if (!present) return op.ifExists || (op.spec.negated && op.quantifier === null);
  const requestValues = toStrings(ctx.get(key.toLowerCase()));
  const matchesAny = (rv: string) => policyValues.some((pv) => op.spec.test(rv, pv));
  if (op.quantifier === 'all') {
    return requestValues.every((rv) => (op.spec.negated ? !matchesAny(rv) : matchesAny(rv)));
  }
  if (op.spec.negated) {
    // Without a quantifier a negated operator holds when no request value matches;
    // with ForAnyValue, when at least one does not.
    return op.quantifier === 'any' ? requestValues.some((rv) => !matchesAny(rv)) : !requestValues.some(matchesAny);
  }
  return requestValues.some(matchesAny);
}

function statementApplies(st: PolicyStatement, req: EvaluationRequest, ctx: Map<string, ConditionValue>): boolean {
  if (st.Action ? !st.Action.some((a) => actionMatches(a, req.action)) : (st.NotAction ?? []).some((a) => actionMatches(a, req.action))) return false;
  if (st.Resource && !st.Resource.some((r) => resourceMatches(r, req.resource))) return false;
  if (st.NotResource && st.NotResource.some((r) => resourceMatches(r, req.resource))) return false;
  for (const [opName, block] of Object.entries(st.Condition ?? {})) {
    for (const [key, values] of Object.entries(block)) {
      if (!conditionHolds(opName, key, values, ctx)) return false;
    }
  }
  return true;
}

/** Default deny; an applicable Deny anywhere wins; otherwise the first applicable Allow. */
export function evaluatePolicies(policies: readonly { id: string; document: PolicyDocument }[], req: EvaluationRequest): Decision {
  const ctx = lowerKeys(req.conditions);
  let allow: Decision | null = null;
  for (const p of policies) {
    const statements = p.document?.Statement;
    if (!Array.isArray(statements)) continue;
    for (let i = 0; i < statements.length; i++) {
      const st = statements[i] as PolicyStatement;
      if (!statementApplies(st, req, ctx)) continue;
      if (st.Effect === 'Deny') return { effect: 'explicit-deny', matched: { policyId: p.id, statement: i } };
      if (st.Effect === 'Allow' && !allow) allow = { effect: 'allow', matched: { policyId: p.id, statement: i } };
    }
  }
  return allow ?? { effect: 'implicit-deny' };
}
