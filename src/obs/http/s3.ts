/**
 * The S3 REST protocol on the OBS listener (path-style: `/{bucket}/{key}`), SigV4-signed (header or
 * presigned URL). Bucket names are per account: a request names a bucket of the caller's account, so
 * another tenant's bucket is indistinguishable from a missing one.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { PassThrough, Readable, Transform } from 'node:stream';
import { XMLBuilder, XMLParser } from 'fast-xml-parser';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { isAnonymous, type IamService, type Principal, type ResourceRef } from '../../iam/iam.js';
import type { ResourcePolicy } from '../../iam/policy.js';
import { compileBucketPolicy } from '../bucket-policy.js';
import { lifecycleDocument, parseLifecycle } from '../lifecycle.js';
import { CHECKSUM_BYTES, checksummer, COMPOSITE_ALGORITHMS, FULL_OBJECT_ALGORITHMS, isChecksumAlgorithm, type ChecksumAlgorithm, type UploadChecksum } from '../checksums.js';
import { CORS_METHODS, corsDocument, HEADER_NAME, matchCorsRule, parseCorsConfiguration, preflightAllowed, responseCorsHeaders, type CorsRule } from '../cors.js';
import { ProjectLookup, scopeOfProject, type KeyUseCheck } from '../../kms/http/common.js';
import type { KeyRow } from '../../kms/store.js';
import { principalOf, type RouteDef, type RouteMeta } from '../../server/route.js';
import { etagMatches, hasPublicAccessBlock, isPublicBucket, ObsError, publicAccessBlockOf, type LockMode, type PublicAccessBlock, type ObjectMeta, type ObsService, type VerifyUpload, type WriteCondition } from '../obs.js';
import type { BucketRow, ObjectRow, UploadRow } from '../store.js';
import { AwsChunkedDecoder } from './chunked.js';
import { applyWatermark, MAX_IMAGE_BYTES, parseWatermark } from '../watermark.js';

const xml = new XMLBuilder({ ignoreAttributes: false, suppressEmptyNode: false });
const parser = new XMLParser({ ignoreAttributes: true, parseTagValue: false });
const S3_NS = 'http://s3.amazonaws.com/doc/2006-03-01/';

function xmlDoc(body: Record<string, unknown>): string {
  return `<?xml version="1.0" encoding="UTF-8"?>\n${xml.build(body)}`;
}
const httpDate = (ms: number) => new Date(ms).toUTCString();
const isoDate = (ms: number) => new Date(ms).toISOString();

/** The bucket each request resolved before authorization, handed to its handler. */
const resolvedBuckets = new WeakMap<FastifyRequest, BucketRow>();
function bucketOf(req: FastifyRequest): BucketRow {
  const b = resolvedBuckets.get(req);
  if (!b) throw new Error('a bucket route ran without its bucket resolved');
  return b;
}
function bucketResource(req: FastifyRequest, b: BucketRow, key?: string, withPolicy = true): ResourceRef {
  resolvedBuckets.set(req, b);
  return resourceRef(b, key, withPolicy);
}
/** Compiled bucket policies by their stored text (a policy changes rarely; parsing it per request need not). */
const policies = new Map<string, ResourcePolicy>();
function policyOf(b: BucketRow): ResourcePolicy | undefined {
  if (!b.policy_compiled_json) return undefined;
  let p = policies.get(b.policy_compiled_json);
  if (!p) {
    p = { id: `bucket-policy:${b.name}`, statements: JSON.parse(b.policy_compiled_json) as ResourcePolicy['statements'] };
    if (policies.size >= 1000) policies.clear();
    policies.set(b.policy_compiled_json, p);
  }
  return p;
}
/**
 * The bucket or object a request acts on, with the bucket's policy (decided by IAM with the caller's
 * own policies) and, for the bucket itself, its tags (g:ResourceTag/<key> conditions).
 */
function resourceRef(b: BucketRow, key?: string, withPolicy = true): ResourceRef {
  const ref: ResourceRef = key === undefined
    ? { service: 'obs', type: 'bucket', id: b.name, name: b.name, accountId: b.account_id, projectId: b.project_id, region: b.region, ...(b.tags_json ? { tags: JSON.parse(b.tags_json) as Record<string, string> } : {}) }
    : { service: 'obs', type: 'object', id: `${b.name}/${key}`, name: key, accountId: b.account_id, projectId: b.project_id, region: b.region };
  const policy = withPolicy ? policyOf(b) : undefined;
  if (policy) ref.resourcePolicy = policy;
  return ref;
}

/** Parsed CORS rules by their stored text. */
const corsRules = new Map<string, CorsRule[]>();
function corsOf(b: BucketRow): CorsRule[] | undefined {
  if (!b.cors_json) return undefined;
  let rules = corsRules.get(b.cors_json);
  if (!rules) {
    rules = JSON.parse(b.cors_json) as CorsRule[];
    if (corsRules.size >= 1000) corsRules.clear();
    corsRules.set(b.cors_json, rules);
  }
  return rules;
}

/**
 * The Access-Control-* headers of an actual response (success or error): from the first CORS rule of
 * the request's bucket that allows its Origin and method. Without a match, none, and the browser keeps
 * the response from the page. Set on every response of the S3 listener (AppDeps.onSend).
 */
export function s3CorsHeaders(req: FastifyRequest, reply: FastifyReply): void {
  const origin = req.headers.origin;
  if (typeof origin !== 'string' || req.method === 'OPTIONS') return;
  // A refusal without credentials looks the same for every bucket, CORS headers included.
  if (req.custos?.principal && isAnonymous(req.custos.principal) && reply.statusCode === 403) return;
  const b = resolvedBuckets.get(req);
  const rules = b ? corsOf(b) : undefined;
  if (!rules) return;
  reply.header('vary', 'Origin, Access-Control-Request-Headers, Access-Control-Request-Method');
  const rule = matchCorsRule(rules, origin, req.method);
  if (rule) for (const [k, v] of Object.entries(responseCorsHeaders(rule, origin))) reply.header(k, v);
}

/**
 * ACLs are disabled, as on a new AWS bucket (Object Ownership: BucketOwnerEnforced): the bucket's
 * account owns every object and access is decided by IAM and bucket policies. A request may still
 * name the canned ACLs that say exactly that; any other ACL is refused, never silently ignored.
 */
const OWNER_ONLY_ACLS = new Set(['private', 'bucket-owner-full-control']);
function refuseAcl(req: FastifyRequest, forBucket: boolean): void {
  const canned = req.headers['x-amz-acl'] ?? req.headers['x-obs-acl'];
  const grants = Object.keys(req.headers).filter((h) => h.startsWith('x-amz-grant-') || h.startsWith('x-obs-grant-'));
  if ((canned !== undefined && !OWNER_ONLY_ACLS.has(String(canned))) || grants.length) {
    if (forBucket) throw new ObsError(400, 'InvalidBucketAclWithObjectOwnership', 'Bucket cannot have ACLs set with ObjectOwnership\'s BucketOwnerEnforced setting');
    throw new ObsError(400, 'AccessControlListNotSupported', 'The bucket does not allow ACLs');
  }
}
function aclXml(b: BucketRow, ownerName: string): string {
  const owner = { ID: b.account_id, DisplayName: ownerName };
  return xmlDoc({
    AccessControlPolicy: {
      '@_xmlns': S3_NS, Owner: owner,
      AccessControlList: { Grant: { Grantee: { '@_xmlns:xsi': 'http://www.w3.org/2001/XMLSchema-instance', '@_xsi:type': 'CanonicalUser', ...owner }, Permission: 'FULL_CONTROL' } },
    },
  });
}
/** PutBucketAcl/PutObjectAcl: a canned header, or a body that grants the owner FULL_CONTROL and nothing else. */
async function acceptOwnerOnlyAcl(req: FastifyRequest, b: BucketRow): Promise<void> {
  refuseAcl(req, false);
  const body = await readSmallBody(req, 64 * 1024);
  if (body.length === 0) return;
  const doc = parseXml(body) as { AccessControlPolicy?: { AccessControlList?: { Grant?: unknown } } };
  if (!doc.AccessControlPolicy) throw new ObsError(400, 'MalformedACLError', 'The XML you provided was not well-formed or did not validate against our published schema');
  const raw = doc.AccessControlPolicy.AccessControlList?.Grant;
  const grants = (Array.isArray(raw) ? raw : raw === undefined ? [] : [raw]) as { Grantee?: { ID?: string; URI?: string; EmailAddress?: string }; Permission?: string }[];
  const ownerOnly = grants.length === 1 && grants[0]!.Grantee?.ID === b.account_id && grants[0]!.Permission === 'FULL_CONTROL';
  if (!ownerOnly) throw new ObsError(400, 'AccessControlListNotSupported', 'The bucket does not allow ACLs');
}

/**
 * Requests without credentials may only read: an object (GET/HEAD, a version too) and a bucket's
 * listing and existence, each only as far as the public bucket's policy allows it. Any other action
 * needs credentials, whatever a policy says.
 */
export const ANONYMOUS_ACTIONS: ReadonlySet<string> = new Set(['obs:object:GetObject', 'obs:object:GetObjectVersion', 'obs:bucket:ListBucket', 'obs:bucket:HeadBucket']);

/**
 * A DELETE names its operation by subresource; one this route does not serve (`?website`,
 * `?replication`, ...) is 501, not the plain deletion. `x-id` is the AWS SDK's operation label.
 */
function refuseUnknownParams(req: FastifyRequest, what: 'bucket' | 'object', allowed: string[]): void {
  const unknown = Object.keys(req.query as Record<string, unknown>).filter((k) => k !== 'x-id' && !allowed.includes(k));
  if (unknown.length) throw new ObsError(501, 'NotImplemented', `${what} subresource ${unknown.map((k) => k.slice(0, 64)).join(', ')} is not implemented`);
}

/** PutPublicAccessBlock's body: the four flags, each `true` or `false`; an omitted one is false, as in S3. */
function parsePublicAccessBlock(body: Buffer): PublicAccessBlock {
  const doc = parseXml(body) as { PublicAccessBlockConfiguration?: Record<string, unknown> | string };
  const c = doc.PublicAccessBlockConfiguration;
  // An empty element sets every flag off; text in it is no configuration at all.
  if (c === undefined || (typeof c === 'string' && c.trim() !== '') || Array.isArray(c)) {
    throw new ObsError(400, 'MalformedXML', 'The XML you provided was not well-formed or did not validate against our published schema');
  }
  const fields = typeof c === 'object' && c !== null ? c : {};
  const flag = (name: keyof PublicAccessBlock): boolean => {
    const v = fields[name];
    if (v === undefined) return false;
    if (v === 'true' || v === 'false') return v === 'true';
    throw new ObsError(400, 'MalformedXML', `${name} must be true or false`);
  };
  const unknown = Object.keys(fields).filter((k) => !['BlockPublicAcls', 'IgnorePublicAcls', 'BlockPublicPolicy', 'RestrictPublicBuckets'].includes(k));
  if (unknown.length) throw new ObsError(400, 'MalformedXML', `unknown element ${unknown[0]!.slice(0, 64)} in PublicAccessBlockConfiguration`);
  return { BlockPublicAcls: flag('BlockPublicAcls'), IgnorePublicAcls: flag('IgnorePublicAcls'), BlockPublicPolicy: flag('BlockPublicPolicy'), RestrictPublicBuckets: flag('RestrictPublicBuckets') };
}

/** S3's Range header: `bytes=a-b`, `bytes=a-`, `bytes=-n`. Null when absent; throws 416 when unsatisfiable. */
function parseRange(header: string | undefined, size: number): { start: number; end: number } | null {
  if (header === undefined) return null;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  // A syntactically invalid or multi-range header is ignored, as S3 does: the whole object is sent.
  if (!m || (m[1] === '' && m[2] === '')) return null;
  let start: number;
  let end: number;
  if (m[1] === '') {
    const n = Number(m[2]);
    if (n === 0) throw rangeError(size);
    start = Math.max(0, size - n);
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
    if (m[2] !== '' && Number(m[2]) < start) return null;
  }
  if (start >= size) throw rangeError(size);
  return { start, end };
}
function rangeError(size: number): ObsError {
  return new ObsError(416, 'InvalidRange', `the requested range is not satisfiable (object size ${size})`);
}

function objectHeaders(reply: FastifyReply, row: ObjectRow, arn: string, versioned: boolean, req?: FastifyRequest): void {
  reply.header('etag', `"${row.etag}"`);
  if (versioned || row.version_id !== 'null') reply.header('x-amz-version-id', row.version_id);
  reply.header('last-modified', httpDate(row.created_at));
  reply.header('content-type', row.content_type);
  reply.header('accept-ranges', 'bytes');
  if (row.kms_key_id === 'SSE-C') {
    reply.header('x-amz-server-side-encryption-customer-algorithm', 'AES256');
    const md5 = req?.headers['x-amz-server-side-encryption-customer-key-md5'];
    if (typeof md5 === 'string') reply.header('x-amz-server-side-encryption-customer-key-md5', md5);
  } else {
    reply.header('x-amz-server-side-encryption', 'aws:kms');
    reply.header('x-amz-server-side-encryption-aws-kms-key-id', arn);
  }
  for (const [k, v] of Object.entries(JSON.parse(row.metadata_json) as Record<string, string>)) {
    reply.header(`x-amz-meta-${k}`, v);
    reply.header(`x-obs-meta-${k}`, v);
  }
  if (row.lock_mode && row.lock_until !== null) {
    reply.header('x-amz-object-lock-mode', row.lock_mode);
    reply.header('x-amz-object-lock-retain-until-date', isoDate(row.lock_until));
  }
  if (row.legal_hold) reply.header('x-amz-object-lock-legal-hold', 'ON');
  if (row.tags_json) reply.header('x-amz-tagging-count', String(Object.keys(JSON.parse(row.tags_json) as object).length));
}

/** x-amz-checksum-* headers that carry no checksum value. */
const CHECKSUM_SETTINGS = new Set(['algorithm', 'type', 'mode']);

/**
 * Conditional headers, evaluated in RFC 7232's order as S3 applies it: If-Match (or, without it,
 * If-Unmodified-Since) failing is 412; then If-None-Match (or, without it, If-Modified-Since) failing is
 * "not modified" (304 on GET/HEAD; 412 for a copy source, whose headers carry the x-amz-copy-source- prefix).
 * Last-Modified has one-second resolution; an unparsable date is ignored.
 */
function evaluateConditions(req: FastifyRequest, row: ObjectRow, prefix: '' | 'x-amz-copy-source-' = ''): 'ok' | 'not-modified' {
  const header = (name: string) => {
    const v = req.headers[prefix + name];
    return typeof v === 'string' ? v : undefined;
  };
  const date = (name: string) => {
    const t = Date.parse(header(name) ?? '');
    return Number.isFinite(t) ? t : null;
  };
  const lastModified = Math.floor(row.created_at / 1000) * 1000;
  const ifMatch = header('if-match');
  if (ifMatch !== undefined) {
    if (!etagMatches(ifMatch, row.etag)) throw preconditionFailed(`${prefix}If-Match`);
  } else {
    const since = date('if-unmodified-since');
    if (since !== null && lastModified > since) throw preconditionFailed(`${prefix}If-Unmodified-Since`);
  }
  const ifNoneMatch = header('if-none-match');
  if (ifNoneMatch !== undefined) return etagMatches(ifNoneMatch, row.etag) ? 'not-modified' : 'ok';
  const since = date('if-modified-since');
  return since !== null && lastModified <= since ? 'not-modified' : 'ok';
}
function preconditionFailed(condition: string): ObsError {
  return new ObsError(412, 'PreconditionFailed', `At least one of the pre-conditions you specified did not hold (${condition})`, { condition });
}

/** If-None-Match: * and If-Match: <etag> on PutObject, CopyObject and CompleteMultipartUpload. */
function writeCondition(req: FastifyRequest): WriteCondition | undefined {
  const none = req.headers['if-none-match'];
  const match = req.headers['if-match'];
  if (none === undefined && match === undefined) return undefined;
  if (none !== undefined && String(none).trim() !== '*') throw new ObsError(501, 'NotImplemented', 'A header you provided implies functionality that is not implemented: If-None-Match on a write takes only *');
  return { ...(none !== undefined ? { ifNoneMatch: true } : {}), ...(typeof match === 'string' ? { ifMatch: match } : {}) };
}

/** x-amz-copy-source-range on UploadPartCopy: exactly `bytes=first-last`, inside the source. */
function parseCopyRange(header: string | string[] | undefined, size: number): { start: number; end: number } {
  if (header === undefined) return { start: 0, end: size - 1 };
  const m = typeof header === 'string' ? /^bytes=(\d+)-(\d+)$/.exec(header.trim()) : null;
  if (!m) throw new ObsError(400, 'InvalidArgument', 'The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy');
  const start = Number(m[1]);
  const end = Number(m[2]);
  if (start > end || end >= size) throw new ObsError(400, 'InvalidArgument', `Range specified is not valid for source object of size: ${size}`);
  return { start, end };
}

/** Decides whether a copy may leave its region (the privacy service's transfer records). */
export interface TransferGate {
  requireTransfer(accountId: string, transferId: string | undefined, what: { kind: 'collection' | 'bucket'; name: string; sourceRegion: string; destinationRegion: string }): Promise<void>;
}

export function s3Routes(obs: ObsService, iam: IamService, regions: string[], transfers?: TransferGate, opts: { corsOrigins?: readonly string[]; mayUseKey?: KeyUseCheck; mayDecryptWith?: KeyUseCheck } = {}): RouteDef[] {
  const corsOrigins = opts.corsOrigins ?? ['*'];
  const projects = new ProjectLookup(iam);
  const meta = (action: string, resourceType: string, resource: RouteMeta['resource'], extra: Partial<RouteMeta> = {}): RouteMeta => ({
    dialect: 's3', service: 'OBS', action, resourceType, ...(resource ? { resource } : {}), ...extra,
  });
  const bucketRes = (withKey: boolean, withPolicy = true) => async (req: FastifyRequest, p: Principal): Promise<ResourceRef | null> => {
    const params = req.params as { bucket: string; '*'?: string };
    // A request without credentials names a public bucket (unique name); every other, one of its account.
    const b = isAnonymous(p) ? await obs.findPublicBucket(params.bucket) : await obs.findBucket(p.accountId, params.bucket);
    return b ? bucketResource(req, b, withKey ? params['*'] : undefined, withPolicy) : null;
  };
  // Managing the bucket policy is decided by IAM policies alone, so that no bucket policy can lock
  // the account's administrators out of correcting it (AWS keeps the same escape for the root user).
  const policyAdmin = bucketRes(false, false);
  const keyOf = (req: FastifyRequest) => (req.params as { '*': string })['*'];
  /** A second resource in one request (a copy's source, each key of a batch delete) gets its own decision. */
  const allowed = async (req: FastifyRequest, action: string, b: BucketRow, key: string) => {
    const p = principalOf(req);
    const ctx = { sourceIp: req.ip, secure: req.protocol === 'https' };
    const d = isAnonymous(p) ? await iam.authorizeAnonymous(action, resourceRef(b, key), ctx) : await iam.authorize(p, action, resourceRef(b, key), ctx);
    return d.effect === 'allow';
  };

  /**
   * A customer KMS key a write uses (one the request names, else the bucket's default key) is used on
   * the caller's behalf: the caller must be allowed to make data keys under it, as S3 asks
   * kms:GenerateDataKey. The tenant's obs/default key, which the service manages, needs no grant.
   */
  const authorizeNamedKey = async (req: FastifyRequest, b: BucketRow, ref: string | undefined) => {
    if (ref === undefined || !opts.mayUseKey) return;
    const key = await obs.namedKey(b, ref);
    if (!(await opts.mayUseKey(principalOf(req), key, req.ip))) throw new ObsError(403, 'AccessDenied', 'Access Denied: not authorized to use the KMS key (kms:cmk:generate) named for encryption');
  };
  /**
   * Reading a version sealed under a customer KMS key decrypts with that key on the caller's behalf: the
   * caller must be allowed to, as S3 asks kms:Decrypt to read an SSE-KMS object (so an explicit deny on
   * the key holds, and an anonymous reader of a public bucket gets nothing under such a key). The
   * service-managed obs/default key and SSE-C (the caller brings the key) need nothing more.
   */
  const authorizeReadKey = async (req: FastifyRequest, b: BucketRow, row: ObjectRow): Promise<KeyRow | undefined> => {
    const v = await obs.versionKey(b, row);
    await requireDecrypt(req, v, 'object');
    // Handed to readObject, which then does not look the key up again.
    return v?.key;
  };
  /**
   * A multipart upload under a customer KMS key: adding a part decrypts its data key, listing its
   * parts shows their ETags and checksums, completing it answers the object's checksum, so each needs
   * the key's decrypt permission (as S3 asks kms:Decrypt).
   */
  const authorizeUploadKey = async (req: FastifyRequest, b: BucketRow, u: UploadRow) => requireDecrypt(req, await obs.uploadKmsKey(b, u), 'upload');
  const requireDecrypt = async (req: FastifyRequest, v: { key: KeyRow; managed: boolean } | null, what: 'object' | 'upload') => {
    if (v && !v.managed && opts.mayDecryptWith && !(await opts.mayDecryptWith(principalOf(req), v.key, req.ip))) {
      throw new ObsError(403, 'AccessDenied', `Access Denied: not authorized to decrypt with the KMS key the ${what} is encrypted under (kms:cmk:decrypt)`);
    }
  };
  const namedKeyHeader = (req: FastifyRequest) => {
    const v = req.headers['x-amz-server-side-encryption-aws-kms-key-id'];
    return typeof v === 'string' ? v : undefined;
  };

  /**
   * What a write's headers set beyond the content needs its own permission, as in S3: a retention
   * (x-amz-object-lock-mode/-retain-until-date) PutObjectRetention, a legal hold PutObjectLegalHold,
   * tags (x-amz-tagging) PutObjectTagging. Otherwise PutObject alone could lock a version under
   * COMPLIANCE for ever, or tie an object to a data subject (the custos:subject tag).
   */
  const authorizeWriteSettings = async (req: FastifyRequest, b: BucketRow, key: string) => {
    const h = req.headers;
    const needs: [string, string][] = [];
    if (h['x-amz-object-lock-mode'] !== undefined || h['x-amz-object-lock-retain-until-date'] !== undefined) needs.push(['obs:object:PutObjectRetention', 'x-amz-object-lock-mode']);
    if (h['x-amz-object-lock-legal-hold'] !== undefined) needs.push(['obs:object:PutObjectLegalHold', 'x-amz-object-lock-legal-hold']);
    if (h['x-amz-tagging'] !== undefined) needs.push(['obs:object:PutObjectTagging', 'x-amz-tagging']);
    for (const [action, header] of needs) {
      if (!(await allowed(req, action, b, key))) throw new ObsError(403, 'AccessDenied', `Access Denied: ${header} needs ${action}`);
    }
  };

  /**
   * The source of CopyObject and UploadPartCopy: `/bucket/key[?versionId=id]` of the caller's account,
   * authorized as a read of its own, its SSE-C key (x-amz-copy-source-server-side-encryption-customer-*)
   * checked, and the x-amz-copy-source-if-* conditions met (412 otherwise).
   */
  const copySource = async (req: FastifyRequest, dest: BucketRow, source: string) => {
    const m = /^\/?([^/]+)\/(.+?)(?:\?versionId=([^&]+))?$/.exec(source);
    if (!m) throw new ObsError(400, 'InvalidArgument', 'x-amz-copy-source must be /bucket/key[?versionId=id]');
    const srcBucket = await obs.findBucket(principalOf(req).accountId, safeDecode(m[1]!));
    if (!srcBucket) throw new ObsError(404, 'NoSuchBucket', 'the source bucket does not exist');
    const srcKey = safeDecode(m[2]!);
    // Personal data stays in its region: a copy into a bucket of another region names its transfer record.
    if (srcBucket.region !== dest.region) {
      if (!transfers) throw new ObsError(403, 'AccessDenied', 'copies between regions need a transfer record');
      const id = req.headers['x-custos-transfer-id'];
      await transfers.requireTransfer(principalOf(req).accountId, typeof id === 'string' ? id : undefined, { kind: 'bucket', name: srcBucket.name, sourceRegion: srcBucket.region, destinationRegion: dest.region });
    }
    if (!(await allowed(req, m[3] ? 'obs:object:GetObjectVersion' : 'obs:object:GetObject', srcBucket, srcKey))) throw new ObsError(403, 'AccessDenied', 'not authorized to read the copy source');
    const row = await obs.headObject(srcBucket, srcKey, m[3] ? safeDecode(m[3]) : undefined);
    const cmk = await authorizeReadKey(req, srcBucket, row);
    const customerKey = sseCustomerKey(req, 'x-amz-copy-source-server-side-encryption-customer-');
    // An SSE-C source answers conditions only to the holder of its key.
    if (obs.isSseC(row)) (await obs.dataKeyOf(srcBucket, row, customerKey)).fill(0);
    if (evaluateConditions(req, row, 'x-amz-copy-source-') !== 'ok') throw preconditionFailed(req.headers['x-amz-copy-source-if-none-match'] !== undefined ? 'x-amz-copy-source-If-None-Match' : 'x-amz-copy-source-If-Modified-Since');
    return { bucket: srcBucket, row, customerKey, cmk };
  };
  const copySourceHeaders = (reply: FastifyReply, src: { bucket: BucketRow; row: ObjectRow }) => {
    if (src.bucket.versioning || src.row.version_id !== 'null') reply.header('x-amz-copy-source-version-id', src.row.version_id);
  };

  /** CopyObject: the source is read (and decrypted) and written anew under the destination's key. */
  const copyObject = async (req: FastifyRequest, reply: FastifyReply, dest: BucketRow, source: string) => {
    const src = await copySource(req, dest, source);
    const row = src.row;
    const directive = req.headers['x-amz-metadata-directive'] ?? 'COPY';
    if (directive !== 'COPY' && directive !== 'REPLACE') throw new ObsError(400, 'InvalidArgument', 'x-amz-metadata-directive must be COPY or REPLACE');
    const requested = objectMeta(req);
    const meta: ObjectMeta = directive === 'REPLACE' ? requested : {
      contentType: row.content_type, metadata: JSON.parse(row.metadata_json) as Record<string, string>,
      ...(requested.kmsKey ? { kmsKey: requested.kmsKey } : {}), ...(requested.customerKey ? { customerKey: requested.customerKey } : {}),
    };
    const condition = writeCondition(req);
    // The copy's checksum: of the algorithm asked for (x-amz-checksum-algorithm), else of the source's
    // algorithm (a multipart source's composite checksum becomes a full-object one), computed anew.
    const asked = req.headers['x-amz-checksum-algorithm'];
    const alg = typeof asked === 'string' ? asked.toLowerCase() : row.checksum?.slice(0, row.checksum.indexOf(':'));
    if (alg !== undefined && !isChecksumAlgorithm(alg)) throw new ObsError(400, 'InvalidRequest', 'x-amz-checksum-algorithm is one of CRC32, CRC32C, CRC64NVME, SHA1, SHA256');
    const content = await obs.readObject(src.bucket, row, 0, row.size - 1, src.customerKey, src.cmk);
    copySourceHeaders(reply, src);
    try {
      return await obs.putObject(dest, keyOf(req), content, meta, ({ size }) => {
        if (size !== row.size) throw new ObsError(500, 'InternalError', 'the copy read a different size than the source has');
      }, { condition, computeChecksum: alg });
    } finally {
      content.destroy();
    }
  };
  const kmsArn = (b: BucketRow, row: ObjectRow) => `arn:aws:kms:${b.region}:${b.account_id}:key/${row.kms_key_id}`;

  /**
   * CORS preflight: public (browsers send no credentials), answered from the installation's
   * obsCorsOrigins without looking at any bucket, so it tells nothing about which buckets exist.
   */
  const preflight = async (req: FastifyRequest, reply: FastifyReply) => {
    const origin = req.headers.origin;
    const method = req.headers['access-control-request-method'];
    if (typeof origin !== 'string' || typeof method !== 'string') throw new ObsError(400, 'BadRequest', 'Insufficient information. Origin request header needed.');
    const asked = req.headers['access-control-request-headers'];
    const headers = typeof asked === 'string' ? asked.split(',').map((h) => h.trim()).filter(Boolean) : [];
    if (!(CORS_METHODS as readonly string[]).includes(method) || !preflightAllowed(corsOrigins, origin) || headers.some((h) => !HEADER_NAME.test(h))) {
      throw new ObsError(403, 'AccessForbidden', 'CORSResponse: This CORS request is not allowed. This is usually because the evaluation of Origin, request method / Access-Control-Request-Method or Access-Control-Request-Headers are not whitelisted by the resource\'s CORS spec.');
    }
    reply.header('access-control-allow-origin', origin);
    reply.header('access-control-allow-credentials', 'true');
    reply.header('access-control-allow-methods', method);
    if (headers.length) reply.header('access-control-allow-headers', headers.join(', '));
    reply.header('access-control-max-age', '600');
    reply.header('vary', 'Origin, Access-Control-Request-Headers, Access-Control-Request-Method');
    return reply.code(200).send();
  };
  const preflightMeta: RouteMeta = { dialect: 's3', service: 'OBS', action: null, resourceType: 'bucket' };

  return [
    { method: 'OPTIONS', url: '/:bucket', meta: preflightMeta, handler: preflight },
    { method: 'OPTIONS', url: '/:bucket/*', meta: preflightMeta, handler: preflight },
    {
      method: 'GET', url: '/', meta: meta('obs:bucket:ListAllMyBuckets', 'bucket', undefined),
      handler: async (req, reply) => {
        const p = principalOf(req);
        const buckets = await obs.listBuckets(p.accountId);
        reply.type('application/xml');
        return xmlDoc({
          ListAllMyBucketsResult: {
            '@_xmlns': S3_NS,
            Owner: { ID: p.accountId, DisplayName: p.accountName },
            Buckets: { Bucket: buckets.map((b) => ({ Name: b.name, CreationDate: isoDate(b.created_at), BucketRegion: b.region })) },
          },
        });
      },
    },
    {
      method: 'PUT', url: '/:bucket',
      meta: meta('obs:bucket:CreateBucket', 'bucket', async (req, p) => ({ service: 'obs', type: 'bucket', id: (req.params as { bucket: string }).bucket, accountId: p.accountId }), {
        bySubresource: {
          versioning: { action: 'obs:bucket:PutBucketVersioning', resource: bucketRes(false) },
          lifecycle: { action: 'obs:bucket:PutLifecycleConfiguration', resource: bucketRes(false) },
          'object-lock': { action: 'obs:bucket:PutBucketObjectLockConfiguration', resource: bucketRes(false) },
          tagging: { action: 'obs:bucket:PutBucketTagging', resource: bucketRes(false) },
          encryption: { action: 'obs:bucket:PutEncryptionConfiguration', resource: bucketRes(false) },
          policy: { action: 'obs:bucket:PutBucketPolicy', resource: policyAdmin },
          publicAccessBlock: { action: 'obs:bucket:PutBucketPublicAccessBlock', resource: policyAdmin },
          acl: { action: 'obs:bucket:PutBucketAcl', resource: bucketRes(false) },
          cors: { action: 'obs:bucket:PutBucketCORS', resource: bucketRes(false) },
        },
      }),
      handler: async (req, reply) => {
        const p = principalOf(req);
        const q = req.query as Record<string, string>;
        if ('policy' in q) {
          const b = bucketOf(req);
          const compiled = await compileBucketPolicy(b.name, await readSmallBody(req, 64 * 1024), {
            accountId: b.account_id, accountName: p.accountName,
            userIdByName: async (name) => (await iam.getUserByName(b.account_id, name))?.id,
            userExists: async (id) => (await iam.getUser(b.account_id, id)) !== undefined,
          });
          await obs.setBucketPolicy(b, compiled);
          return reply.code(204).send();
        }
        if ('publicAccessBlock' in q) {
          await obs.setPublicAccessBlock(bucketOf(req), parsePublicAccessBlock(await readSmallBody(req, 64 * 1024)));
          return reply.code(200).send();
        }
        if ('acl' in q) {
          await acceptOwnerOnlyAcl(req, bucketOf(req));
          return reply.code(200).send();
        }
        if ('cors' in q) {
          await obs.setBucketCors(bucketOf(req), parseCorsConfiguration(parseXml(await readSmallBody(req, 64 * 1024))));
          return reply.code(200).send();
        }
        if ('encryption' in q) {
          const doc = parseXml(await readSmallBody(req, 64 * 1024)) as { ServerSideEncryptionConfiguration?: { Rule?: { ApplyServerSideEncryptionByDefault?: { SSEAlgorithm?: string; KMSMasterKeyID?: string } } | { ApplyServerSideEncryptionByDefault?: { SSEAlgorithm?: string; KMSMasterKeyID?: string } }[] } };
          const rules = doc.ServerSideEncryptionConfiguration?.Rule;
          const rule = (Array.isArray(rules) ? rules[0] : rules)?.ApplyServerSideEncryptionByDefault;
          if (!rule || (rule.SSEAlgorithm !== 'aws:kms' && rule.SSEAlgorithm !== 'AES256' && rule.SSEAlgorithm !== 'kms')) throw new ObsError(400, 'MalformedXML', 'expected a ServerSideEncryptionConfiguration rule with SSEAlgorithm aws:kms (or AES256)');
          await authorizeNamedKey(req, bucketOf(req), rule.KMSMasterKeyID);
          await obs.setDefaultKey(bucketOf(req), rule.KMSMasterKeyID ?? null);
          return reply.code(200).send();
        }
        if ('tagging' in q) {
          await obs.setBucketTags(bucketOf(req), parseTagging(parseXml(await readSmallBody(req, 64 * 1024))));
          return reply.code(204).send();
        }
        if ('object-lock' in q) {
          const doc = parseXml(await readSmallBody(req, 64 * 1024)) as { ObjectLockConfiguration?: { ObjectLockEnabled?: string; Rule?: { DefaultRetention?: { Mode?: string; Days?: string; Years?: string } } } };
          const cfg = doc.ObjectLockConfiguration;
          if (!cfg || cfg.ObjectLockEnabled !== 'Enabled') throw new ObsError(400, 'MalformedXML', 'expected an ObjectLockConfiguration with ObjectLockEnabled Enabled');
          const r = cfg.Rule?.DefaultRetention;
          if (r) {
            if (r.Mode !== 'GOVERNANCE' && r.Mode !== 'COMPLIANCE') throw new ObsError(400, 'MalformedXML', 'DefaultRetention Mode must be GOVERNANCE or COMPLIANCE');
            const days = r.Days !== undefined ? Number(r.Days) : r.Years !== undefined ? Number(r.Years) * 365 : NaN;
            if (!Number.isInteger(days) || days < 1 || (r.Days !== undefined && r.Years !== undefined)) throw new ObsError(400, 'MalformedXML', 'DefaultRetention needs Days or Years (a positive whole number), not both');
            await obs.setLockDefault(bucketOf(req), r.Mode, days);
          } else await obs.setLockDefault(bucketOf(req), null, null);
          return reply.code(200).send();
        }
        if ('lifecycle' in q) {
          await obs.setLifecycle(bucketOf(req), parseLifecycle(parseXml(await readSmallBody(req, 256 * 1024))));
          return reply.code(200).send();
        }
        if ('versioning' in q) {
          const doc = parseXml(await readSmallBody(req, 64 * 1024)) as { VersioningConfiguration?: { Status?: string } };
          const status = doc.VersioningConfiguration?.Status;
          if (status !== 'Enabled' && status !== 'Suspended') throw new ObsError(400, 'IllegalVersioningConfigurationException', 'the versioning status must be Enabled or Suspended');
          await obs.setVersioning(bucketOf(req), status);
          return reply.code(200).send();
        }
        if (Object.keys(q).some((k) => k !== 'x-id')) throw new ObsError(501, 'NotImplemented', `bucket subresource ${Object.keys(q).join(', ')} is not implemented`);
        refuseAcl(req, true);
        const body = await readSmallBody(req, 64 * 1024);
        let region: string | undefined;
        if (body.length > 0) {
          const doc = parseXml(body) as { CreateBucketConfiguration?: { LocationConstraint?: string; Location?: string } };
          if (!doc.CreateBucketConfiguration) throw new ObsError(400, 'MalformedXML', 'expected a CreateBucketConfiguration document');
          region = doc.CreateBucketConfiguration.LocationConstraint ?? doc.CreateBucketConfiguration.Location;
        }
        region ??= p.region ?? signedRegion(req) ?? regions[0]!;
        if (!regions.includes(region)) throw new ObsError(400, 'InvalidLocationConstraint', `the region ${region} is not one of this installation's: ${regions.join(', ')}`);
        const project = await projects.defaultOf(p.accountId, region);
        if (!project) throw new ObsError(400, 'InvalidLocationConstraint', `your account has no project in ${region}`);
        const lockHeader = req.headers['x-amz-bucket-object-lock-enabled'];
        const b = await obs.createBucket(scopeOfProject(project), (req.params as { bucket: string }).bucket, { objectLock: String(lockHeader).toLowerCase() === 'true' });
        req.custos.traced.resourceId = b.name;
        req.custos.traced.resourceName = b.name;
        reply.header('location', `/${b.name}`);
        return reply.code(200).send();
      },
    },
    {
      method: 'HEAD', url: '/:bucket', meta: meta('obs:bucket:HeadBucket', 'bucket', bucketRes(false)),
      handler: async (req, reply) => {
        reply.header('x-amz-bucket-region', bucketOf(req).region);
        return reply.code(200).send();
      },
    },
    {
      method: 'DELETE', url: '/:bucket', meta: meta('obs:bucket:DeleteBucket', 'bucket', bucketRes(false), { bySubresource: { lifecycle: { action: 'obs:bucket:PutLifecycleConfiguration' }, tagging: { action: 'obs:bucket:DeleteBucketTagging' }, encryption: { action: 'obs:bucket:PutEncryptionConfiguration' }, policy: { action: 'obs:bucket:DeleteBucketPolicy', resource: policyAdmin }, publicAccessBlock: { action: 'obs:bucket:DeleteBucketPublicAccessBlock', resource: policyAdmin }, cors: { action: 'obs:bucket:PutBucketCORS' } } }),
      handler: async (req, reply) => {
        if ('cors' in (req.query as Record<string, string>)) {
          await obs.setBucketCors(bucketOf(req), null);
          return reply.code(204).send();
        }
        if ('publicAccessBlock' in (req.query as Record<string, string>)) {
          await obs.setPublicAccessBlock(bucketOf(req), null);
          return reply.code(204).send();
        }
        if ('policy' in (req.query as Record<string, string>)) {
          await obs.setBucketPolicy(bucketOf(req), null);
          return reply.code(204).send();
        }
        if ('encryption' in (req.query as Record<string, string>)) {
          await obs.setDefaultKey(bucketOf(req), null);
          return reply.code(204).send();
        }
        if ('tagging' in (req.query as Record<string, string>)) {
          await obs.setBucketTags(bucketOf(req), null);
          return reply.code(204).send();
        }
        if ('lifecycle' in (req.query as Record<string, string>)) {
          await obs.setLifecycle(bucketOf(req), null);
          return reply.code(204).send();
        }
        // `DELETE /b?website` (or any subresource not served here) asks for another operation: never
        // let it fall through to deleting the bucket.
        refuseUnknownParams(req, 'bucket', []);
        await obs.deleteBucket(bucketOf(req));
        return reply.code(204).send();
      },
    },
    {
      // DeleteObjects is authorized per key only, as S3 does: a grant of DeleteObject on `bucket/tmp/*`
      // (an IAM or bucket policy) allows deleting those keys in a batch and no others.
      method: 'POST', url: '/:bucket', meta: meta('obs:object:DeleteObject', 'bucket', bucketRes(false), { authorizesEachItem: true }),
      handler: async (req, reply) => {
        const b = bucketOf(req);
        if (!('delete' in (req.query as Record<string, string>))) throw new ObsError(501, 'NotImplemented', 'this POST operation is not implemented');
        const doc = parseXml(await readSmallBody(req, 2 * 1024 * 1024)) as { Delete?: { Object?: unknown; Quiet?: string } };
        const raw = doc.Delete?.Object;
        const objects = (Array.isArray(raw) ? raw : raw ? [raw] : []) as { Key?: string; VersionId?: string }[];
        if (!doc.Delete || objects.length === 0 || objects.length > 1000 || objects.some((o) => typeof o.Key !== 'string')) throw new ObsError(400, 'MalformedXML', 'expected a Delete document of 1 to 1000 objects with keys');
        const quiet = doc.Delete.Quiet === 'true';
        const deleted: Record<string, unknown>[] = [];
        const errors: Record<string, unknown>[] = [];
        for (const o of objects) {
          const key = String(o.Key);
          const action = o.VersionId ? 'obs:object:DeleteObjectVersion' : 'obs:object:DeleteObject';
          if (!(await allowed(req, action, b, key))) {
            errors.push({ Key: key, ...(o.VersionId ? { VersionId: o.VersionId } : {}), Code: 'AccessDenied', Message: 'Access Denied' });
            continue;
          }
          let r;
          try {
            r = await obs.deleteObject(b, key, o.VersionId);
          } catch (e) {
            // A version under retention or legal hold (or a bad version id) fails alone; the batch goes on.
            if (!(e instanceof ObsError) || e.status >= 500) throw e;
            errors.push({ Key: key, ...(o.VersionId ? { VersionId: o.VersionId } : {}), Code: e.code, Message: e.message });
            continue;
          }
          if (!quiet) deleted.push({ Key: key, ...(o.VersionId ? { VersionId: o.VersionId } : {}), ...(r.deleteMarker ? { DeleteMarker: true, DeleteMarkerVersionId: r.versionId } : {}) });
        }
        reply.type('application/xml');
        return xmlDoc({ DeleteResult: { '@_xmlns': S3_NS, ...(deleted.length ? { Deleted: deleted } : {}), ...(errors.length ? { Error: errors } : {}) } });
      },
    },
    {
      method: 'GET', url: '/:bucket',
      meta: meta('obs:bucket:ListBucket', 'bucket', bucketRes(false), {
        bySubresource: {
          versioning: { action: 'obs:bucket:GetBucketVersioning' }, versions: { action: 'obs:bucket:ListBucketVersions' },
          location: { action: 'obs:bucket:GetBucketLocation' }, uploads: { action: 'obs:bucket:ListBucketMultipartUploads' },
          lifecycle: { action: 'obs:bucket:GetLifecycleConfiguration' }, 'object-lock': { action: 'obs:bucket:GetBucketObjectLockConfiguration' },
          tagging: { action: 'obs:bucket:GetBucketTagging' }, encryption: { action: 'obs:bucket:GetEncryptionConfiguration' },
          policy: { action: 'obs:bucket:GetBucketPolicy', resource: policyAdmin }, policyStatus: { action: 'obs:bucket:GetBucketPolicyStatus' },
          publicAccessBlock: { action: 'obs:bucket:GetBucketPublicAccessBlock', resource: policyAdmin },
          acl: { action: 'obs:bucket:GetBucketAcl' }, ownershipControls: { action: 'obs:bucket:GetBucketOwnershipControls' }, cors: { action: 'obs:bucket:GetBucketCORS' },
        },
      }),
      handler: async (req, reply) => {
        const b = bucketOf(req);
        const q = req.query as Record<string, string | undefined>;
        if ('policy' in q) {
          if (!b.policy_json) throw new ObsError(404, 'NoSuchBucketPolicy', 'The bucket policy does not exist');
          reply.type('application/json');
          return b.policy_json;
        }
        reply.type('application/xml');
        // Public: anyone may reach it without credentials (its policy lets anyone in, nothing blocks it).
        if ('policyStatus' in q) return xmlDoc({ PolicyStatus: { '@_xmlns': S3_NS, IsPublic: isPublicBucket(b) ? 'true' : 'false' } });
        if ('publicAccessBlock' in q) {
          if (!hasPublicAccessBlock(b)) throw new ObsError(404, 'NoSuchPublicAccessBlockConfiguration', 'The public access block configuration was not found');
          const f = publicAccessBlockOf(b);
          return xmlDoc({ PublicAccessBlockConfiguration: { '@_xmlns': S3_NS, BlockPublicAcls: f.BlockPublicAcls, IgnorePublicAcls: f.IgnorePublicAcls, BlockPublicPolicy: f.BlockPublicPolicy, RestrictPublicBuckets: f.RestrictPublicBuckets } });
        }
        if ('acl' in q) return aclXml(b, principalOf(req).accountName);
        if ('ownershipControls' in q) return xmlDoc({ OwnershipControls: { '@_xmlns': S3_NS, Rule: { ObjectOwnership: 'BucketOwnerEnforced' } } });
        if ('cors' in q) {
          const rules = corsOf(b);
          if (!rules) throw new ObsError(404, 'NoSuchCORSConfiguration', 'The CORS configuration does not exist');
          return xmlDoc({ CORSConfiguration: { '@_xmlns': S3_NS, ...corsDocument(rules) } });
        }
        if ('location' in q) return xmlDoc({ LocationConstraint: { '@_xmlns': S3_NS, '#text': b.region } });
        if ('versioning' in q) return xmlDoc({ VersioningConfiguration: { '@_xmlns': S3_NS, ...(b.versioning ? { Status: b.versioning } : {}) } });
        if ('encryption' in q) {
          // Every object is encrypted: without a configured key, under the tenant's obs/default key.
          return xmlDoc({
            ServerSideEncryptionConfiguration: {
              '@_xmlns': S3_NS,
              Rule: { ApplyServerSideEncryptionByDefault: { SSEAlgorithm: 'aws:kms', ...(b.kms_key_id ? { KMSMasterKeyID: `arn:aws:kms:${b.region}:${b.account_id}:key/${b.kms_key_id}` } : {}) }, BucketKeyEnabled: false },
            },
          });
        }
        if ('tagging' in q) {
          if (!b.tags_json) throw new ObsError(404, 'NoSuchTagSet', 'there is no tag set');
          return xmlDoc({ Tagging: { '@_xmlns': S3_NS, TagSet: tagSetXml(b.tags_json) } });
        }
        if ('object-lock' in q) {
          if (!b.object_lock) throw new ObsError(404, 'ObjectLockConfigurationNotFoundError', 'object lock configuration does not exist for this bucket');
          return xmlDoc({
            ObjectLockConfiguration: {
              '@_xmlns': S3_NS, ObjectLockEnabled: 'Enabled',
              ...(b.lock_default_mode ? { Rule: { DefaultRetention: { Mode: b.lock_default_mode, Days: b.lock_default_days } } } : {}),
            },
          });
        }
        if ('lifecycle' in q) {
          const rules = obs.lifecycleOf(b);
          if (!rules) throw new ObsError(404, 'NoSuchLifecycleConfiguration', 'the lifecycle configuration does not exist');
          return xmlDoc({
            LifecycleConfiguration: {
              '@_xmlns': S3_NS,
              Rule: lifecycleDocument(rules),
            },
          });
        }
        if ('uploads' in q) {
          const uploads = await obs.listUploads(b, q.prefix ?? '');
          return xmlDoc({
            ListMultipartUploadsResult: {
              '@_xmlns': S3_NS, Bucket: b.name, Prefix: q.prefix ?? '', MaxUploads: 1000, IsTruncated: false,
              ...(uploads.length ? { Upload: uploads.map((u) => ({ Key: u.key, UploadId: u.id, Initiated: isoDate(u.created_at), StorageClass: 'STANDARD' })) } : {}),
            },
          });
        }
        if ('versions' in q) {
          const maxKeys = q['max-keys'] === undefined ? 1000 : Number(q['max-keys']);
          if (!Number.isInteger(maxKeys) || maxKeys < 1) throw new ObsError(400, 'InvalidArgument', 'max-keys must be a positive integer');
          const prefix = q.prefix ?? '';
          const r = await obs.listVersions(b, { prefix, keyMarker: q['key-marker'] ?? '', maxKeys: Math.min(maxKeys, 1000) });
          const version = (o: ObjectRow) => ({ Key: o.key, VersionId: o.version_id, IsLatest: o.is_latest === 1, LastModified: isoDate(o.created_at), ...(o.delete_marker ? {} : { ETag: `"${o.etag}"`, Size: o.size, StorageClass: 'STANDARD' }) });
          const versions = r.versions.filter((o) => !o.delete_marker).map(version);
          const markers = r.versions.filter((o) => o.delete_marker).map(version);
          return xmlDoc({
            ListVersionsResult: {
              '@_xmlns': S3_NS, Name: b.name, Prefix: prefix, KeyMarker: q['key-marker'] ?? '', MaxKeys: maxKeys, IsTruncated: r.truncated,
              ...(r.nextKeyMarker !== null ? { NextKeyMarker: r.nextKeyMarker } : {}),
              ...(versions.length ? { Version: versions } : {}), ...(markers.length ? { DeleteMarker: markers } : {}),
            },
          });
        }
        const known = new Set(['list-type', 'prefix', 'delimiter', 'max-keys', 'continuation-token', 'start-after', 'marker', 'encoding-type', 'fetch-owner', 'x-id']);
        const unknown = Object.keys(q).filter((k) => !known.has(k));
        if (unknown.length) throw new ObsError(501, 'NotImplemented', `bucket subresource ${unknown.join(', ')} is not implemented`);
        const maxKeys = q['max-keys'] === undefined ? 1000 : Number(q['max-keys']);
        if (!Number.isInteger(maxKeys) || maxKeys < 0) throw new ObsError(400, 'InvalidArgument', 'max-keys must be a non-negative integer');
        const v2 = q['list-type'] === '2';
        let startAfter = (v2 ? q['start-after'] : q.marker) ?? '';
        if (v2 && q['continuation-token']) {
          const decoded = Buffer.from(q['continuation-token'], 'base64url').toString('utf8');
          if (!decoded.startsWith('k:')) throw new ObsError(400, 'InvalidArgument', 'the continuation token is not valid');
          startAfter = decoded.slice(2);
        }
        const prefix = q.prefix ?? '';
        const delimiter = q.delimiter ?? '';
        const r = await obs.listObjects(b, { prefix, delimiter, startAfter, maxKeys: Math.min(maxKeys, 1000) });
        const enc = q['encoding-type'] === 'url' ? (s: string) => encodeURIComponent(s).replace(/%2F/g, '/') : (s: string) => s;
        const contents = r.objects.map((o) => ({ Key: enc(o.key), LastModified: isoDate(o.created_at), ETag: `"${o.etag}"`, Size: o.size, StorageClass: 'STANDARD' }));
        const common = r.prefixes.map((p) => ({ Prefix: enc(p) }));
        const result: Record<string, unknown> = {
          '@_xmlns': S3_NS, Name: b.name, Prefix: enc(prefix), ...(delimiter ? { Delimiter: enc(delimiter) } : {}), MaxKeys: maxKeys,
          ...(q['encoding-type'] ? { EncodingType: q['encoding-type'] } : {}), IsTruncated: r.truncated,
        };
        if (v2) {
          Object.assign(result, { KeyCount: contents.length + common.length, ...(q['continuation-token'] ? { ContinuationToken: q['continuation-token'] } : {}), ...(q['start-after'] ? { StartAfter: enc(q['start-after']) } : {}) });
          if (r.truncated && r.next !== null) result.NextContinuationToken = Buffer.from(`k:${r.next}`).toString('base64url');
        } else {
          Object.assign(result, { Marker: enc(q.marker ?? '') });
          if (r.truncated && r.next !== null) result.NextMarker = enc(r.next);
        }
        if (contents.length) result.Contents = contents;
        if (common.length) result.CommonPrefixes = common;
        return xmlDoc({ ListBucketResult: result });
      },
    },
    {
      method: 'PUT', url: '/:bucket/*',
      meta: meta('obs:object:PutObject', 'object', bucketRes(true), {
        bySubresource: { retention: { action: 'obs:object:PutObjectRetention' }, 'legal-hold': { action: 'obs:object:PutObjectLegalHold' }, tagging: { action: 'obs:object:PutObjectTagging' }, acl: { action: 'obs:object:PutObjectAcl' } },
      }),
      handler: async (req, reply) => {
        const b = bucketOf(req);
        const h = req.headers;
        const q = req.query as Record<string, string>;
        if ('acl' in q) {
          await obs.headObject(b, keyOf(req), versionIdOf(req));
          await acceptOwnerOnlyAcl(req, b);
          return reply.code(200).send();
        }
        if ('retention' in q) {
          const doc = parseXml(await readSmallBody(req, 64 * 1024)) as { Retention?: { Mode?: string; RetainUntilDate?: string } };
          const r = doc.Retention;
          if (!r) throw new ObsError(400, 'MalformedXML', 'expected a Retention document');
          const lock = r.Mode === undefined && r.RetainUntilDate === undefined ? null : parseLock(r.Mode, r.RetainUntilDate);
          const bypass = String(h['x-amz-bypass-governance-retention']).toLowerCase() === 'true' && (await allowed(req, 'obs:object:BypassGovernanceRetention', b, keyOf(req)));
          await obs.setRetention(b, keyOf(req), versionIdOf(req), lock, bypass);
          return reply.code(200).send();
        }
        if ('tagging' in q) {
          const v = await obs.setObjectTags(b, keyOf(req), versionIdOf(req), parseTagging(parseXml(await readSmallBody(req, 64 * 1024))));
          if (b.versioning) reply.header('x-amz-version-id', v);
          return reply.code(200).send();
        }
        if ('legal-hold' in q) {
          const doc = parseXml(await readSmallBody(req, 64 * 1024)) as { LegalHold?: { Status?: string } };
          const status = doc.LegalHold?.Status;
          if (status !== 'ON' && status !== 'OFF') throw new ObsError(400, 'MalformedXML', 'LegalHold Status must be ON or OFF');
          await obs.setLegalHold(b, keyOf(req), versionIdOf(req), status === 'ON');
          return reply.code(200).send();
        }
        if ('uploadId' in q || 'partNumber' in q) {
          if (q.uploadId === undefined || q.partNumber === undefined || !/^\d{1,5}$/.test(q.partNumber)) throw new ObsError(400, 'InvalidArgument', 'UploadPart needs uploadId and a partNumber from 1 to 10000');
          const u = await obs.getUpload(b, keyOf(req), q.uploadId);
          const customerKey = sseCustomerKey(req);
          await authorizeUploadKey(req, b, u);
          const copy = h['x-amz-copy-source'];
          if (copy !== undefined) {
            // UploadPartCopy: (a range of) another object becomes the part, re-encrypted under the upload's key.
            if (typeof copy !== 'string') throw new ObsError(400, 'InvalidArgument', 'give one x-amz-copy-source');
            const src = await copySource(req, b, copy);
            const range = parseCopyRange(h['x-amz-copy-source-range'], src.row.size);
            const r = await obs.uploadPartCopy(b, u, Number(q.partNumber), { ...src, ...range }, customerKey);
            copySourceHeaders(reply, src);
            uploadEncryptionHeaders(reply, req, obs.isSseCUpload(u));
            reply.type('application/xml');
            return xmlDoc({ CopyPartResult: { '@_xmlns': S3_NS, ETag: `"${r.etag}"`, LastModified: isoDate(r.lastModified) } });
          }
          const body = incomingBody(req);
          if (u.checksum_algorithm && body.algorithm && body.algorithm !== u.checksum_algorithm) {
            throw new ObsError(400, 'InvalidRequest', `Checksum Type mismatch occurred, expected checksum Type: ${u.checksum_algorithm}, actual checksum Type: ${body.algorithm}`);
          }
          const etag = await obs.uploadPart(b, u, Number(q.partNumber), body.content, body.check, customerKey, body.algorithm);
          reply.header('etag', `"${etag}"`);
          const sum = body.verified();
          if (sum) reply.header(sum.name, sum.value);
          uploadEncryptionHeaders(reply, req, obs.isSseCUpload(u));
          return reply.code(200).send();
        }
        if (Object.keys(q).some((k) => k !== 'x-id')) throw new ObsError(501, 'NotImplemented', `object subresource ${Object.keys(q).filter((k) => k !== 'x-id').join(', ')} is not implemented`);
        refuseAcl(req, false);
        await authorizeWriteSettings(req, b, keyOf(req));
        await authorizeNamedKey(req, b, namedKeyHeader(req) ?? b.kms_key_id ?? undefined);
        if (typeof h['x-amz-copy-source'] === 'string') {
          const r = await copyObject(req, reply, b, h['x-amz-copy-source']);
          reply.type('application/xml');
          uploadEncryptionHeaders(reply, req, sseCustomerKey(req) !== undefined);
          if (b.versioning) reply.header('x-amz-version-id', r.versionId);
          const sum = r.checksum ? { ...Object.fromEntries([checksumElement(r.checksum)]), ChecksumType: 'FULL_OBJECT' } : {};
          return xmlDoc({ CopyObjectResult: { '@_xmlns': S3_NS, ETag: `"${r.etag}"`, LastModified: isoDate(Date.now()), ...sum } });
        }
        const body = incomingBody(req);
        const om = objectMeta(req);
        const result = await obs.putObject(b, keyOf(req), body.content, om, body.check, { condition: writeCondition(req) });
        reply.header('etag', `"${result.etag}"`);
        const sum = body.verified();
        if (sum) reply.header(sum.name, sum.value);
        uploadEncryptionHeaders(reply, req, om.customerKey !== undefined);
        if (b.versioning) reply.header('x-amz-version-id', result.versionId);
        return reply.code(200).send();
      },
    },
    {
      method: 'POST', url: '/:bucket/*',
      meta: meta('obs:object:PutObject', 'object', bucketRes(true)),
      handler: async (req, reply) => {
        const b = bucketOf(req);
        const q = req.query as Record<string, string>;
        reply.type('application/xml');
        if ('uploads' in q) {
          refuseAcl(req, false);
          await authorizeWriteSettings(req, b, keyOf(req));
          await authorizeNamedKey(req, b, namedKeyHeader(req) ?? b.kms_key_id ?? undefined);
          const om = objectMeta(req);
          const checksum = uploadChecksum(req);
          const id = await obs.createUpload(b, keyOf(req), om, { checksum });
          uploadEncryptionHeaders(reply, req, om.customerKey !== undefined);
          if (checksum) {
            reply.header('x-amz-checksum-algorithm', checksum.algorithm.toUpperCase());
            reply.header('x-amz-checksum-type', checksum.type);
          }
          return xmlDoc({ InitiateMultipartUploadResult: { '@_xmlns': S3_NS, Bucket: b.name, Key: keyOf(req), UploadId: id } });
        }
        if (q.uploadId !== undefined) {
          const u = await obs.getUpload(b, keyOf(req), q.uploadId);
          // Completing answers the object's checksum and compares the parts' ones: under a customer
          // KMS key that needs its decrypt permission, as S3 asks kms:Decrypt here.
          await authorizeUploadKey(req, b, u);
          // The completion's x-amz-checksum-* header is the object's checksum, not its body's.
          const doc = parseXml(await readSmallBody(req, 4 * 1024 * 1024, { checksumHeadersNameTheObject: true })) as { CompleteMultipartUpload?: { Part?: unknown } };
          const partsRaw = doc.CompleteMultipartUpload?.Part;
          const parts = (Array.isArray(partsRaw) ? partsRaw : partsRaw ? [partsRaw] : []) as ({ PartNumber?: string; ETag?: string } & Record<string, string | undefined>)[];
          const alg = u.checksum_algorithm as ChecksumAlgorithm | null;
          const field = alg ? `Checksum${alg.toUpperCase()}` : null;
          const expect = alg ? req.headers[`x-amz-checksum-${alg}`] : undefined;
          if (!doc.CompleteMultipartUpload || parts.some((p) => !p.PartNumber || !/^\d+$/.test(p.PartNumber) || !p.ETag)) throw new ObsError(400, 'MalformedXML', 'expected a CompleteMultipartUpload document of parts with PartNumber and ETag');
          const objectSize = req.headers['x-amz-mp-object-size'];
          if (objectSize !== undefined && !/^\d{1,16}$/.test(String(objectSize))) throw new ObsError(400, 'InvalidArgument', 'x-amz-mp-object-size is a number of bytes');
          const r = await obs.completeUpload(b, u, parts.map((p) => ({ partNumber: Number(p.PartNumber), etag: String(p.ETag), ...(field && typeof p[field] === 'string' ? { checksum: p[field] } : {}) })), {
            condition: writeCondition(req), ...(typeof expect === 'string' ? { expectChecksum: expect } : {}),
            ...(objectSize !== undefined ? { expectSize: Number(objectSize) } : {}),
          });
          if (obs.isSseCUpload(u)) reply.header('x-amz-server-side-encryption-customer-algorithm', 'AES256');
          else reply.header('x-amz-server-side-encryption', 'aws:kms');
          if (b.versioning) reply.header('x-amz-version-id', r.versionId);
          const sum = r.checksum ? { ...Object.fromEntries([checksumElement(r.checksum)]), ChecksumType: u.checksum_type ?? 'COMPOSITE' } : {};
          return xmlDoc({ CompleteMultipartUploadResult: { '@_xmlns': S3_NS, Location: `/${b.name}/${keyOf(req)}`, Bucket: b.name, Key: keyOf(req), ETag: `"${r.etag}"`, ...sum } });
        }
        throw new ObsError(501, 'NotImplemented', 'this POST operation is not implemented');
      },
    },
    {
      method: 'GET', url: '/:bucket/*',
      meta: meta('obs:object:GetObject', 'object', bucketRes(true), { traceType: 'data', bySubresource: {
        retention: { action: 'obs:object:GetObjectRetention', traceType: 'management' }, 'legal-hold': { action: 'obs:object:GetObjectLegalHold', traceType: 'management' },
        tagging: { action: 'obs:object:GetObjectTagging', traceType: 'management' }, acl: { action: 'obs:object:GetObjectAcl', traceType: 'management' },
        versionId: { action: 'obs:object:GetObjectVersion' }, uploadId: { action: 'obs:object:ListMultipartUploadParts', traceType: 'management' },
      } }),
      handler: async (req, reply) => {
        const b = bucketOf(req);
        const gq = req.query as Record<string, string | undefined>;
        if ('acl' in gq) {
          await obs.headObject(b, keyOf(req), versionIdOf(req));
          reply.type('application/xml');
          return aclXml(b, principalOf(req).accountName);
        }
        if ('tagging' in gq) {
          const row = await obs.headObject(b, keyOf(req), versionIdOf(req));
          reply.type('application/xml');
          if (b.versioning) reply.header('x-amz-version-id', row.version_id);
          return xmlDoc({ Tagging: { '@_xmlns': S3_NS, TagSet: tagSetXml(row.tags_json) } });
        }
        if ('retention' in gq || 'legal-hold' in gq) {
          const row = await obs.headObject(b, keyOf(req), versionIdOf(req));
          reply.type('application/xml');
          if ('legal-hold' in gq) return xmlDoc({ LegalHold: { '@_xmlns': S3_NS, Status: row.legal_hold ? 'ON' : 'OFF' } });
          if (!row.lock_mode || row.lock_until === null) throw new ObsError(404, 'NoSuchObjectLockConfiguration', 'the object version has no retention');
          return xmlDoc({ Retention: { '@_xmlns': S3_NS, Mode: row.lock_mode, RetainUntilDate: isoDate(row.lock_until) } });
        }
        const uploadId = gq.uploadId;
        if (uploadId !== undefined) {
          const u = await obs.getUpload(b, keyOf(req), uploadId);
          // An SSE-C upload's parts are listed only with its customer key, as S3 asks.
          if (obs.isSseCUpload(u)) await obs.checkUploadCustomerKey(b, u, sseCustomerKey(req));
          else await authorizeUploadKey(req, b, u);
          const parts = await obs.listParts(u);
          reply.type('application/xml');
          return xmlDoc({
            ListPartsResult: {
              '@_xmlns': S3_NS, Bucket: b.name, Key: u.key, UploadId: u.id, MaxParts: 10000, IsTruncated: false,
              ...(u.checksum_algorithm ? { ChecksumAlgorithm: u.checksum_algorithm.toUpperCase(), ChecksumType: u.checksum_type ?? 'COMPOSITE' } : {}),
              ...(parts.length ? { Part: parts.map((p) => ({
                PartNumber: p.part_number, LastModified: isoDate(p.created_at), ETag: `"${p.etag}"`, Size: p.size,
                ...(p.checksum ? Object.fromEntries([checksumElement(p.checksum)]) : {}),
              })) } : {}),
            },
          });
        }
        const row = await obs.headObject(b, keyOf(req), versionIdOf(req));
        const cmk = await authorizeReadKey(req, b, row);
        const customerKey = sseCustomerKey(req);
        // An SSE-C object answers (even conditions) only to the holder of its key.
        if (obs.isSseC(row)) (await obs.dataKeyOf(b, row, customerKey)).fill(0);
        if (evaluateConditions(req, row) === 'not-modified') return notModified(reply, row, b.versioning !== '');
        const process = gq['x-image-process'];
        if (process !== undefined) {
          const spec = parseWatermark(process);
          if (row.size > MAX_IMAGE_BYTES) throw new ObsError(400, 'InvalidArgument', `x-image-process: images over ${MAX_IMAGE_BYTES} bytes are not processed`);
          const readAll = async (r: ObjectRow, bucket: BucketRow, key: KeyRow | undefined) => Buffer.concat(await (await obs.readObject(bucket, r, 0, r.size - 1, undefined, key)).toArray());
          let mark: Buffer | undefined;
          if (spec.imageKey !== undefined) {
            if (!(await allowed(req, 'obs:object:GetObject', b, spec.imageKey))) throw new ObsError(403, 'AccessDenied', 'not authorized to read the watermark image');
            const markRow = await obs.headObject(b, spec.imageKey);
            const markKey = await authorizeReadKey(req, b, markRow);
            if (markRow.size > MAX_IMAGE_BYTES) throw new ObsError(400, 'InvalidArgument', 'x-image-process: the watermark image is too large');
            mark = await readAll(markRow, b, markKey);
          }
          const out = await applyWatermark(await readAll(row, b, cmk), spec, mark);
          reply.header('content-type', out.contentType);
          reply.header('content-length', String(out.body.length));
          reply.header('x-amz-server-side-encryption', 'aws:kms');
          return reply.send(out.body);
        }
        const range = parseRange(req.headers.range, row.size);
        const start = range?.start ?? 0;
        const end = range?.end ?? row.size - 1;
        const stream = await obs.readObject(b, row, start, end, customerKey, cmk);
        objectHeaders(reply, row, kmsArn(b, row), b.versioning !== '', req);
        if (!range) checksumHeaders(reply, req, row);
        reply.header('content-length', String(end - start + 1));
        if (range) {
          reply.code(206);
          reply.header('content-range', `bytes ${start}-${end}/${row.size}`);
        }
        // A decryption failure midway cannot change the status any more: the connection is cut.
        const out = new PassThrough();
        stream.on('error', (e) => out.destroy(e));
        return reply.send(stream.pipe(out));
      },
    },
    {
      method: 'HEAD', url: '/:bucket/*', meta: meta('obs:object:GetObject', 'object', bucketRes(true), { bySubresource: { versionId: { action: 'obs:object:GetObjectVersion' } } }),
      handler: async (req, reply) => {
        const b = bucketOf(req);
        const row = await obs.headObject(b, keyOf(req), versionIdOf(req));
        // An SSE-C object answers HEAD only to the holder of its key, as S3 does.
        if (obs.isSseC(row)) (await obs.dataKeyOf(b, row, sseCustomerKey(req))).fill(0);
        // The plaintext's checksum is, like its content, for callers who may decrypt (S3 asks kms:Decrypt too).
        if (String(req.headers['x-amz-checksum-mode']).toUpperCase() === 'ENABLED') await authorizeReadKey(req, b, row);
        if (evaluateConditions(req, row) === 'not-modified') return notModified(reply, row, b.versioning !== '');
        objectHeaders(reply, row, kmsArn(b, row), b.versioning !== '', req);
        checksumHeaders(reply, req, row);
        reply.header('content-length', String(row.size));
        return reply.code(200).send();
      },
    },
    {
      method: 'DELETE', url: '/:bucket/*', meta: meta('obs:object:DeleteObject', 'object', bucketRes(true), { bySubresource: { tagging: { action: 'obs:object:DeleteObjectTagging' }, versionId: { action: 'obs:object:DeleteObjectVersion' }, uploadId: { action: 'obs:object:AbortMultipartUpload' } } }),
      handler: async (req, reply) => {
        if ('tagging' in (req.query as Record<string, string>)) {
          await obs.setObjectTags(bucketOf(req), keyOf(req), versionIdOf(req), null);
          return reply.code(204).send();
        }
        const uploadId = (req.query as Record<string, string | undefined>).uploadId;
        if (uploadId !== undefined) {
          await obs.abortUpload(await obs.getUpload(bucketOf(req), keyOf(req), uploadId));
          return reply.code(204).send();
        }
        refuseUnknownParams(req, 'object', ['versionId']);
        const bypass = String(req.headers['x-amz-bypass-governance-retention']).toLowerCase() === 'true' && (await allowed(req, 'obs:object:BypassGovernanceRetention', bucketOf(req), keyOf(req)));
        const r = await obs.deleteObject(bucketOf(req), keyOf(req), versionIdOf(req), { bypassGovernance: bypass });
        if (r.versionId !== undefined && (bucketOf(req).versioning || versionIdOf(req) !== undefined)) reply.header('x-amz-version-id', r.versionId);
        if (r.deleteMarker) reply.header('x-amz-delete-marker', 'true');
        return reply.code(204).send();
      },
    },
  ];
}

/** A stored checksum (`<algorithm>:<base64>`) as S3 names it in XML (`ChecksumCRC32`) and its value. */
function checksumElement(stored: string): [string, string] {
  const i = stored.indexOf(':');
  return [`Checksum${stored.slice(0, i).toUpperCase()}`, stored.slice(i + 1)];
}

/**
 * x-amz-checksum-mode: ENABLED: the checksum verified when the object was uploaded, or a multipart
 * object's composite one, or the one computed for a copy (only for whole-object reads; objects
 * uploaded without one have none).
 */
function checksumHeaders(reply: FastifyReply, req: FastifyRequest, row: ObjectRow): void {
  if (!row.checksum || String(req.headers['x-amz-checksum-mode']).toUpperCase() !== 'ENABLED') return;
  const i = row.checksum.indexOf(':');
  reply.header(`x-amz-checksum-${row.checksum.slice(0, i)}`, row.checksum.slice(i + 1));
  reply.header('x-amz-checksum-type', /-\d+$/.test(row.checksum) ? 'COMPOSITE' : 'FULL_OBJECT');
}

/**
 * x-amz-checksum-algorithm and x-amz-checksum-type on CreateMultipartUpload: the object's checksum,
 * COMPOSITE (of the parts' checksums; CRC32, CRC32C, SHA1, SHA256) or FULL_OBJECT (of the content,
 * combined from the parts' CRCs; CRC32, CRC32C, CRC64NVME). Without a type, CRC64NVME is FULL_OBJECT
 * and the others COMPOSITE, as on S3.
 */
function uploadChecksum(req: FastifyRequest): UploadChecksum | undefined {
  const raw = req.headers['x-amz-checksum-algorithm'];
  if (raw === undefined) return undefined;
  const alg = String(raw).toLowerCase();
  if (!isChecksumAlgorithm(alg)) throw new ObsError(400, 'InvalidRequest', 'x-amz-checksum-algorithm is one of CRC32, CRC32C, CRC64NVME, SHA1, SHA256');
  const type = String(req.headers['x-amz-checksum-type'] ?? (COMPOSITE_ALGORITHMS.includes(alg) ? 'COMPOSITE' : 'FULL_OBJECT')).toUpperCase();
  if (type !== 'COMPOSITE' && type !== 'FULL_OBJECT') throw new ObsError(400, 'InvalidRequest', 'x-amz-checksum-type is COMPOSITE or FULL_OBJECT');
  const allowed = type === 'COMPOSITE' ? COMPOSITE_ALGORITHMS : FULL_OBJECT_ALGORITHMS;
  if (!allowed.includes(alg)) throw new ObsError(400, 'InvalidRequest', `The ${type} checksum type cannot be used with the ${alg} checksum algorithm.`);
  return { algorithm: alg, type };
}

/** 304 Not Modified: the validators, no body. */
function notModified(reply: FastifyReply, row: ObjectRow, versioned: boolean): FastifyReply {
  reply.header('etag', `"${row.etag}"`);
  reply.header('last-modified', httpDate(row.created_at));
  if (versioned || row.version_id !== 'null') reply.header('x-amz-version-id', row.version_id);
  return reply.code(304).send();
}

/** How a new object or part is encrypted: under the customer's key (echoing its MD5), or SSE-KMS. */
function uploadEncryptionHeaders(reply: FastifyReply, req: FastifyRequest, customer: boolean): void {
  if (customer) {
    reply.header('x-amz-server-side-encryption-customer-algorithm', 'AES256');
    const md5 = req.headers['x-amz-server-side-encryption-customer-key-md5'];
    if (typeof md5 === 'string') reply.header('x-amz-server-side-encryption-customer-key-md5', md5);
  } else reply.header('x-amz-server-side-encryption', 'aws:kms');
}

function objectMeta(req: FastifyRequest): ObjectMeta {
  const metadata: Record<string, string> = {};
  // User metadata under either cloud's prefix (x-amz-meta-* from S3 clients, x-obs-meta-* from OBS clients).
  for (const [k, v] of Object.entries(req.headers)) if ((k.startsWith('x-amz-meta-') || k.startsWith('x-obs-meta-')) && typeof v === 'string') metadata[k.slice(11)] = v;
  const customerKey = sseCustomerKey(req);
  if (customerKey && (req.headers['x-amz-server-side-encryption'] !== undefined || req.headers['x-amz-server-side-encryption-aws-kms-key-id'] !== undefined)) {
    throw new ObsError(400, 'InvalidArgument', 'give either a customer-provided key (SSE-C) or SSE-KMS, not both');
  }
  const sse = req.headers['x-amz-server-side-encryption'];
  if (sse !== undefined && sse !== 'aws:kms' && sse !== 'AES256') throw new ObsError(400, 'InvalidArgument', 'x-amz-server-side-encryption must be aws:kms or AES256 (both mean SSE-KMS here)');
  const kmsKey = req.headers['x-amz-server-side-encryption-aws-kms-key-id'];
  const mode = req.headers['x-amz-object-lock-mode'];
  const until = req.headers['x-amz-object-lock-retain-until-date'];
  const hold = req.headers['x-amz-object-lock-legal-hold'];
  const tagging = req.headers['x-amz-tagging'];
  const tags = typeof tagging === 'string' ? Object.fromEntries(new URLSearchParams(tagging)) : undefined;
  if (hold !== undefined && hold !== 'ON' && hold !== 'OFF') throw new ObsError(400, 'InvalidArgument', 'x-amz-object-lock-legal-hold must be ON or OFF');
  return {
    contentType: typeof req.headers['content-type'] === 'string' ? req.headers['content-type'] : 'binary/octet-stream', metadata,
    ...(typeof kmsKey === 'string' ? { kmsKey } : {}),
    ...(mode !== undefined || until !== undefined ? { lock: parseLock(mode as string | undefined, until as string | undefined) } : {}),
    ...(hold === 'ON' ? { legalHold: true } : {}),
    ...(tags ? { tags } : {}),
    ...(customerKey ? { customerKey } : {}),
  };
}

/**
 * The content of an upload as a stream (aws-chunked bodies decoded), and the check to run after its
 * last byte: declared length, Content-MD5, x-amz-checksum-* (header or trailer), x-amz-content-sha256.
 */
function incomingBody(req: FastifyRequest, opts: { checksumHeadersNameTheObject?: boolean } = {}): { content: Readable; check: VerifyUpload; verified: () => { name: string; value: string } | null; algorithm: ChecksumAlgorithm | undefined } {
  const h = req.headers;
  const declared = String(h['x-amz-content-sha256'] ?? '');
  const chunked = declared.startsWith('STREAMING-');
  const signed = declared === 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD' || declared === 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER';
  if (chunked && !signed && declared !== 'STREAMING-UNSIGNED-PAYLOAD-TRAILER') {
    throw new ObsError(501, 'NotImplemented', `${declared.slice(0, 64)} uploads are not supported; use UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER or STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`);
  }
  // Chunk signatures chain from an Authorization-header SigV4 signature; authentication leaves the
  // signer only for such a request (never for a presigned URL, a V2/OBS signature or a token).
  const signer = signed ? req.custos.chunkSigner : null;
  if (signed && !signer) throw new ObsError(400, 'InvalidRequest', `${declared} needs an AWS Signature Version 4 Authorization header; presigned URLs, V2/OBS signatures and tokens cannot sign chunks`);
  if (chunked && h['x-amz-decoded-content-length'] === undefined) throw new ObsError(411, 'MissingContentLength', 'x-amz-decoded-content-length is required with aws-chunked bodies');
  if (!chunked && h['content-length'] === undefined) throw new ObsError(411, 'MissingContentLength', 'you must provide the Content-Length HTTP header');
  const lengthHeader = String(chunked ? h['x-amz-decoded-content-length'] : h['content-length']);
  if (chunked && !/^\d{1,15}$/.test(lengthHeader)) throw new ObsError(400, 'InvalidArgument', 'x-amz-decoded-content-length must be a whole number of bytes');
  const length = Number(lengthHeader);
  // The one checksum the client declares: an x-amz-checksum-<algorithm> header, or a trailer it announces.
  const inHeader: ChecksumAlgorithm[] = [];
  for (const [name, value] of Object.entries(h)) {
    if (opts.checksumHeadersNameTheObject || !name.startsWith('x-amz-checksum-') || CHECKSUM_SETTINGS.has(name.slice(15))) continue;
    const alg = name.slice(15);
    if (!isChecksumAlgorithm(alg)) throw new ObsError(400, 'InvalidRequest', `${name} is not supported; use CRC32, CRC32C, CRC64NVME, SHA1 or SHA256 checksums`);
    if (typeof value !== 'string' || !validChecksum(value, alg)) throw new ObsError(400, 'InvalidRequest', `Value for ${name} header is invalid.`);
    inHeader.push(alg);
  }
  const trailerNames = String(h['x-amz-trailer'] ?? '').split(',').map((t) => t.trim().toLowerCase()).filter((t) => t !== '');
  const inTrailer: ChecksumAlgorithm[] = [];
  for (const name of trailerNames) {
    const alg = name.slice(15);
    if (!name.startsWith('x-amz-checksum-') || !isChecksumAlgorithm(alg)) throw new ObsError(400, 'InvalidRequest', `the trailer ${name} is not supported; use an x-amz-checksum-crc32, -crc32c, -crc64nvme, -sha1 or -sha256 trailer`);
    inTrailer.push(alg);
  }
  const withTrailer = chunked && declared.endsWith('-TRAILER');
  if (inTrailer.length && !withTrailer) throw new ObsError(400, 'InvalidRequest', 'x-amz-trailer needs an aws-chunked body with trailers (STREAMING-UNSIGNED-PAYLOAD-TRAILER or STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER)');
  const algorithms = [...new Set([...inHeader, ...inTrailer])];
  if (algorithms.length > 1) throw new ObsError(400, 'InvalidRequest', 'Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.');
  const algorithm = algorithms[0];
  const raw = (req.body as Readable | undefined) ?? Readable.from([]);
  const decoder = chunked ? new AwsChunkedDecoder({ ...(signer ? { signer, trailer: withTrailer } : {}), decodedLength: length }) : null;
  // Only the checksum the client declares is computed; a SHA-256 one by the object store, which
  // computes SHA-256 only when this check asks for it (needsSha256 below).
  const sum = algorithm && algorithm !== 'sha256' ? checksummer(algorithm) : null;
  let computed: Buffer | null = null;
  let verified: { name: string; value: string } | null = null;
  const tap = new Transform({
    transform(chunk: Buffer, _e, done) {
      sum?.update(chunk);
      done(null, chunk);
    },
    flush(done) {
      if (!sum) return done();
      sum.digest().then((d) => {
        computed = d;
        done();
      }, done);
    },
  });
  const source = decoder ? raw.pipe(decoder) : raw;
  raw.on('error', (e) => source.destroy(e));
  decoder?.on('error', (e) => tap.destroy(e));
  // The body is read ahead before the object store takes the stream, so it can fail before anyone
  // listens: the error stays on the stream (`errored`) for the store, instead of being uncaught.
  tap.on('error', () => undefined);
  const payloadHash = /^[0-9a-f]{64}$/.test(declared);
  const check: VerifyUpload = ({ md5, sha256, size }) => {
    if (size !== length) throw new ObsError(400, 'IncompleteBody', `the body has ${size} bytes, not the ${length} declared`);
    if (algorithm) {
      const name = `x-amz-checksum-${algorithm}`;
      const given = inHeader.includes(algorithm) ? (h[name] as string) : decoder?.trailers[name];
      if (given === undefined) throw new ObsError(400, 'InvalidRequest', `the ${name} trailer was announced but not sent`);
      if (!validChecksum(given, algorithm)) throw new ObsError(400, 'InvalidRequest', `Value for ${name} trailing header is invalid.`);
      if (!equalB64(given, (algorithm === 'sha256' ? sha256 : computed) ?? Buffer.alloc(0))) throw new ObsError(400, 'BadDigest', `The ${algorithm.toUpperCase()} you specified did not match the calculated checksum.`);
      verified = { name, value: given };
    }
    const contentMd5 = h['content-md5'];
    if (typeof contentMd5 === 'string' && !equalB64(contentMd5, md5)) throw new ObsError(400, 'BadDigest', 'the Content-MD5 you specified did not match what we received');
    if (payloadHash && declared !== sha256?.toString('hex')) throw new ObsError(400, 'XAmzContentSHA256Mismatch', 'the provided x-amz-content-sha256 header does not match what was computed');
    return verified && algorithm ? { checksum: `${algorithm}:${Buffer.from(verified.value, 'base64').toString('base64')}` } : undefined;
  };
  check.needsSha256 = payloadHash || algorithm === 'sha256';
  return { content: source.pipe(tap), check, verified: () => verified, algorithm };
}

/** A checksum value: base64 of exactly the algorithm's digest length. */
function validChecksum(value: string, alg: ChecksumAlgorithm): boolean {
  return /^[A-Za-z0-9+/]+={0,2}$/.test(value) && Buffer.from(value, 'base64').length === CHECKSUM_BYTES[alg];
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw new ObsError(400, 'InvalidArgument', 'the copy source is not properly URL-encoded');
  }
}

/** SSE-C headers: AES256, the 256-bit key in base64, and its MD5, which must match (a mistyped key is refused). */
function sseCustomerKey(req: FastifyRequest, prefix = 'x-amz-server-side-encryption-customer-'): Buffer | undefined {
  const alg = req.headers[`${prefix}algorithm`];
  const key = req.headers[`${prefix}key`];
  const md5 = req.headers[`${prefix}key-md5`];
  if (alg === undefined && key === undefined && md5 === undefined) return undefined;
  if (alg !== 'AES256') throw new ObsError(400, 'InvalidEncryptionAlgorithmError', 'the customer-provided key algorithm must be AES256');
  const k = typeof key === 'string' ? Buffer.from(key, 'base64') : Buffer.alloc(0);
  if (k.length !== 32) throw new ObsError(400, 'InvalidArgument', 'the customer-provided key must be 256 bits, base64-encoded');
  if (typeof md5 !== 'string' || !equalB64(md5, createHash('md5').update(k).digest())) throw new ObsError(400, 'InvalidArgument', 'the customer-provided key MD5 does not match the key');
  return k;
}

function parseTagging(doc: unknown): Record<string, string> {
  const set = (doc as { Tagging?: { TagSet?: { Tag?: unknown } | string } }).Tagging?.TagSet;
  if (set === undefined) throw new ObsError(400, 'MalformedXML', 'expected a Tagging document with a TagSet');
  const raw = typeof set === 'object' ? set.Tag : undefined;
  const list = (Array.isArray(raw) ? raw : raw ? [raw] : []) as { Key?: string; Value?: string }[];
  const tags: Record<string, string> = {};
  for (const t of list) {
    if (typeof t.Key !== 'string') throw new ObsError(400, 'MalformedXML', 'each Tag needs a Key');
    if (t.Key in tags) throw new ObsError(400, 'InvalidTag', `the tag key ${t.Key} is given twice`);
    tags[t.Key] = typeof t.Value === 'string' ? t.Value : '';
  }
  return tags;
}
function tagSetXml(json: string | null): { Tag: { Key: string; Value: string }[] } | '' {
  const tags = json ? (JSON.parse(json) as Record<string, string>) : {};
  const list = Object.entries(tags).map(([Key, Value]) => ({ Key, Value }));
  return list.length ? { Tag: list } : '';
}

function parseLock(mode: string | undefined, until: string | undefined): { mode: LockMode; until: number } {
  if (mode !== 'GOVERNANCE' && mode !== 'COMPLIANCE') throw new ObsError(400, 'InvalidArgument', 'the object lock mode must be GOVERNANCE or COMPLIANCE, given with a retain-until date');
  const t = until === undefined ? NaN : Date.parse(until);
  if (!Number.isFinite(t)) throw new ObsError(400, 'InvalidArgument', 'the retain-until date must be an ISO 8601 date, given with a mode');
  return { mode, until: t };
}

function versionIdOf(req: FastifyRequest): string | undefined {
  const v = (req.query as Record<string, string | undefined>).versionId;
  if (v === undefined) return undefined;
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(v)) throw new ObsError(400, 'InvalidArgument', 'invalid version id');
  return v;
}

function parseXml(body: Buffer): unknown {
  try {
    return parser.parse(body.toString('utf8'), true);
  } catch {
    throw new ObsError(400, 'MalformedXML', 'the XML you provided was not well-formed or did not validate against our published schema');
  }
}

function equalB64(given: string, computed: Buffer): boolean {
  const g = Buffer.from(given, 'base64');
  return g.length === computed.length && timingSafeEqual(g, computed);
}

function signedRegion(req: FastifyRequest): string | null {
  const auth = req.headers.authorization;
  const fromHeader = typeof auth === 'string' ? /Credential=[^/]+\/\d{8}\/([^/]+)\/s3\/aws4_request/.exec(auth)?.[1] : undefined;
  return fromHeader ?? null;
}

/**
 * A subresource's body (XML, a policy's JSON), read whole and verified as an upload is: aws-chunked
 * bodies decoded (chunk signatures checked), and the declared length, Content-MD5, x-amz-checksum-*
 * (header or trailer; on CompleteMultipartUpload the headers name the object's checksum and are left
 * to the completion) and x-amz-content-sha256 checked against what arrived. The signature covers only
 * the declared x-amz-content-sha256, so without this check a changed body would pass as signed.
 */
async function readSmallBody(req: FastifyRequest, max: number, opts: { checksumHeadersNameTheObject?: boolean } = {}): Promise<Buffer> {
  const h = req.headers;
  const streaming = String(h['x-amz-content-sha256'] ?? '').startsWith('STREAMING-');
  if (!req.body && h['content-length'] === undefined && !streaming) return Buffer.alloc(0);
  const body = incomingBody(req, opts);
  const md5 = createHash('md5');
  const sha256 = body.check.needsSha256 ? createHash('sha256') : null;
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of body.content) {
    n += (c as Buffer).length;
    if (n > max) throw new ObsError(400, 'MaxMessageLengthExceeded', 'your request was too big');
    md5.update(c as Buffer);
    sha256?.update(c as Buffer);
    parts.push(c as Buffer);
  }
  body.check({ md5: md5.digest(), sha256: sha256?.digest() ?? null, size: n });
  return Buffer.concat(parts);
}
