/**
 * Cross-origin resource sharing for the S3 listener: a bucket's CORS configuration (S3's
 * `CORSConfiguration`), and how it answers browsers.
 *
 * Buckets are named per account (docs/obs.md), and a browser's preflight (`OPTIONS`) carries no
 * credentials, so a preflight cannot say which account's bucket it means. Preflights are therefore
 * answered without looking at any bucket — from the installation's `obsCorsOrigins` — so they reveal
 * nothing about which buckets exist. The bucket's own rules decide the headers of the actual,
 * authenticated response: a page on an origin the bucket does not list is answered without
 * `Access-Control-Allow-Origin`, and the browser keeps the response from it. S3 requests carry no
 * ambient credentials (no cookies; each is signed), so an answered preflight cannot be used for
 * request forgery: the request still needs a valid signature.
 */
import { ObsError } from './obs.js';

export const CORS_METHODS = ['GET', 'PUT', 'POST', 'DELETE', 'HEAD'] as const;
export type CorsMethod = (typeof CORS_METHODS)[number];
export const MAX_CORS_RULES = 100;

export interface CorsRule {
  id?: string;
  allowedOrigins: string[];
  allowedMethods: CorsMethod[];
  allowedHeaders: string[];
  exposeHeaders: string[];
  maxAgeSeconds?: number;
}

const asList = (v: unknown): unknown[] => (v === undefined ? [] : Array.isArray(v) ? v : [v]);
/** An HTTP header name (RFC 9110 token), at most 256 characters. */
export const HEADER_NAME = /^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,256}$/;

/** A parsed `CORSConfiguration` document; every mistake is a 400 naming the rule. */
export function parseCorsConfiguration(doc: unknown): CorsRule[] {
  const cfg = (doc as { CORSConfiguration?: { CORSRule?: unknown } }).CORSConfiguration;
  if (!cfg || typeof cfg !== 'object') throw new ObsError(400, 'MalformedXML', 'expected a CORSConfiguration document');
  const raw = asList(cfg.CORSRule);
  if (!raw.length) throw new ObsError(400, 'MalformedXML', 'a CORSConfiguration needs at least one CORSRule');
  if (raw.length > MAX_CORS_RULES) throw new ObsError(400, 'MalformedXML', `a CORSConfiguration holds at most ${MAX_CORS_RULES} rules`);
  return raw.map((r, i) => {
    if (!r || typeof r !== 'object') throw new ObsError(400, 'MalformedXML', `CORSRule ${i + 1} is empty`);
    const rule = r as Record<string, unknown>;
    const strings = (name: string) => asList(rule[name]).map((v) => {
      if (typeof v !== 'string') throw new ObsError(400, 'MalformedXML', `CORSRule ${i + 1}: ${name} must be text`);
      return v.trim();
    });
    const origins = strings('AllowedOrigin');
    const methods = strings('AllowedMethod');
    if (!origins.length || !methods.length) throw new ObsError(400, 'MalformedXML', `CORSRule ${i + 1} needs at least one AllowedOrigin and one AllowedMethod`);
    for (const o of origins) {
      if ((o.match(/\*/g) ?? []).length > 1) throw new ObsError(400, 'InvalidRequest', `AllowedOrigin "${o.slice(0, 100)}" can not have more than one wildcard.`);
      if (!o || o.length > 1024 || /\s/.test(o)) throw new ObsError(400, 'InvalidRequest', `CORSRule ${i + 1}: an AllowedOrigin is empty, too long or has spaces`);
    }
    for (const m of methods) {
      if (!(CORS_METHODS as readonly string[]).includes(m)) throw new ObsError(400, 'InvalidRequest', `Found unsupported HTTP method in CORS config. Unsupported method is ${m.slice(0, 20)}`);
    }
    const headers = strings('AllowedHeader');
    for (const h of headers) {
      if ((h.match(/\*/g) ?? []).length > 1) throw new ObsError(400, 'InvalidRequest', `AllowedHeader "${h.slice(0, 100)}" can not have more than one wildcard.`);
      if (!HEADER_NAME.test(h)) throw new ObsError(400, 'InvalidRequest', `CORSRule ${i + 1}: AllowedHeader "${h.slice(0, 100)}" is not a header name`);
    }
    const expose = strings('ExposeHeader');
    for (const h of expose) if (!HEADER_NAME.test(h) || h.includes('*')) throw new ObsError(400, 'InvalidRequest', `CORSRule ${i + 1}: ExposeHeader "${h.slice(0, 100)}" is not a header name`);
    const out: CorsRule = { allowedOrigins: origins, allowedMethods: methods as CorsMethod[], allowedHeaders: headers, exposeHeaders: expose };
    const id = rule.ID;
    if (id !== undefined) {
      if (typeof id !== 'string' || id.length > 255) throw new ObsError(400, 'MalformedXML', `CORSRule ${i + 1}: ID is at most 255 characters`);
      out.id = id;
    }
    const age = rule.MaxAgeSeconds;
    if (age !== undefined) {
      if (typeof age !== 'string' || !/^\d{1,9}$/.test(age.trim())) throw new ObsError(400, 'MalformedXML', `CORSRule ${i + 1}: MaxAgeSeconds must be a whole number of seconds`);
      out.maxAgeSeconds = Number(age);
    }
    return out;
  });
}

/** The document GetBucketCors returns. */
export function corsDocument(rules: CorsRule[]): Record<string, unknown> {
  return {
    CORSRule: rules.map((r) => ({
      ...(r.id !== undefined ? { ID: r.id } : {}),
      AllowedHeader: r.allowedHeaders, AllowedMethod: r.allowedMethods, AllowedOrigin: r.allowedOrigins, ExposeHeader: r.exposeHeaders,
      ...(r.maxAgeSeconds !== undefined ? { MaxAgeSeconds: r.maxAgeSeconds } : {}),
    })),
  };
}

/** `*` stands for any run of characters (at most one per pattern); everything else is literal, case-insensitive for headers. */
export function wildcardMatches(pattern: string, value: string, ignoreCase = false): boolean {
  const p = ignoreCase ? pattern.toLowerCase() : pattern;
  const v = ignoreCase ? value.toLowerCase() : value;
  const star = p.indexOf('*');
  if (star < 0) return p === v;
  const head = p.slice(0, star);
  const tail = p.slice(star + 1);
  return v.length >= head.length + tail.length && v.startsWith(head) && v.endsWith(tail);
}

/** The first rule that allows the origin, the method and every requested header, as S3 picks it. */
export function matchCorsRule(rules: CorsRule[], origin: string, method: string, requestHeaders: string[] = []): CorsRule | undefined {
  return rules.find((r) =>
    r.allowedOrigins.some((o) => wildcardMatches(o, origin)) &&
    (r.allowedMethods as string[]).includes(method) &&
    requestHeaders.every((h) => r.allowedHeaders.some((a) => wildcardMatches(a, h, true))));
}

/** The Access-Control-* headers of an actual response whose request matched `rule`. */
export function responseCorsHeaders(rule: CorsRule, origin: string): Record<string, string> {
  const any = rule.allowedOrigins.includes('*') && !rule.allowedOrigins.some((o) => o !== '*' && wildcardMatches(o, origin));
  return {
    'access-control-allow-origin': any ? '*' : origin,
    ...(any ? {} : { 'access-control-allow-credentials': 'true' }),
    'access-control-allow-methods': rule.allowedMethods.join(', '),
    ...(rule.exposeHeaders.length ? { 'access-control-expose-headers': rule.exposeHeaders.join(', ') } : {}),
    ...(rule.maxAgeSeconds !== undefined ? { 'access-control-max-age': String(rule.maxAgeSeconds) } : {}),
  };
}

/** Whether the installation lets a browser on `origin` preflight at all (`obsCorsOrigins`). */
export function preflightAllowed(installationOrigins: readonly string[], origin: string): boolean {
  return installationOrigins.some((o) => wildcardMatches(o, origin));
}
