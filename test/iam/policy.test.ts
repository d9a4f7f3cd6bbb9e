// Policy evaluation as a table: each row is a policy set, a request and the decision a user expects.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { evaluatePolicies, validatePolicyDocument, type ConditionValue, type PolicyDocument, type PolicyStatement } from '../../src/iam/policy.js';

const URN = 'kms:cn-north-4:acc1:cmk:key-1';
function doc(...st: PolicyStatement[]): { id: string; document: PolicyDocument } {
  return { id: `p${Math.random()}`, document: { Version: '1.1', Statement: st } };
}
const allow = (Action: string[], extra: Partial<PolicyStatement> = {}): PolicyStatement => ({ Effect: 'Allow', Action, ...extra });
const deny = (Action: string[], extra: Partial<PolicyStatement> = {}): PolicyStatement => ({ Effect: 'Deny', Action, ...extra });

interface Row {
  name: string;
  policies: { id: string; document: PolicyDocument }[];
  action?: string;
  resource?: string | null;
  conditions?: Record<string, ConditionValue>;
  expect: 'allow' | 'explicit-deny' | 'implicit-deny';
}

const ctx = { 'g:SourceIp': '10.1.2.3', 'g:MFAPresent': false, 'g:CurrentTime': '2026-11-22T12:00:00.000Z', 'g:RequestedRegion': 'cn-north-4', 'g:ResourceTag/env': 'prod' };

const rows: Row[] = [
  { name: 'no policy at all is denied', policies: [], expect: 'implicit-deny' },
  { name: 'an exact action is allowed', policies: [doc(allow(['kms:cmk:encrypt']))], expect: 'allow' },
  { name: 'another action is not', policies: [doc(allow(['kms:cmk:decrypt']))], expect: 'implicit-deny' },
  { name: 'actions compare case-insensitively', policies: [doc(allow(['KMS:CMK:Encrypt']))], expect: 'allow' },
  { name: 'wildcard operation', policies: [doc(allow(['kms:cmk:*']))], expect: 'allow' },
  { name: 'wildcard prefix', policies: [doc(allow(['kms:cmk:enc*']))], expect: 'allow' },
  { name: 'wildcard service does not leak into another service', policies: [doc(allow(['obs:*:*']))], expect: 'implicit-deny' },
  { name: 'single-character wildcard', policies: [doc(allow(['kms:cmk:encryp?']))], expect: 'allow' },
  { name: 'everything', policies: [doc(allow(['*:*:*']))], expect: 'allow' },
  { name: 'explicit deny wins over allow in the same policy', policies: [doc(allow(['*:*:*']), deny(['kms:cmk:encrypt']))], expect: 'explicit-deny' },
  { name: 'explicit deny wins over allow in another policy', policies: [doc(allow(['kms:*:*'])), doc(deny(['kms:cmk:*']))], expect: 'explicit-deny' },
  { name: 'a deny that does not match leaves the allow', policies: [doc(allow(['kms:*:*']), deny(['kms:cmk:delete*']))], expect: 'allow' },
  { name: 'resource exact', policies: [doc(allow(['kms:cmk:*'], { Resource: [URN] }))], expect: 'allow' },
  { name: 'resource wildcard id', policies: [doc(allow(['kms:cmk:*'], { Resource: ['KMS:*:*:cmk:key-*'] }))], expect: 'allow' },
  { name: 'another resource', policies: [doc(allow(['kms:cmk:*'], { Resource: ['kms:*:*:cmk:key-2'] }))], expect: 'implicit-deny' },
  { name: 'another region in the resource', policies: [doc(allow(['kms:cmk:*'], { Resource: ['kms:eu-west-0:*:cmk:*'] }))], expect: 'implicit-deny' },
  { name: 'a resource-specific statement does not cover resource-less actions', policies: [doc(allow(['kms:cmk:*'], { Resource: ['kms:*:*:cmk:key-1'] }))], resource: null, expect: 'implicit-deny' },
  { name: 'an all-wildcard resource covers resource-less actions', policies: [doc(allow(['kms:cmk:*'], { Resource: ['kms:*:*:*:*'] }))], resource: null, expect: 'allow' },
  { name: 'NotAction allows everything else', policies: [doc({ Effect: 'Allow', NotAction: ['kms:cmk:delete*'] })], expect: 'allow' },
  { name: 'NotAction does not allow what it names', policies: [doc({ Effect: 'Allow', NotAction: ['kms:cmk:*'] })], expect: 'implicit-deny' },
  { name: 'Deny with NotAction fences off all but the named actions', policies: [doc(allow(['*:*:*']), { Effect: 'Deny', NotAction: ['iam:*:*'] })], expect: 'explicit-deny' },
  { name: 'NotResource excludes a key', policies: [doc(allow(['kms:cmk:*'], { NotResource: [URN] }))], expect: 'implicit-deny' },
  { name: 'NotResource allows other keys', policies: [doc(allow(['kms:cmk:*'], { NotResource: ['kms:*:*:cmk:key-9'] }))], expect: 'allow' },
  // source IP
  { name: 'IpAddress inside the CIDR', policies: [doc(allow(['kms:*:*'], { Condition: { IpAddress: { 'g:SourceIp': ['10.0.0.0/8'] } } }))], expect: 'allow' },
  { name: 'IpAddress outside the CIDR', policies: [doc(allow(['kms:*:*'], { Condition: { IpAddress: { 'g:SourceIp': ['192.168.0.0/16'] } } }))], expect: 'implicit-deny' },
  { name: 'IpAddress matches an IPv4-mapped IPv6 source', policies: [doc(allow(['kms:*:*'], { Condition: { IpAddress: { 'g:SourceIp': ['10.1.2.3'] } } }))], conditions: { 'g:SourceIp': '::ffff:10.1.2.3' }, expect: 'allow' },
  { name: 'NotIpAddress deny blocks outside networks', policies: [doc(allow(['*:*:*']), deny(['*:*:*'], { Condition: { NotIpAddress: { 'g:SourceIp': ['192.168.0.0/16'] } } }))], expect: 'explicit-deny' },
  // MFA
  { name: 'Bool MFAPresent true without MFA', policies: [doc(allow(['kms:*:*'], { Condition: { Bool: { 'g:MFAPresent': ['true'] } } }))], expect: 'implicit-deny' },
  { name: 'Bool MFAPresent true with MFA', policies: [doc(allow(['kms:*:*'], { Condition: { Bool: { 'g:MFAPresent': ['true'] } } }))], conditions: { 'g:MFAPresent': true }, expect: 'allow' },
  { name: 'condition keys compare case-insensitively', policies: [doc(allow(['kms:*:*'], { Condition: { Bool: { 'g:mfapresent': [true] } } }))], conditions: { 'g:MFAPresent': true }, expect: 'allow' },
  // current time
  { name: 'DateLessThan in the future allows', policies: [doc(allow(['kms:*:*'], { Condition: { DateLessThan: { 'g:CurrentTime': ['2027-01-01T00:00:00Z'] } } }))], expect: 'allow' },
  { name: 'DateLessThan in the past denies', policies: [doc(allow(['kms:*:*'], { Condition: { DateLessThan: { 'g:CurrentTime': ['2026-01-01T00:00:00Z'] } } }))], expect: 'implicit-deny' },
  { name: 'DateGreaterThan window', policies: [doc(allow(['kms:*:*'], { Condition: { DateGreaterThan: { 'g:CurrentTime': ['2026-11-22T11:00:00Z'] }, DateLessThanEquals: { 'g:CurrentTime': ['2026-11-22T13:00:00Z'] } } }))], expect: 'allow' },
  // region
  { name: 'StringEquals region matches', policies: [doc(allow(['kms:*:*'], { Condition: { StringEquals: { 'g:RequestedRegion': ['cn-north-4', 'eu-west-0'] } } }))], expect: 'allow' },
  { name: 'StringEquals region does not match', policies: [doc(allow(['kms:*:*'], { Condition: { StringEquals: { 'g:RequestedRegion': ['eu-west-0'] } } }))], expect: 'implicit-deny' },
  { name: 'StringNotEquals region deny', policies: [doc(allow(['*:*:*']), deny(['*:*:*'], { Condition: { StringNotEquals: { 'g:RequestedRegion': ['eu-west-0'] } } }))], expect: 'explicit-deny' },
  // resource tags
  { name: 'resource tag matches', policies: [doc(allow(['kms:*:*'], { Condition: { StringEquals: { 'g:ResourceTag/env': ['prod'] } } }))], expect: 'allow' },
  { name: 'resource tag differs', policies: [doc(allow(['kms:*:*'], { Condition: { StringEquals: { 'g:ResourceTag/env': ['dev'] } } }))], expect: 'implicit-deny' },
  { name: 'resource tag missing', policies: [doc(allow(['kms:*:*'], { Condition: { StringEquals: { 'g:ResourceTag/team': ['a'] } } }))], expect: 'implicit-deny' },
  { name: 'IfExists passes a missing key', policies: [doc(allow(['kms:*:*'], { Condition: { StringEqualsIfExists: { 'g:ResourceTag/team': ['a'] } } }))], expect: 'allow' },
  { name: 'StringLike on a tag', policies: [doc(allow(['kms:*:*'], { Condition: { StringLike: { 'g:ResourceTag/env': ['pr*'] } } }))], expect: 'allow' },
  { name: 'Null true requires the key to be absent', policies: [doc(allow(['kms:*:*'], { Condition: { Null: { 'g:ResourceTag/team': ['true'] } } }))], expect: 'allow' },
  { name: 'Null false requires the key to be present', policies: [doc(allow(['kms:*:*'], { Condition: { Null: { 'g:ResourceTag/team': ['false'] } } }))], expect: 'implicit-deny' },
  // numbers and multi-valued keys
  { name: 'NumberLessThanEquals', policies: [doc(allow(['kms:*:*'], { Condition: { NumberLessThanEquals: { 'kms:KeyLength': [256] } } }))], conditions: { 'kms:KeyLength': 128 }, expect: 'allow' },
  { name: 'ForAllValues passes when every value is listed', policies: [doc(allow(['kms:*:*'], { Condition: { 'ForAllValues:StringEquals': { 'kms:Tags': ['a', 'b'] } } }))], conditions: { 'kms:Tags': ['a', 'b'] }, expect: 'allow' },
  { name: 'ForAllValues fails when one value is not', policies: [doc(allow(['kms:*:*'], { Condition: { 'ForAllValues:StringEquals': { 'kms:Tags': ['a'] } } }))], conditions: { 'kms:Tags': ['a', 'c'] }, expect: 'implicit-deny' },
  { name: 'ForAnyValue passes when one value is listed', policies: [doc(allow(['kms:*:*'], { Condition: { 'ForAnyValue:StringEquals': { 'kms:Tags': ['c'] } } }))], conditions: { 'kms:Tags': ['a', 'c'] }, expect: 'allow' },
  { name: 'all conditions of a statement must hold', policies: [doc(allow(['kms:*:*'], { Condition: { IpAddress: { 'g:SourceIp': ['10.0.0.0/8'] }, Bool: { 'g:MFAPresent': ['true'] } } }))], expect: 'implicit-deny' },
];

describe('policy evaluation', () => {
  for (const r of rows) {
    test(r.name, () => {
      const d = evaluatePolicies(r.policies, { action: r.action ?? 'kms:cmk:encrypt', resource: r.resource === undefined ? URN : r.resource, conditions: { ...ctx, ...(r.conditions ?? {}) } });
      assert.equal(d.effect, r.expect);
      if (r.expect !== 'implicit-deny') assert.ok(d.matched?.policyId, 'the deciding policy is named');
    });
  }
});

describe('policy validation', () => {
  const bad: [string, unknown, RegExp][] = [
    ['wrong version', { Version: '1.0', Statement: [allow(['a:b:c'])] }, /Version/],
    ['unknown top-level field', { Version: '1.1', Statement: [allow(['a:b:c'])], Extra: 1 }, /Extra|additional/i],
    ['unknown statement field', { Version: '1.1', Statement: [{ ...allow(['a:b:c']), Principal: '*' }] }, /Principal|additional/i],
    ['bad effect', { Version: '1.1', Statement: [{ Effect: 'Maybe', Action: ['a:b:c'] }] }, /Effect/],
    ['action without three parts', { Version: '1.1', Statement: [allow(['kms:encrypt'])] }, /Action/],
    ['unknown operator', { Version: '1.1', Statement: [allow(['a:b:c'], { Condition: { StringSortOf: { 'g:UserName': ['x'] } } })] }, /unknown operator/],
    ['bad CIDR', { Version: '1.1', Statement: [allow(['a:b:c'], { Condition: { IpAddress: { 'g:SourceIp': ['10.0.0.0/33'] } } })] }, /CIDR/],
    ['bad date', { Version: '1.1', Statement: [allow(['a:b:c'], { Condition: { DateLessThan: { 'g:CurrentTime': ['tomorrow'] } } })] }, /date/],
    ['bad resource', { Version: '1.1', Statement: [allow(['a:b:c'], { Resource: ['just-a-name'] })] }, /service:region/],
    ['both Action and NotAction', { Version: '1.1', Statement: [{ Effect: 'Allow', Action: ['a:b:c'], NotAction: ['a:b:d'] }] }, /exactly one of Action and NotAction/],
    ['neither Action nor NotAction', { Version: '1.1', Statement: [{ Effect: 'Allow' }] }, /exactly one of Action and NotAction/],
    ['too long', { Version: '1.1', Statement: [allow(Array.from({ length: 100 }, (_, i) => `svc:res:operation${'x'.repeat(40)}${i}`))] }, /at most 6144/],
  ];
  for (const [name, input, re] of bad) {
    test(`rejects: ${name}`, () => {
      const v = validatePolicyDocument(input);
      assert.equal(v.ok, false);
      if (!v.ok) assert.match(v.errors.join('; '), re);
    });
  }
  test('accepts a full document', () => {
    const v = validatePolicyDocument({ Version: '1.1', Statement: [allow(['kms:cmk:*'], { Resource: [URN], Condition: { IpAddress: { 'g:SourceIp': ['10.0.0.0/8', '::1'] }, 'ForAnyValue:StringLike': { 'g:ResourceTag/env': ['p*'] } } })] });
    assert.equal(v.ok, true);
  });
});
