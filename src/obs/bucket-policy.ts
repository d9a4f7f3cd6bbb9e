/**
 * Bucket policies: the S3 (`2012-10-17`) and OBS (`2008-10-17`) JSON documents a bucket owner
 * attaches to a bucket, compiled into IAM policy statements so that IAM's one evaluator decides
 * them (src/iam/policy.ts) together with the caller's identity policies:
 *
 *   explicit Deny in either  -> denied
 *   otherwise Allow in either -> allowed
 *   otherwise                 -> denied (default deny)
 *
 * Buckets are addressed per account (docs/obs.md), so principals are those of the bucket's own
 * account: everyone (`*`), the account, a user, or an agency. Users are resolved to their ids when
 * the policy is set: a user deleted and created again under the same name is not the one named.
 */
import { Type, type Static } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { validatePolicyDocument, type PolicyStatement, type PrincipalPattern, type ResourcePolicy } from '../iam/policy.js';
import { ObsError } from './obs.js';

/** AWS's limit on a bucket policy's size. */
export const MAX_BUCKET_POLICY_BYTES = 20 * 1024;

const Text = Type.String({ minLength: 1, maxLength: 1024 });
const OneOrMany = Type.Union([Text, Type.Array(Text, { minItems: 1, maxItems: 100 })]);
const Scalar = Type.Union([Type.String({ maxLength: 1024 }), Type.Number(), Type.Boolean()]);
const StatementSchema = Type.Object(
  {
    Sid: Type.Optional(Type.String({ maxLength: 128 })),
    Effect: Type.Union([Type.Literal('Allow'), Type.Literal('Deny')]),
    Principal: Type.Union([Type.Literal('*'), Type.Object({ AWS: Type.Optional(OneOrMany), ID: Type.Optional(OneOrMany) }, { additionalProperties: false })]),
    Action: Type.Optional(OneOrMany),
    NotAction: Type.Optional(OneOrMany),
    Resource: Type.Optional(OneOrMany),
    NotResource: Type.Optional(OneOrMany),
    Condition: Type.Optional(Type.Record(Type.String({ maxLength: 128 }), Type.Record(Type.String({ maxLength: 256 }), Type.Union([Scalar, Type.Array(Scalar, { minItems: 1, maxItems: 100 })])))),
  },
  { additionalProperties: false },
);
const DocumentSchema = Type.Object(
  {
    Version: Type.Optional(Type.Union([Type.Literal('2012-10-17'), Type.Literal('2008-10-17')])),
    Id: Type.Optional(Type.String({ maxLength: 256 })),
    Statement: Type.Union([StatementSchema, Type.Array(StatementSchema, { minItems: 1, maxItems: 100 })]),
  },
  { additionalProperties: false },
);
type Statement = Static<typeof StatementSchema>;

/**
 * Condition keys a bucket policy may use, and the IAM context key each one reads. An unknown key is
 * refused rather than evaluated as absent: a Deny whose condition could never hold would look like
 * protection and be none.
 */
const CONDITION_KEYS: Record<string, string> = {
  'aws:sourceip': 'g:SourceIp',
  'aws:currenttime': 'g:CurrentTime',
  'aws:multifactorauthpresent': 'g:MFAPresent',
  'aws:securetransport': 'g:SecureTransport',
  'aws:username': 'g:UserName',
  'aws:userid': 'g:UserId',
  'aws:principalaccount': 'g:DomainId',
  'aws:requestedregion': 'g:RequestedRegion',
  'g:sourceip': 'g:SourceIp',
  'g:currenttime': 'g:CurrentTime',
  'g:mfapresent': 'g:MFAPresent',
  'g:securetransport': 'g:SecureTransport',
  'g:username': 'g:UserName',
  'g:userid': 'g:UserId',
  'g:domainid': 'g:DomainId',
  'g:requestedregion': 'g:RequestedRegion',
};

/** What the bucket's owner account is called in principals and how its users are looked up. */
export interface PolicyDirectory {
  accountId: string;
  accountName: string;
  userIdByName(name: string): Promise<string | undefined>;
  userExists(id: string): Promise<boolean>;
}

export interface CompiledBucketPolicy {
  /** The document as the owner sent it, returned by GetBucketPolicy. */
  source: string;
  /** The statements in IAM form with their principals (stored as JSON beside the source). */
  compiled: ResourcePolicy['statements'];
}

function malformed(message: string): ObsError {
  return new ObsError(400, 'MalformedPolicy', message);
}

const list = (v: string | string[] | undefined): string[] => (v === undefined ? [] : Array.isArray(v) ? v : [v]);

/** Parses, validates and compiles a bucket policy for `bucket`; every mistake is a 400 MalformedPolicy naming it. */
export async function compileBucketPolicy(bucket: string, body: Buffer, dir: PolicyDirectory): Promise<CompiledBucketPolicy> {
  if (body.length === 0) throw malformed('the policy document is empty');
  if (body.length > MAX_BUCKET_POLICY_BYTES) throw new ObsError(400, 'PolicyTooLarge', `a bucket policy is at most ${MAX_BUCKET_POLICY_BYTES} bytes`);
  let doc: unknown;
  try {
    doc = JSON.parse(body.toString('utf8'));
  } catch {
    throw malformed('the policy is not valid JSON');
  }
  if (!Value.Check(DocumentSchema, doc)) {
    const first = [...Value.Errors(DocumentSchema, doc)].slice(0, 3).map((e) => `${e.path || '/'}: ${e.message}`);
    const hint = JSON.stringify(doc).includes('"NotPrincipal"') ? ' (NotPrincipal is not supported)' : '';
    throw malformed(`the policy does not have the form of a bucket policy${hint}: ${first.join('; ')}`);
  }
  const statements = Array.isArray(doc.Statement) ? doc.Statement : [doc.Statement];
  const compiled: { principals: PrincipalPattern[]; statement: PolicyStatement }[] = [];
  for (const [i, st] of statements.entries()) {
    compiled.push({ principals: await principals(st, i, dir), statement: statement(bucket, dir.accountId, st, i) });
  }
  // IAM's validator checks what the translation produced: operators, values, CIDRs.
  const checked = validatePolicyDocument({ Version: '1.1', Statement: compiled.map((c) => c.statement) });
  if (!checked.ok) throw malformed(`the policy is not valid: ${checked.errors.slice(0, 3).join('; ')}`);
  return { source: body.toString('utf8'), compiled };
}

async function principals(st: Statement, i: number, dir: PolicyDirectory): Promise<PrincipalPattern[]> {
  if (st.Principal === '*') return [{ kind: 'any' }];
  const names = [...list(st.Principal.AWS), ...list(st.Principal.ID)];
  if (!names.length) throw malformed(`Statement ${i}: Principal names no one`);
  const out: PrincipalPattern[] = [];
  for (const n of names) {
    if (n === '*') {
      out.push({ kind: 'any' });
      continue;
    }
    const account = n === dir.accountId || n === `arn:aws:iam::${dir.accountId}:root` || n === `domain/${dir.accountId}` || n === `arn:aws:iam::${dir.accountName}:root`;
    if (account) {
      out.push({ kind: 'account', accountId: dir.accountId });
      continue;
    }
    let m = /^arn:aws:iam::([^:]+):user\/(.+)$/.exec(n);
    if (m && (m[1] === dir.accountId || m[1] === dir.accountName)) {
      const id = await dir.userIdByName(m[2]!);
      if (!id) throw malformed(`Invalid principal in policy: no user ${m[2]} in this account`);
      out.push({ kind: 'user', userId: id });
      continue;
    }
    m = /^domain\/([^:]+):user\/(.+)$/.exec(n);
    if (m && m[1] === dir.accountId) {
      if (!(await dir.userExists(m[2]!))) throw malformed(`Invalid principal in policy: no user with id ${m[2]} in this account`);
      out.push({ kind: 'user', userId: m[2]! });
      continue;
    }
    m = /^arn:aws:iam::([^:]+):role\/(.+)$/.exec(n);
    if (m && (m[1] === dir.accountId || m[1] === dir.accountName)) {
      out.push({ kind: 'agency', agencyName: m[2]! });
      continue;
    }
    throw malformed(`Invalid principal in policy: ${n.slice(0, 200)} (principals are *, this account, its users or its agencies; buckets are addressed per account, so other accounts cannot be granted access)`);
  }
  return out;
}

/** S3 actions are OBS actions of the same name (`s3:GetObject` is `obs:object:GetObject`). */
function action(a: string, i: number): string {
  if (a === '*') return '*';
  const s3 = /^s3:([A-Za-z0-9*?]+)$/.exec(a);
  if (s3) return `obs:*:${s3[1]}`;
  if (/^obs:[A-Za-z0-9*?]+:[A-Za-z0-9*?]+$/i.test(a)) return a;
  const bare = /^([A-Za-z0-9*?]+)$/.exec(a); // OBS console policies name the operation alone
  if (bare) return `obs:*:${bare[1]}`;
  throw malformed(`Statement ${i}: the action ${a.slice(0, 100)} is not an S3 or OBS action (s3:GetObject, obs:object:GetObject, s3:*)`);
}

/** `arn:aws:s3:::bucket`, `arn:aws:s3:::bucket/key-pattern`, or OBS's `bucket` and `bucket/key-pattern`; only this bucket. */
function resource(bucket: string, accountId: string, r: string, i: number): string {
  const path = r.startsWith('arn:aws:s3:::') ? r.slice('arn:aws:s3:::'.length) : r;
  const slash = path.indexOf('/');
  const name = slash < 0 ? path : path.slice(0, slash);
  if (name !== bucket) throw malformed(`Statement ${i}: Policy has invalid resource ${r.slice(0, 200)} (a bucket policy covers its own bucket, ${bucket}, and its objects)`);
  return slash < 0 ? `obs:*:${accountId}:bucket:${bucket}` : `obs:*:${accountId}:object:${path}`;
}

function statement(bucket: string, accountId: string, st: Statement, i: number): PolicyStatement {
  if ((st.Action === undefined) === (st.NotAction === undefined)) throw malformed(`Statement ${i}: give exactly one of Action and NotAction`);
  if ((st.Resource === undefined) === (st.NotResource === undefined)) throw malformed(`Statement ${i}: give exactly one of Resource and NotResource`);
  const out: PolicyStatement = { Effect: st.Effect };
  if (st.Sid !== undefined) out.Sid = st.Sid;
  if (st.Action !== undefined) out.Action = list(st.Action).map((a) => action(a, i));
  if (st.NotAction !== undefined) out.NotAction = list(st.NotAction).map((a) => action(a, i));
  if (st.Resource !== undefined) out.Resource = list(st.Resource).map((r) => resource(bucket, accountId, r, i));
  if (st.NotResource !== undefined) out.NotResource = list(st.NotResource).map((r) => resource(bucket, accountId, r, i));
  if (st.Condition !== undefined) {
    const cond: NonNullable<PolicyStatement['Condition']> = {};
    for (const [op, block] of Object.entries(st.Condition)) {
      const b: Record<string, (typeof block)[string]> = {};
      for (const [key, v] of Object.entries(block)) {
        const tag = /^(?:aws|g):ResourceTag\/(.+)$/i.exec(key);
        const mapped = tag ? `g:ResourceTag/${tag[1]}` : CONDITION_KEYS[key.toLowerCase()];
        if (!mapped) throw malformed(`Statement ${i}: the condition key ${key.slice(0, 100)} is not supported (supported: aws:SourceIp, aws:CurrentTime, aws:MultiFactorAuthPresent, aws:SecureTransport, aws:username, aws:userid, aws:PrincipalAccount, aws:RequestedRegion, aws:ResourceTag/<key> for the bucket's tags)`);
        b[mapped] = v;
      }
      cond[op] = b;
    }
    out.Condition = cond;
  }
  return out;
}
