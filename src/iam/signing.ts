/**
 * AK/SK request signatures: Huawei Cloud `SDK-HMAC-SHA256` and AWS Signature Version 4
 * (Authorization header and presigned query). Pure functions: parsing, canonicalisation and a
 * constant-time comparison. Looking up the secret and the replay cache are the IAM service's job.
 */
import { createHmac, hash as oneShotHash, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';

export interface SignedRequestInput {
  method: string;
  /** The path exactly as received, still percent-encoded, without the query. */
  path: string;
  /** The raw query string without `?`. */
  query: string;
  /** Node's lower-cased header map. */
  headers: IncomingHttpHeaders;
  body: Buffer;
  /**
   * The body is streamed, not buffered (S3 uploads): a declared x-amz-content-sha256 is taken as
   * signed, and the caller must check the body against it while reading it.
   */
  streamedBody?: boolean;
  /**
   * V2/OBS signatures sign a resource that names the bucket: on a virtual-hosted-style request the
   * bucket is in the Host header, so the edge passes `/bucket` + path here.
   */
  v2Resource?: string;
}

/** The payload forms S3 clients declare in x-amz-content-sha256 besides a hex digest. */
export const S3_UNSIGNED_PAYLOADS = new Set(['UNSIGNED-PAYLOAD', 'STREAMING-UNSIGNED-PAYLOAD-TRAILER']);
/** Signed streaming (aws-chunked with a signature per chunk, chained from the request's signature). */
export const S3_SIGNED_STREAMING = new Set(['STREAMING-AWS4-HMAC-SHA256-PAYLOAD', 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER']);

/**
 * What the body of a signed streaming upload is checked with: the request's SigV4 signing key, date
 * and scope, and its signature as the seed of the chain. The key stays inside (a private field, not
 * serialised, not shown by inspection); the caller gets signatures to compare, nothing more.
 */
export class ChunkSigner {
  readonly #signingKey: Buffer;
  readonly #timestamp: string;
  readonly #scope: string;
  /** The Authorization header's signature, which the first chunk's signature chains from. */
  readonly seedSignature: string;

  constructor(signingKey: Buffer, timestamp: string, scope: string, seedSignature: string) {
    this.#signingKey = signingKey;
    this.#timestamp = timestamp;
    this.#scope = scope;
    this.seedSignature = seedSignature;
  }

  /** A chunk's signature: over the previous signature and the SHA-256 of the chunk's data. */
  chunkSignature(previousSignature: string, dataSha256Hex: string): string {
    return this.#sign(['AWS4-HMAC-SHA256-PAYLOAD', this.#timestamp, this.#scope, previousSignature, EMPTY_SHA256, dataSha256Hex].join('\n'));
  }

  /** The trailer's signature: over the final chunk's signature and the SHA-256 of the trailer lines (`name:value\n` each). */
  trailerSignature(previousSignature: string, trailerSha256Hex: string): string {
    return this.#sign(['AWS4-HMAC-SHA256-TRAILER', this.#timestamp, this.#scope, previousSignature, trailerSha256Hex].join('\n'));
  }

  #sign(stringToSign: string): string {
    return hmac(this.#signingKey, stringToSign).toString('hex');
  }

  toJSON(): string {
    return '[ChunkSigner]';
  }
  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return '[ChunkSigner]';
  }
}

/** Compares two lower-case hex signatures in constant time (a malformed one never matches). */
export function signaturesEqual(expected: string, given: string): boolean {
  if (!HEX64.test(given) || !HEX64.test(expected)) return false;
  return timingSafeEqual(Buffer.from(expected, 'hex'), Buffer.from(given, 'hex'));
}

export type SignatureScheme = 'SDK-HMAC-SHA256' | 'AWS4-HMAC-SHA256' | 'AWS4-HMAC-SHA256-QUERY' | 'OBS-V2' | 'AWS-V2';

/** Whether a scheme signs with HMAC-SHA1 over a string without a nonce (Huawei OBS, AWS SigV2). */
export function isV2Scheme(s: SignatureScheme): boolean {
  return s === 'OBS-V2' || s === 'AWS-V2';
}

/** The query parameters a V2/OBS signature covers (as Huawei's and AWS's SDKs list them). */
const V2_SUBRESOURCES = new Set([
  'acl', 'backtosource', 'policy', 'torrent', 'logging', 'location', 'storageinfo', 'quota', 'storageclass', 'storagepolicy',
  'requestpayment', 'versions', 'versioning', 'versionid', 'uploads', 'uploadid', 'partnumber', 'website', 'notification',
  'replication', 'lifecycle', 'deletebucket', 'delete', 'cors', 'restore', 'tagging', 'append', 'position',
  'response-content-type', 'response-content-language', 'response-expires', 'response-cache-control',
  'response-content-disposition', 'response-content-encoding', 'x-image-process', 'x-image-save-object', 'x-image-save-bucket',
  'encryption', 'directcoldaccess', 'rename', 'name', 'metadata', 'modify', 'attname', 'truncate', 'x-obs-security-token',
  'object-lock', 'retention', 'legal-hold',
]);

export interface ParsedSignature {
  scheme: SignatureScheme;
  accessKeyId: string;
  signedHeaders: string[];
  timestamp: Date;
  /** Presigned URLs only: seconds the URL stays valid after `timestamp`. */
  expiresSeconds?: number;
  /** SigV4 only. */
  scope?: { date: string; region: string; service: string };
  signature: string;
  securityToken?: string;
}

export type SignatureErrorCode =
  | 'MalformedSignature'
  | 'MissingSignedHeader'
  | 'RequestTimeTooSkewed'
  | 'RequestExpired'
  | 'ContentHashMismatch'
  | 'SignatureDoesNotMatch';

export class SignatureError extends Error {
  constructor(
    readonly code: SignatureErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'SignatureError';
  }
}

const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
const MAX_PRESIGN_SECONDS = 7 * 24 * 3600;

function header(req: SignedRequestInput, name: string): string | undefined {
  const v = req.headers[name];
  if (v === undefined) return undefined;
  return Array.isArray(v) ? v.join(',') : String(v);
}

/** RFC 3986 encoding: everything but unreserved characters, upper-case hex. */
export function uriEncode(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw new SignatureError('MalformedSignature', 'the request URI holds an invalid percent-encoding');
  }
}

/** Query pairs decoded once (`+` is kept literally, as the signers encode a space as %20). */
function queryPairs(raw: string): [string, string][] {
  if (!raw) return [];
  return raw
    .split('&')
    .filter((p) => p.length > 0)
    .map((p) => {
      const eq = p.indexOf('=');
      return eq < 0 ? [safeDecode(p), ''] : [safeDecode(p.slice(0, eq)), safeDecode(p.slice(eq + 1))];
    });
}

function canonicalQuery(pairs: [string, string][], exclude?: string): string {
  return pairs
    .filter(([k]) => k !== exclude)
    .map(([k, v]) => [uriEncode(k), uriEncode(v)] as const)
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join('&');
}

function parseBasicTime(s: string | undefined): Date | null {
  const m = s ? /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(s) : null;
  if (!m) return null;
  const d = new Date(Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!));
  return Number.isNaN(d.getTime()) ? null : d;
}

function parseAuthParams(rest: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const part of rest.split(',')) {
    const t = part.trim();
    const eq = t.indexOf('=');
    if (eq <= 0) throw new SignatureError('MalformedSignature', 'the Authorization header is not of the form Scheme Key=Value, ...');
    m.set(t.slice(0, eq).trim(), t.slice(eq + 1).trim());
  }
  return m;
}

function parseSignedHeaders(s: string | undefined): string[] {
  if (!s || !/^[a-z0-9!#$%&'*+.^_`|~-]+(;[a-z0-9!#$%&'*+.^_`|~-]+)*$/.test(s)) {
    throw new SignatureError('MalformedSignature', 'SignedHeaders must be a ;-separated list of lower-case header names');
  }
  return s.split(';');
}

function parseScope(credential: string | undefined): { accessKeyId: string; scope: NonNullable<ParsedSignature['scope']> } {
  const parts = (credential ?? '').split('/');
  if (parts.length !== 5 || parts[4] !== 'aws4_request' || !/^\d{8}$/.test(parts[1]!) || !parts[0] || !parts[2] || !parts[3]) {
    throw new SignatureError('MalformedSignature', 'Credential must be AK/yyyymmdd/region/service/aws4_request');
  }
  return { accessKeyId: parts[0], scope: { date: parts[1]!, region: parts[2]!, service: parts[3]! } };
}

const HEX64 = /^[0-9a-f]{64}$/;

/**
 * Recognises a signature on the request. Returns null when the request carries none;
 * throws SignatureError(MalformedSignature) when it carries one that cannot be parsed.
 */
export function parseSignature(req: SignedRequestInput): ParsedSignature | null {
  const auth = header(req, 'authorization');
  if (auth !== undefined) {
    const sp = auth.indexOf(' ');
    const scheme = sp < 0 ? auth : auth.slice(0, sp);
    const params = sp < 0 ? new Map<string, string>() : parseAuthParams(auth.slice(sp + 1));
    if (scheme === 'SDK-HMAC-SHA256') {
      const accessKeyId = params.get('Access');
      const signature = params.get('Signature');
      if (!accessKeyId || !signature || !/^[0-9a-f]{64}$/.test(signature)) throw new SignatureError('MalformedSignature', 'SDK-HMAC-SHA256 needs Access, SignedHeaders and a hex Signature');
      const timestamp = parseBasicTime(header(req, 'x-sdk-date'));
      if (!timestamp) throw new SignatureError('MalformedSignature', 'X-Sdk-Date must be present as yyyymmddThhmmssZ');
      const token = header(req, 'x-security-token');
      return { scheme, accessKeyId, signedHeaders: parseSignedHeaders(params.get('SignedHeaders')), timestamp, signature, ...(token ? { securityToken: token } : {}) };
    }
    if (scheme === 'OBS' || scheme === 'AWS') {
      // Huawei OBS (`OBS AK:signature`) and AWS SigV2 (`AWS AK:signature`): HMAC-SHA1, base64.
      const cred = auth.slice(sp + 1).trim();
      const colon = cred.lastIndexOf(':');
      const accessKeyId = colon > 0 ? cred.slice(0, colon) : '';
      const signature = colon > 0 ? cred.slice(colon + 1) : '';
      if (!/^[A-Za-z0-9]{1,128}$/.test(accessKeyId) || !/^[A-Za-z0-9+/]{27}=$/.test(signature)) throw new SignatureError('MalformedSignature', `${scheme} needs AK:signature with a base64 HMAC-SHA1`);
      const prefix = scheme === 'OBS' ? 'x-obs-' : 'x-amz-';
      const timestamp = dateHeader(header(req, `${prefix}date`) ?? header(req, 'date'));
      if (!timestamp) throw new SignatureError('MalformedSignature', `a ${scheme} signature needs a Date or ${prefix}date header`);
      const token = header(req, `${prefix}security-token`);
      return { scheme: scheme === 'OBS' ? 'OBS-V2' : 'AWS-V2', accessKeyId, signedHeaders: [], timestamp, signature, ...(token ? { securityToken: token } : {}) };
    }
    if (scheme === 'AWS4-HMAC-SHA256') {
      const { accessKeyId, scope } = parseScope(params.get('Credential'));
      const signature = params.get('Signature');
      if (!signature || !HEX64.test(signature)) throw new SignatureError('MalformedSignature', 'Signature must be 64 lower-case hex characters');
      const amzDate = header(req, 'x-amz-date');
      const timestamp = amzDate !== undefined ? parseBasicTime(amzDate) : dateHeader(header(req, 'date'));
      if (!timestamp) throw new SignatureError('MalformedSignature', 'X-Amz-Date must be present as yyyymmddThhmmssZ');
      const token = header(req, 'x-amz-security-token');
      return { scheme, accessKeyId, signedHeaders: parseSignedHeaders(params.get('SignedHeaders')), timestamp, scope, signature, ...(token ? { securityToken: token } : {}) };
    }
    throw new SignatureError('MalformedSignature', `unsupported Authorization scheme "${scheme.slice(0, 32)}"; use SDK-HMAC-SHA256, AWS4-HMAC-SHA256, OBS or AWS (V2)`);
  }
  if (/(^|&)X-Amz-Signature=/.test(req.query)) {
    const q = new Map(queryPairs(req.query));
    if (q.get('X-Amz-Algorithm') !== 'AWS4-HMAC-SHA256') throw new SignatureError('MalformedSignature', 'X-Amz-Algorithm must be AWS4-HMAC-SHA256');
    const { accessKeyId, scope } = parseScope(q.get('X-Amz-Credential'));
    const signature = q.get('X-Amz-Signature') ?? '';
    if (!HEX64.test(signature)) throw new SignatureError('MalformedSignature', 'X-Amz-Signature must be 64 lower-case hex characters');
    const timestamp = parseBasicTime(q.get('X-Amz-Date'));
    if (!timestamp) throw new SignatureError('MalformedSignature', 'X-Amz-Date must be yyyymmddThhmmssZ');
    const exp = q.get('X-Amz-Expires') ?? '';
    if (!/^\d{1,7}$/.test(exp) || Number(exp) < 1 || Number(exp) > MAX_PRESIGN_SECONDS) {
      throw new SignatureError('MalformedSignature', `X-Amz-Expires must be between 1 and ${MAX_PRESIGN_SECONDS} seconds`);
    }
    const token = q.get('X-Amz-Security-Token');
    return {
      scheme: 'AWS4-HMAC-SHA256-QUERY', accessKeyId, signedHeaders: parseSignedHeaders(q.get('X-Amz-SignedHeaders')), timestamp,
      expiresSeconds: Number(exp), scope, signature, ...(token ? { securityToken: token } : {}),
    };
  }
  return null;
}

function dateHeader(v: string | undefined): Date | null {
  if (!v) return null;
  const t = Date.parse(v);
  return Number.isFinite(t) ? new Date(t) : null;
}

function sha256Hex(data: string | Buffer): string {
  return oneShotHash('sha256', data, 'hex');
}

/**
 * SigV4's derived key depends only on the secret, the day, the region and the service, so it is
 * derived once per day and scope (as the AWS SDKs do) instead of with four HMACs per request.
 */
const signingKeys = new Map<string, { secret: string; key: Buffer }>();
function signingKey(accessKeyId: string, secret: string, scope: { date: string; region: string; service: string }): Buffer {
  const id = `${accessKeyId}\0${scope.date}\0${scope.region}\0${scope.service}`;
  const hit = signingKeys.get(id);
  if (hit && hit.secret === secret) return hit.key;
  let key = hmac(`AWS4${secret}`, scope.date);
  key = hmac(key, scope.region);
  key = hmac(key, scope.service);
  key = hmac(key, 'aws4_request');
  if (signingKeys.size >= 10_000) signingKeys.clear();
  signingKeys.set(id, { secret, key });
  return key;
}
function hmac(key: string | Buffer, data: string): Buffer {
  return createHmac('sha256', key).update(data).digest();
}

function canonicalHeaders(req: SignedRequestInput, names: string[], trimInner: boolean): string {
  let out = '';
  for (const n of names) {
    const v = header(req, n);
    if (v === undefined) throw new SignatureError('MissingSignedHeader', `the signed header "${n}" is not in the request`);
    out += `${n}:${trimInner ? v.trim().replace(/\s+/g, ' ') : v.trim()}\n`;
  }
  return out;
}

function requireSigned(parsed: ParsedSignature, names: string[]) {
  for (const n of names) {
    if (!parsed.signedHeaders.includes(n)) throw new SignatureError('MissingSignedHeader', `the header "${n}" must be signed`);
  }
}

/**
 * Checks freshness first (cheap, no secret involved), then the HMAC in constant time. A header-signed
 * S3 request that declares signed streaming gets back the signer its body's chunks are checked with.
 */
export function verifySignature(req: SignedRequestInput, parsed: ParsedSignature, secret: string, now: Date, windowSeconds: number): ChunkSigner | null {
  const skew = Math.abs(now.getTime() - parsed.timestamp.getTime());
  if (parsed.scheme === 'AWS4-HMAC-SHA256-QUERY') {
    if (parsed.timestamp.getTime() - now.getTime() > windowSeconds * 1000) throw new SignatureError('RequestTimeTooSkewed', 'the presigned URL is dated in the future');
    if (now.getTime() > parsed.timestamp.getTime() + (parsed.expiresSeconds ?? 0) * 1000) throw new SignatureError('RequestExpired', 'the presigned URL has expired');
  } else if (skew > windowSeconds * 1000) {
    throw new SignatureError('RequestTimeTooSkewed', `the request time differs from the server time by more than ${Math.round(windowSeconds / 60)} minutes`);
  }
  if (isV2Scheme(parsed.scheme)) {
    verifyV2(req, parsed, secret);
    return null;
  }
  requireSigned(parsed, ['host']);

  const bodyHash = req.body.length === 0 ? EMPTY_SHA256 : sha256Hex(req.body);
  let expected: string;
  let streaming: { key: Buffer; stamp: string; scope: string } | null = null;
  if (parsed.scheme === 'SDK-HMAC-SHA256') {
    requireSigned(parsed, ['x-sdk-date', ...(parsed.securityToken ? ['x-security-token'] : [])]);
    const declared = header(req, 'x-sdk-content-sha256');
    if (declared !== undefined && declared !== bodyHash) throw new SignatureError('ContentHashMismatch', 'X-Sdk-Content-Sha256 does not match the body');
    const canonical = [
      req.method.toUpperCase(),
      huaweiCanonicalUri(req.path),
      canonicalQuery(queryPairs(req.query)),
      canonicalHeaders(req, parsed.signedHeaders, false),
      parsed.signedHeaders.join(';'),
      bodyHash,
    ].join('\n');
    const stamp = parsed.timestamp.toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');
    const stringToSign = ['SDK-HMAC-SHA256', stamp, sha256Hex(canonical)].join('\n');
    expected = hmac(secret, stringToSign).toString('hex');
  } else {
    const scope = parsed.scope!;
    const stamp = parsed.timestamp.toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');
    if (stamp.slice(0, 8) !== scope.date) throw new SignatureError('MalformedSignature', 'the credential scope date does not match the request date');
    const isS3 = scope.service === 's3';
    let payloadHash: string;
    if (parsed.scheme === 'AWS4-HMAC-SHA256') {
      const dateName = header(req, 'x-amz-date') !== undefined ? 'x-amz-date' : 'date';
      const must = [dateName];
      const declared = header(req, 'x-amz-content-sha256');
      if (declared !== undefined) must.push('x-amz-content-sha256');
      if (parsed.securityToken) must.push('x-amz-security-token');
      requireSigned(parsed, must);
      if (declared === undefined) payloadHash = bodyHash;
      else if (isS3 && (S3_UNSIGNED_PAYLOADS.has(declared) || S3_SIGNED_STREAMING.has(declared))) payloadHash = declared;
      else if (HEX64.test(declared)) {
        if (!req.streamedBody && declared !== bodyHash) throw new SignatureError('ContentHashMismatch', 'x-amz-content-sha256 does not match the body');
        payloadHash = declared;
      } else throw new SignatureError('MalformedSignature', `x-amz-content-sha256 "${declared.slice(0, 40)}" is not supported here`);
    } else {
      payloadHash = isS3 ? 'UNSIGNED-PAYLOAD' : bodyHash;
    }
    const canonical = [
      req.method.toUpperCase(),
      isS3 ? s3CanonicalUri(req.path) : sigv4CanonicalUri(req.path),
      canonicalQuery(queryPairs(req.query), parsed.scheme === 'AWS4-HMAC-SHA256-QUERY' ? 'X-Amz-Signature' : undefined),
      canonicalHeaders(req, parsed.signedHeaders, true),
      parsed.signedHeaders.join(';'),
      payloadHash,
    ].join('\n');
    const scopeString = `${scope.date}/${scope.region}/${scope.service}/aws4_request`;
    const stringToSign = ['AWS4-HMAC-SHA256', stamp, scopeString, sha256Hex(canonical)].join('\n');
    const key = signingKey(parsed.accessKeyId, secret, scope);
    expected = hmac(key, stringToSign).toString('hex');
    if (parsed.scheme === 'AWS4-HMAC-SHA256' && S3_SIGNED_STREAMING.has(payloadHash)) streaming = { key, stamp, scope: scopeString };
  }
  const a = Buffer.from(expected, 'utf8');
  const b = Buffer.from(parsed.signature, 'utf8');
  if (a.length !== b.length || !timingSafeEqual(a, b)) {
    throw new SignatureError('SignatureDoesNotMatch', 'the request signature does not match the one computed with the access key\'s secret');
  }
  return streaming ? new ChunkSigner(streaming.key, streaming.stamp, streaming.scope, parsed.signature) : null;
}

/**
 * V2/OBS string to sign: method, Content-MD5, Content-Type, Date (empty when the prefixed date header
 * is used), the prefixed headers sorted, and the resource with the signed sub-resources.
 */
function verifyV2(req: SignedRequestInput, parsed: ParsedSignature, secret: string): void {
  const prefix = parsed.scheme === 'OBS-V2' ? 'x-obs-' : 'x-amz-';
  let sts = `${req.method.toUpperCase()}\n${header(req, 'content-md5') ?? ''}\n${header(req, 'content-type') ?? ''}\n`;
  sts += `${header(req, `${prefix}date`) !== undefined ? '' : (header(req, 'date') ?? '')}\n`;
  const names = Object.keys(req.headers).filter((n) => n.startsWith(prefix)).sort();
  for (const n of names) {
    const v = header(req, n)!;
    sts += `${n}:${n.startsWith(`${prefix}meta-`) ? v.trim() : v}\n`;
  }
  let resource = req.v2Resource ?? req.path;
  const subs = req.query
    .split('&')
    .filter(Boolean)
    .sort()
    .map((pair) => {
      const i = pair.indexOf('=');
      const k = safeDecode(i < 0 ? pair : pair.slice(0, i));
      const v = i < 0 ? '' : safeDecode(pair.slice(i + 1));
      return { k, v };
    })
    .filter(({ k }) => V2_SUBRESOURCES.has(k.toLowerCase()));
  subs.forEach(({ k, v }, i) => {
    resource += `${i === 0 ? '?' : '&'}${k}${v ? `=${v}` : ''}`;
  });
  sts += resource;
  const expected = createHmac('sha1', secret).update(sts).digest('base64');
  const a = Buffer.from(expected);
  const b = Buffer.from(parsed.signature);
  if (a.length !== b.length || !timingSafeEqual(a, b)) {
    throw new SignatureError('SignatureDoesNotMatch', 'the request signature does not match the one computed with the access key\'s secret');
  }
}

/** Huawei: every segment of the raw path encoded again, and a trailing slash added. */
function huaweiCanonicalUri(rawPath: string): string {
  const p = rawPath.split('/').map(uriEncode).join('/');
  return p.endsWith('/') ? p : `${p}/`;
}

/** SigV4 for services other than S3: the normalised raw path, each segment encoded again. */
function sigv4CanonicalUri(rawPath: string): string {
  const segs: string[] = [];
  for (const s of rawPath.split('/')) {
    if (s === '' || s === '.') continue;
    if (s === '..') segs.pop();
    else segs.push(s);
  }
  const trailing = segs.length > 0 && rawPath.endsWith('/') ? '/' : '';
  return `/${segs.map(uriEncode).join('/')}${trailing}`;
}

/** S3: the path as sent, in canonical single encoding, not normalised. */
function s3CanonicalUri(rawPath: string): string {
  return rawPath.split('/').map((s) => uriEncode(safeDecode(s))).join('/') || '/';
}
