/**
 * Bucket lifecycle configuration (S3's `LifecycleConfiguration`): parsing with S3's validation, the
 * document GetBucketLifecycleConfiguration returns, and which objects a rule's filter selects.
 * Supported: filters by prefix, object tags and object size (alone or under `And`); expiration after
 * days, on a date, or of expired delete markers; noncurrent-version expiration; aborting incomplete
 * multipart uploads. Transitions need storage classes, which Custos does not have (501).
 */
import { ObsError } from './obs.js';

/** One rule of a bucket's lifecycle configuration. */
export interface LifecycleRule {
  id: string;
  status: 'Enabled' | 'Disabled';
  prefix: string;
  /** Every one of these tags (key and value) must be on the object. */
  tags?: Record<string, string>;
  sizeGreaterThan?: number;
  sizeLessThan?: number;
  expirationDays?: number;
  /** Epoch ms of the date (midnight UTC) from which matching current objects expire. */
  expirationDate?: number;
  /** Remove a delete marker that is the only version left of its key. */
  expiredObjectDeleteMarker?: boolean;
  noncurrentDays?: number;
  abortIncompleteDays?: number;
}

type Xml = Record<string, unknown>;
const list = (v: unknown): unknown[] => (v === undefined || v === '' ? [] : Array.isArray(v) ? v : [v]);
const bad = (message: string) => new ObsError(400, 'InvalidArgument', message);
const malformed = (message: string) => new ObsError(400, 'MalformedXML', message);

function days(v: unknown, what: string): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || !/^\d{1,5}$/.test(v) || Number(v) < 1) throw bad(`${what} must be a positive whole number of days`);
  return Number(v);
}
function bytes(v: unknown, what: string): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || !/^\d{1,16}$/.test(v)) throw bad(`${what} must be a whole number of bytes`);
  return Number(v);
}
function tagsOf(raw: unknown, i: number): Record<string, string> {
  const out: Record<string, string> = {};
  for (const t of list(raw)) {
    const tag = t as { Key?: unknown; Value?: unknown };
    if (typeof tag.Key !== 'string' || !tag.Key || tag.Key.length > 128) throw malformed(`rule ${i + 1}: each Tag needs a Key of 1 to 128 characters`);
    const value = tag.Value === undefined ? '' : tag.Value;
    if (typeof value !== 'string' || value.length > 256) throw malformed(`rule ${i + 1}: a Tag Value is at most 256 characters`);
    if (tag.Key in out) throw bad(`rule ${i + 1}: duplicate tag key ${tag.Key.slice(0, 128)}`);
    out[tag.Key] = value;
  }
  return out;
}

/** Parses a LifecycleConfiguration document; every mistake is a 400 naming the rule. */
export function parseLifecycle(doc: unknown): LifecycleRule[] {
  const cfg = (doc as { LifecycleConfiguration?: { Rule?: unknown } }).LifecycleConfiguration;
  const rules = list(cfg?.Rule) as Xml[];
  if (!cfg || rules.length === 0 || rules.length > 1000) throw malformed('expected a LifecycleConfiguration of 1 to 1000 rules');
  const ids = new Set<string>();
  return rules.map((r, i) => {
    if (r.Status !== 'Enabled' && r.Status !== 'Disabled') throw malformed('each rule needs Status Enabled or Disabled');
    if (r.Transition !== undefined || r.NoncurrentVersionTransition !== undefined) throw new ObsError(501, 'NotImplemented', 'lifecycle transitions need storage classes, which this server does not have');
    const id = typeof r.ID === 'string' && r.ID ? r.ID : `rule-${i + 1}`;
    if (id.length > 255) throw bad(`rule ${i + 1}: ID is at most 255 characters`);
    if (ids.has(id)) throw bad(`Rule ID must be unique. Found same ID for more than one rule: ${id}`);
    ids.add(id);
    const rule: LifecycleRule = { id, status: r.Status, prefix: '' };

    // Filter: Prefix | Tag | ObjectSize* | And { Prefix?, Tag*, ObjectSize* }, or the older top-level Prefix.
    const filter = (r.Filter ?? {}) as Xml | '';
    const f: Xml = typeof filter === 'object' ? filter : {};
    if (r.Prefix !== undefined && r.Filter !== undefined) throw malformed(`rule ${i + 1}: give Prefix or Filter, not both`);
    const and = f.And as Xml | undefined;
    const direct = ['Prefix', 'Tag', 'ObjectSizeGreaterThan', 'ObjectSizeLessThan'].filter((k) => f[k] !== undefined);
    if (and !== undefined && direct.length) throw malformed(`rule ${i + 1}: a Filter holds one condition, or several under And`);
    if (direct.length > 1) throw malformed(`rule ${i + 1}: a Filter holds one condition; put several under And`);
    const source: Xml = and ?? f;
    const prefix = and !== undefined ? source.Prefix : (f.Prefix ?? r.Prefix);
    if (prefix !== undefined && typeof prefix !== 'string') throw malformed(`rule ${i + 1}: Prefix must be text`);
    rule.prefix = (prefix as string | undefined) ?? '';
    if (rule.prefix.length > 1024) throw bad(`rule ${i + 1}: the prefix is at most 1024 characters`);
    const tags = tagsOf(source.Tag, i);
    if (Object.keys(tags).length) rule.tags = tags;
    const gt = bytes(source.ObjectSizeGreaterThan, 'ObjectSizeGreaterThan');
    const lt = bytes(source.ObjectSizeLessThan, 'ObjectSizeLessThan');
    if (gt !== undefined) rule.sizeGreaterThan = gt;
    if (lt !== undefined) rule.sizeLessThan = lt;
    if (gt !== undefined && lt !== undefined && gt >= lt) throw bad(`rule ${i + 1}: ObjectSizeGreaterThan must be less than ObjectSizeLessThan`);

    const exp = r.Expiration as Xml | undefined;
    if (exp !== undefined) {
      const given = ['Days', 'Date', 'ExpiredObjectDeleteMarker'].filter((k) => exp[k] !== undefined);
      if (given.length !== 1) throw malformed(`rule ${i + 1}: Expiration takes exactly one of Days, Date and ExpiredObjectDeleteMarker`);
      if (exp.Days !== undefined) rule.expirationDays = days(exp.Days, 'Expiration Days')!;
      if (exp.Date !== undefined) {
        const d = typeof exp.Date === 'string' ? Date.parse(exp.Date) : Number.NaN;
        if (!Number.isFinite(d) || d % 86_400_000 !== 0) throw bad(`rule ${i + 1}: 'Date' must be at midnight GMT (an ISO 8601 date such as 2027-01-01T00:00:00Z)`);
        rule.expirationDate = d;
      }
      if (exp.ExpiredObjectDeleteMarker !== undefined) {
        if (exp.ExpiredObjectDeleteMarker !== 'true' && exp.ExpiredObjectDeleteMarker !== 'false') throw malformed(`rule ${i + 1}: ExpiredObjectDeleteMarker is true or false`);
        if (rule.tags || gt !== undefined || lt !== undefined) throw bad(`rule ${i + 1}: ExpiredObjectDeleteMarker cannot be specified with tag or object size filters`);
        if (exp.ExpiredObjectDeleteMarker === 'true') rule.expiredObjectDeleteMarker = true;
      }
    }
    const n = days((r.NoncurrentVersionExpiration as Xml | undefined)?.NoncurrentDays, 'NoncurrentDays');
    if (n !== undefined) rule.noncurrentDays = n;
    const a = days((r.AbortIncompleteMultipartUpload as Xml | undefined)?.DaysAfterInitiation, 'DaysAfterInitiation');
    if (a !== undefined) {
      if (rule.tags || gt !== undefined || lt !== undefined) throw bad(`rule ${i + 1}: AbortIncompleteMultipartUpload cannot be specified with tag or object size filters`);
      rule.abortIncompleteDays = a;
    }
    if (rule.expirationDays === undefined && rule.expirationDate === undefined && !rule.expiredObjectDeleteMarker && n === undefined && a === undefined) {
      throw malformed(`rule ${i + 1} needs an action (Expiration, NoncurrentVersionExpiration or AbortIncompleteMultipartUpload)`);
    }
    return rule;
  });
}

/** The rules as GetBucketLifecycleConfiguration returns them. */
export function lifecycleDocument(rules: LifecycleRule[]): Record<string, unknown>[] {
  return rules.map((r) => {
    const tags = Object.entries(r.tags ?? {}).map(([Key, Value]) => ({ Key, Value }));
    const conditions = (r.prefix ? 1 : 0) + tags.length + (r.sizeGreaterThan !== undefined ? 1 : 0) + (r.sizeLessThan !== undefined ? 1 : 0);
    const sizes = { ...(r.sizeGreaterThan !== undefined ? { ObjectSizeGreaterThan: r.sizeGreaterThan } : {}), ...(r.sizeLessThan !== undefined ? { ObjectSizeLessThan: r.sizeLessThan } : {}) };
    const Filter = conditions > 1 ? { And: { ...(r.prefix ? { Prefix: r.prefix } : {}), ...(tags.length ? { Tag: tags } : {}), ...sizes } } : tags.length ? { Tag: tags[0] } : conditions === 1 && !r.prefix ? sizes : { Prefix: r.prefix };
    const Expiration = r.expirationDays !== undefined ? { Days: r.expirationDays } : r.expirationDate !== undefined ? { Date: new Date(r.expirationDate).toISOString() } : r.expiredObjectDeleteMarker ? { ExpiredObjectDeleteMarker: true } : undefined;
    return {
      ID: r.id, Filter, Status: r.status,
      ...(Expiration ? { Expiration } : {}),
      ...(r.noncurrentDays !== undefined ? { NoncurrentVersionExpiration: { NoncurrentDays: r.noncurrentDays } } : {}),
      ...(r.abortIncompleteDays !== undefined ? { AbortIncompleteMultipartUpload: { DaysAfterInitiation: r.abortIncompleteDays } } : {}),
    };
  });
}

/** Whether an object version falls under the rule's filter (its prefix, tags and size). */
export function ruleSelects(rule: LifecycleRule, o: { key: string; size: number; tags_json: string | null }): boolean {
  if (!o.key.startsWith(rule.prefix)) return false;
  if (rule.sizeGreaterThan !== undefined && !(o.size > rule.sizeGreaterThan)) return false;
  if (rule.sizeLessThan !== undefined && !(o.size < rule.sizeLessThan)) return false;
  if (rule.tags) {
    const have = o.tags_json ? (JSON.parse(o.tags_json) as Record<string, string>) : {};
    for (const [k, v] of Object.entries(rule.tags)) if (have[k] !== v) return false;
  }
  return true;
}
