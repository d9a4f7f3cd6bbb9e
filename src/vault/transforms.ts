/**
 * How a value leaves the vault when the caller may not see it in the clear: masked by its kind of
 * personal data, partially shown, redacted, replaced by a keyed hash, or generalized to a coarser
 * value (an IP to its network, a date to its year, a city to its province).
 */
import { createHmac } from 'node:crypto';
import ipaddr from 'ipaddr.js';
import { getCountries, getCountryCallingCode } from 'libphonenumber-js/max';
import type { Property } from './schema.js';

export type Value = string | number | boolean;

const stars = (n: number) => '*'.repeat(Math.max(1, n));
const CALLING_CODES = new Set(getCountries().map((c) => getCountryCallingCode(c) as string));

/** Characters a mask hides at least (fewer only in values shorter than five). */
const MIN_HIDDEN = 4;

/**
 * Keeps the first `head` and last `tail` characters (by code point), stars in between; at least
 * MIN_HIDDEN characters are starred, giving up the head first, so a short value (an 8-digit phone
 * number, a 7-character id) is not shown all but one character.
 */
function keepEnds(s: string, head: number, tail: number): string {
  // Most values have no character outside the BMP: their code units are their code points.
  const cp = SURROGATE.test(s) ? [...s] : s;
  if (cp.length <= 1) return '*';
  const hidden = Math.min(MIN_HIDDEN, cp.length - 1);
  let h = head;
  let t = tail;
  while (cp.length - h - t < hidden) {
    if (h > 0) h--;
    else t--;
  }
  if (typeof cp === 'string') return cp.slice(0, h) + stars(cp.length - h - t) + cp.slice(cp.length - t);
  return cp.slice(0, h).join('') + stars(cp.length - h - t) + cp.slice(cp.length - t).join('');
}

const SURROGATE = /[\uD800-\uDFFF]/;
/** A canonical IPv4 address (as canonicalValue stores it): four decimal bytes, no leading zeros. */
const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/;

/** The first character (code point) of a string, or '' for an empty one. */
function firstChar(s: string): string {
  return s ? String.fromCodePoint(s.codePointAt(0)!) : '';
}

/** Characters (code points) in a string. */
function charCount(s: string): number {
  return SURROGATE.test(s) ? [...s].length : s.length;
}

export function mask(p: Property, v: Value): Value {
  if (typeof v !== 'string') return '*';
  switch (p.pii_type) {
    case 'email': {
      const at = v.lastIndexOf('@');
      return `${firstChar(v.slice(0, at))}***@${v.slice(at + 1)}`;
    }
    case 'phone_number': {
      // Stored in E.164; calling codes are prefix-free, so the first 1–3 digits that are one split it.
      const digits = v.startsWith('+') ? v.slice(1) : '';
      let cc: string | undefined;
      for (let n = 1; n <= 3 && cc === undefined; n++) if (CALLING_CODES.has(digits.slice(0, n))) cc = digits.slice(0, n);
      if (!cc) return keepEnds(v, 3, 4);
      const national = digits.slice(cc.length);
      return `+${cc} ${keepEnds(national, Math.max(0, Math.min(3, national.length - 4)), 4)}`;
    }
    case 'ip_address': {
      const m = IPV4.exec(v);
      if (m) return `${m[1]}.${m[2]}.*.*`;
      const a = ipaddr.parse(v);
      if (a.kind() === 'ipv4') return `${a.toByteArray().slice(0, 2).join('.')}.*.*`;
      return `${(a as ipaddr.IPv6).toNormalizedString().split(':').slice(0, 3).join(':')}:*:*:*:*:*`;
    }
    case 'person_name':
      return v.replace(/\S+/g, (w) => firstChar(w) + stars(charCount(w) - 1));
    case 'national_id':
      return keepEnds(v, v.length === 18 ? 6 : 2, 4);
    case 'bank_card':
      return `${stars(v.length - 4)}${v.slice(-4)}`;
    case 'province_city': {
      const [province, city] = v.split('/');
      return city === undefined ? province! : `${province}/${stars(charCount(city))}`;
    }
    case 'date_of_birth':
      return '****-**-**';
    case 'postal_address':
    case 'free_text':
    case 'gender':
      return '***';
    case 'device_id':
      return keepEnds(v, 0, 4);
    default:
      return p.data_type === 'date' ? '****-**-**' : partial(v);
  }
}

/**
 * Whether `mask` hides the whole value of this property (a date of birth, an address, free text, a
 * gender, a number or a boolean): then a mask shows no more than a redaction.
 */
export function maskHidesAll(p: Property): boolean {
  if (p.data_type !== 'string') return true;
  return p.pii_type === 'date_of_birth' || p.pii_type === 'postal_address' || p.pii_type === 'free_text' || p.pii_type === 'gender';
}

/** A generic partial view: a quarter of the characters at each end (at most four), the rest starred. */
export function partial(v: Value): Value {
  if (typeof v !== 'string') return '*';
  const n = charCount(v);
  const keep = Math.min(4, Math.floor(n / 4));
  return keepEnds(v, keep, keep);
}

export const REDACTED = '[REDACTED]';

/** A keyed hash: equal values give equal hashes within one collection, nothing else is learnt. */
export function keyedHash(key: Buffer, p: Property, canonical: string): string {
  return `hmac:${createHmac('sha256', key).update(`${p.name}\u0000${canonical}`).digest('hex').slice(0, 32)}`;
}

export function generalize(p: Property, v: Value): Value {
  if (typeof v !== 'string') return v;
  if (p.pii_type === 'ip_address') {
    const a = ipaddr.parse(v);
    const bits = a.kind() === 'ipv4' ? 24 : 48;
    return `${networkOf(a, bits)}/${bits}`;
  }
  if (p.pii_type === 'province_city') return v.split('/')[0]!;
  if (p.data_type === 'date') return v.slice(0, 4);
  return v;
}

function networkOf(a: ipaddr.IPv4 | ipaddr.IPv6, bits: number): string {
  const bytes = a.toByteArray();
  const out = bytes.map((b, i) => {
    const from = i * 8;
    if (from >= bits) return 0;
    if (from + 8 <= bits) return b;
    return b & (0xff << (8 - (bits - from))) & 0xff;
  });
  return ipaddr.fromByteArray(out).toString();
}
