/**
 * A collection's declared schema: its properties, what kind of personal data each holds, why it is
 * collected, how long it is kept. Record fields are validated against it with Ajv (one compiled
 * validator per schema version), formats checked with libphonenumber-js, validator and ipaddr.js.
 */
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import ipaddr from 'ipaddr.js';
import { parsePhoneNumberFromString } from 'libphonenumber-js/max';
import { parse as parseDuration } from 'tinyduration';
import validator from 'validator';
import { Type, type Static } from '@sinclair/typebox';

export const PII_TYPES = [
  'email', 'phone_number', 'ip_address', 'province_city', 'person_name', 'national_id', 'bank_card', 'postal_address',
  'date_of_birth', 'gender', 'device_id', 'free_text', 'none',
] as const;
export type PiiType = (typeof PII_TYPES)[number];
export const DATA_TYPES = ['string', 'integer', 'number', 'boolean', 'date'] as const;
export type DataType = (typeof DATA_TYPES)[number];
export const TRANSFORMS = ['mask', 'partial', 'redact', 'hash', 'generalize', 'tokenize', 'plain'] as const;
export type Transform = (typeof TRANSFORMS)[number];
/** Events the standard deletion rules name; a collection may use others of the same shape. */
export const STANDARD_EVENTS = ['delivered', 'logs_cleared', 'account_deregistered', 'consent_withdrawn', 'subject_request'] as const;

const NAME = '^[a-z][a-z0-9_]{0,62}$';
const DURATION = '^P(?!$)(\\d+Y)?(\\d+M)?(\\d+W)?(\\d+D)?(T(?=\\d)(\\d+H)?(\\d+M)?(\\d+S)?)?$';
const S = { additionalProperties: false } as const;

export const DeletionRuleSchema = Type.Object({
  /** ISO 8601 duration after collection (or after the event, with on_event). */
  after: Type.Optional(Type.String({ pattern: DURATION, maxLength: 32 })),
  on_event: Type.Optional(Type.String({ pattern: NAME })),
  /** Why the value is kept that long (a legal obligation, a contract): shown in the inventory. */
  basis: Type.Optional(Type.String({ maxLength: 255 })),
}, S);

export const PropertySchema = Type.Object({
  name: Type.String({ pattern: NAME }),
  description: Type.Optional(Type.String({ maxLength: 255 })),
  data_type: Type.Optional(Type.Union(DATA_TYPES.map((d) => Type.Literal(d)))),
  pii_type: Type.Union(PII_TYPES.map((d) => Type.Literal(d))),
  mandatory: Type.Optional(Type.Boolean()),
  modifiable: Type.Optional(Type.Boolean()),
  purposes: Type.Array(Type.String({ pattern: NAME }), { minItems: 1, maxItems: 32, uniqueItems: true }),
  /** How the value is collected, in words a privacy notice can use. */
  collection_method: Type.String({ minLength: 1, maxLength: 255 }),
  deletion: DeletionRuleSchema,
  searchable: Type.Optional(Type.Boolean()),
  default_transform: Type.Optional(Type.Union(TRANSFORMS.filter((t) => t !== 'plain').map((d) => Type.Literal(d)))),
  /** Tokens for equal values are equal (so other systems can join on them). */
  stable_tokens: Type.Optional(Type.Boolean()),
  /** Largest accepted value, in characters. */
  max_length: Type.Optional(Type.Integer({ minimum: 1, maximum: 65536 })),
}, S);
export type PropertyInput = Static<typeof PropertySchema>;

export const CollectionSchemaInput = Type.Object({
  description: Type.Optional(Type.String({ maxLength: 255 })),
  /** Records of subjects younger than this (by their mandatory date of birth) are refused. */
  min_age: Type.Optional(Type.Integer({ minimum: 1, maximum: 25 })),
  properties: Type.Array(PropertySchema, { minItems: 1, maxItems: 100 }),
}, S);

/** A property as stored, every option resolved. */
export interface Property {
  name: string;
  description: string;
  data_type: DataType;
  pii_type: PiiType;
  mandatory: boolean;
  modifiable: boolean;
  purposes: string[];
  collection_method: string;
  deletion: { after?: string; on_event?: string; basis?: string };
  searchable: boolean;
  default_transform: Exclude<Transform, 'plain'>;
  stable_tokens: boolean;
  max_length: number;
}

export interface CollectionSchema {
  description: string;
  properties: Property[];
  min_age?: number;
}

/** The data type a personal-data type implies when none is given. */
function impliedType(pii: PiiType): DataType {
  return pii === 'date_of_birth' ? 'date' : 'string';
}
function defaultMax(pii: PiiType): number {
  return pii === 'free_text' ? 4096 : pii === 'postal_address' ? 512 : 256;
}

export class SchemaError extends Error {}

/** Resolves defaults and checks what the JSON schema cannot: unique names, consistent options. */
export function normalizeSchema(input: Static<typeof CollectionSchemaInput>): CollectionSchema {
  const seen = new Set<string>();
  const properties = input.properties.map((p): Property => {
    if (seen.has(p.name)) throw new SchemaError(`property ${p.name} is declared twice`);
    // Values are kept in plain objects keyed by property name: a name every object already has
    // (constructor, toString, __proto__, ...) would read as present when it is not.
    if (p.name in Object.prototype) throw new SchemaError(`property name ${p.name} is reserved`);
    seen.add(p.name);
    const dataType = p.data_type ?? impliedType(p.pii_type);
    if (p.pii_type !== 'none' && p.pii_type !== 'free_text' && dataType !== impliedType(p.pii_type) && !(p.pii_type === 'gender' && dataType === 'string')) {
      throw new SchemaError(`property ${p.name}: personal-data type ${p.pii_type} is stored as ${impliedType(p.pii_type)}, not ${dataType}`);
    }
    if (!p.deletion.after && !p.deletion.on_event) throw new SchemaError(`property ${p.name}: the deletion rule needs "after" (a duration), "on_event", or both`);
    if (p.deletion.after) {
      const ms = durationMs(p.deletion.after, 0);
      // Beyond a century (or beyond what a date can hold) a deletion rule says "never": refuse it.
      if (!Number.isFinite(ms) || ms > MAX_RETENTION_MS) throw new SchemaError(`property ${p.name}: a deletion duration is at most 100 years`);
      if (ms <= 0 && !p.deletion.on_event) throw new SchemaError(`property ${p.name}: a deletion duration alone must be longer than zero`);
    }
    const transform = p.default_transform ?? 'mask';
    if (transform === 'generalize' && !canGeneralize(p.pii_type, dataType)) throw new SchemaError(`property ${p.name}: ${p.pii_type} values cannot be generalized`);
    if (p.searchable && (dataType === 'boolean' || p.pii_type === 'free_text')) throw new SchemaError(`property ${p.name}: ${p.pii_type === 'free_text' ? 'free text' : 'a boolean'} cannot be searchable`);
    return {
      name: p.name, description: p.description ?? '', data_type: dataType, pii_type: p.pii_type, mandatory: p.mandatory ?? false,
      modifiable: p.modifiable ?? true, purposes: p.purposes, collection_method: p.collection_method,
      deletion: { ...(p.deletion.after ? { after: p.deletion.after } : {}), ...(p.deletion.on_event ? { on_event: p.deletion.on_event } : {}), ...(p.deletion.basis ? { basis: p.deletion.basis } : {}) },
      searchable: p.searchable ?? false, default_transform: transform, stable_tokens: p.stable_tokens ?? false,
      max_length: Math.min(p.max_length ?? defaultMax(p.pii_type), 65536),
    };
  });
  if (input.min_age !== undefined) {
    const dob = properties.filter((p) => p.pii_type === 'date_of_birth');
    if (dob.length !== 1 || !dob[0]!.mandatory) throw new SchemaError('a minimum age needs exactly one date_of_birth property, and it must be mandatory');
  }
  return { description: input.description ?? '', properties, ...(input.min_age !== undefined ? { min_age: input.min_age } : {}) };
}

export function canGeneralize(pii: PiiType, dataType: DataType): boolean {
  return pii === 'ip_address' || pii === 'province_city' || dataType === 'date';
}

const MAX_RETENTION_MS = 100 * 366 * 86_400_000;

/** Milliseconds an ISO 8601 duration adds to `from` (calendar-aware for years and months). */
export function durationMs(iso: string, from: number): number {
  // A write asks the same question once per property (same rule, same moment): keep the last answer.
  if (iso === lastDuration.iso && from === lastDuration.from) return lastDuration.ms;
  const ms = computeDurationMs(iso, from);
  lastDuration = { iso, from, ms };
  return ms;
}
let lastDuration = { iso: '', from: 0, ms: 0 };

function computeDurationMs(iso: string, from: number): number {
  const d = parseDuration(iso);
  const t = new Date(from);
  // A month after 31 January is the last day of February, not 3 March: the day is kept where the
  // target month has it, else clamped to the month's last day (legal deadlines count this way).
  const year = t.getUTCFullYear() + (d.years ?? 0);
  const month = t.getUTCMonth() + (d.months ?? 0);
  const lastDay = new Date(Date.UTC(year, month + 1, 0)).getUTCDate();
  t.setUTCFullYear(year, month, Math.min(t.getUTCDate(), lastDay));
  const ms = ((d.weeks ?? 0) * 7 + (d.days ?? 0)) * 86_400_000 + (d.hours ?? 0) * 3_600_000 + (d.minutes ?? 0) * 60_000 + (d.seconds ?? 0) * 1000;
  return t.getTime() + ms - from;
}

/** A deletion rule in the words of a privacy notice. */
export function describeDeletion(rule: Property['deletion']): string {
  const span = rule.after ? humanDuration(rule.after) : '';
  const event = rule.on_event ? rule.on_event.replace(/_/g, ' ') : '';
  const text = rule.on_event ? (span ? `${span} after ${event}` : `when ${event}`) : `${span} after collection`;
  return rule.basis ? `${text} (${rule.basis})` : text;
}
function humanDuration(iso: string): string {
  const d = parseDuration(iso);
  const parts: string[] = [];
  const add = (n: number | undefined, unit: string) => {
    if (n) parts.push(`${n} ${unit}${n === 1 ? '' : 's'}`);
  };
  add(d.years, 'year');
  add(d.months, 'month');
  add(d.weeks, 'week');
  add(d.days, 'day');
  add(d.hours, 'hour');
  add(d.minutes, 'minute');
  add(d.seconds, 'second');
  return parts.length ? parts.join(' ') : 'immediately';
}

// ------------------------------------------------------------------ record validation

const ajv = new Ajv({ allErrors: false, strict: true });

/**
 * A phone number in E.164 if it is a valid one, else null. The last answer is kept: a write validates
 * a number and then stores its canonical form, and parsing it twice cost ~10 µs a write.
 */
let lastPhone: { input: string; e164: string | null } = { input: '', e164: null };
function e164(v: string): string | null {
  if (lastPhone.input === v) return lastPhone.e164;
  const n = parsePhoneNumberFromString(v);
  lastPhone = { input: v, e164: n?.isValid() ? n.number : null };
  return lastPhone.e164;
}
/**
 * The canonical form, taking the validation's answer once and forgetting it: a written number is not
 * kept past its write, and no later request (another tenant's) answers faster for sending it too.
 */
function e164Once(v: string): string | null {
  const n = e164(v);
  lastPhone = { input: '', e164: null };
  return n;
}
const ID_CARD_WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const formats: Record<string, (v: string) => boolean> = {
  'custos-email': (v) => validator.isEmail(v, { allow_display_name: false, require_tld: true }),
  'custos-phone': (v) => e164(v) !== null,
  'custos-ip': (v) => ipaddr.isValid(v) && (ipaddr.IPv4.isValidFourPartDecimal(v) || v.includes(':')),
  'custos-date': (v) => /^\d{4}-\d{2}-\d{2}$/.test(v) && validator.isISO8601(v, { strict: true, strictSeparator: true }),
  'custos-bank-card': (v) => /^[0-9 -]{12,23}$/.test(v) && validator.isLuhnNumber(v.replace(/[ -]/g, '')),
  // Mainland China resident identity card (GB 11643): 17 digits and an ISO 7064 MOD 11-2 check character.
  // Other countries' ids are accepted as 5–32 characters of letters, digits and dashes.
  'custos-national-id': (v) => {
    if (/^\d{17}[\dXx]$/.test(v)) {
      const sum = ID_CARD_WEIGHTS.reduce((acc, w, i) => acc + w * Number(v[i]), 0);
      return '10X98765432'[sum % 11] === v[17]!.toUpperCase();
    }
    return /^[A-Za-z0-9-]{5,32}$/.test(v) && !/^\d{17}.$/.test(v);
  },
  // "Province/City" (or "Province" alone).
  'custos-province-city': (v) => /^[^/\s][^/]{0,62}(\/[^/\s][^/]{0,62})?$/.test(v),
};
for (const [name, check] of Object.entries(formats)) ajv.addFormat(name, { type: 'string', validate: check });

const FORMAT_OF: Partial<Record<PiiType, string>> = {
  email: 'custos-email', phone_number: 'custos-phone', ip_address: 'custos-ip', bank_card: 'custos-bank-card',
  national_id: 'custos-national-id', province_city: 'custos-province-city', date_of_birth: 'custos-date',
};

function jsonSchemaOf(p: Property, forUpdate: boolean): object {
  let s: Record<string, unknown>;
  switch (p.data_type) {
    case 'integer':
      s = { type: 'integer' };
      break;
    case 'number':
      s = { type: 'number' };
      break;
    case 'boolean':
      s = { type: 'boolean' };
      break;
    case 'date':
      s = { type: 'string', format: 'custos-date' };
      break;
    default:
      s = { type: 'string', minLength: 1, maxLength: p.max_length, ...(FORMAT_OF[p.pii_type] ? { format: FORMAT_OF[p.pii_type] } : {}) };
  }
  // An update may clear an optional value with null.
  return forUpdate && !p.mandatory ? { anyOf: [s, { type: 'null' }] } : s;
}

export interface RecordValidator {
  (fields: unknown): void;
}

/** One compiled validator per schema and mode; errors name the property and the rule, never the value. */
export function compileRecordValidator(schema: CollectionSchema, mode: 'create' | 'update'): RecordValidator {
  const properties = Object.fromEntries(schema.properties.map((p) => [p.name, jsonSchemaOf(p, mode === 'update')]));
  const required = mode === 'create' ? schema.properties.filter((p) => p.mandatory).map((p) => p.name) : [];
  const validate: ValidateFunction = ajv.compile({ type: 'object', properties, required, additionalProperties: false, ...(mode === 'update' ? { minProperties: 1 } : {}) });
  return (fields) => {
    if (!validate(fields)) throw new SchemaError(describeError(validate.errors![0]!, schema));
  };
}

function describeError(e: ErrorObject, schema: CollectionSchema): string {
  const prop = e.instancePath.replace(/^\//, '').split('/')[0] ?? '';
  switch (e.keyword) {
    case 'required':
      return `property ${(e.params as { missingProperty: string }).missingProperty} is mandatory`;
    case 'additionalProperties':
      return `property ${(e.params as { additionalProperty: string }).additionalProperty} is not in the collection's schema`;
    case 'minProperties':
      return 'name at least one property to change';
    case 'format': {
      const p = schema.properties.find((x) => x.name === prop);
      return `property ${prop}: not a valid ${(p?.pii_type ?? 'value').replace(/_/g, ' ')}`;
    }
    case 'maxLength':
      return `property ${prop}: longer than ${(e.params as { limit: number }).limit} characters`;
    case 'minLength':
      return `property ${prop}: must not be empty`;
    case 'type':
      return `property ${prop}: must be ${(e.params as { type: string }).type}`;
    case 'anyOf': {
      const p = schema.properties.find((x) => x.name === prop);
      return `property ${prop}: must be ${p ? (p.data_type === 'date' ? 'a date (YYYY-MM-DD)' : `a valid ${p.pii_type === 'none' ? p.data_type : p.pii_type.replace(/_/g, ' ')}`) : 'valid'} or null`;
    }
    default:
      return `property ${prop || '(record)'}: invalid (${e.keyword})`;
  }
}

/** The form a value is stored and indexed in: e-mail domains lower-cased, phone numbers in E.164, IPs canonical. */
export function canonicalValue(p: Property, v: string | number | boolean): string | number | boolean {
  if (typeof v !== 'string') return v;
  switch (p.pii_type) {
    case 'email': {
      const at = v.lastIndexOf('@');
      return `${v.slice(0, at)}@${v.slice(at + 1).toLowerCase()}`.trim();
    }
    case 'phone_number':
      // Values reach here validated; one stored before a metadata update made it invalid keeps its form.
      return e164Once(v) ?? parsePhoneNumberFromString(v)?.number ?? v;
    case 'ip_address':
      return ipaddr.parse(v).toString();
    case 'bank_card':
      return v.replace(/[ -]/g, '');
    case 'national_id':
      return v.toUpperCase();
    default:
      return v.normalize('NFC');
  }
}

/**
 * What a blind index hashes: the canonical value, case-folded where case carries no meaning.
 * `canonical`: `v` is canonicalValue(p, …) already (parsing a phone number again cost 15 µs a write).
 */
export function indexForm(p: Property, v: string | number | boolean, canonical = false): string {
  const c = canonical ? v : canonicalValue(p, v);
  if (typeof c !== 'string') return JSON.stringify(c);
  return p.pii_type === 'email' ? c.toLowerCase() : c;
}

/** Whole years between a date of birth (YYYY-MM-DD) and a moment. */
export function ageAt(dateOfBirth: string, at: number): number {
  const [y, m, d] = dateOfBirth.split('-').map(Number) as [number, number, number];
  const now = new Date(at);
  let age = now.getUTCFullYear() - y;
  if (now.getUTCMonth() + 1 < m || (now.getUTCMonth() + 1 === m && now.getUTCDate() < d)) age--;
  return age;
}
