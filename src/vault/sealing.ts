/**
 * How a record's values are sealed (record format 2).
 *
 * Each record has a data key of its own, derived from a key of its collection's secret (which KMS
 * wraps under the collection's key) and a random salt kept in the record's data_key column:
 * - `v3.` and a 96-bit salt (records written now): XAES-256-GCM's key derivation (src/crypto/xaes.ts),
 *   the CMAC-AES counter-mode KDF of NIST SP 800-108r1, one AES call per record on a cipher keyed
 *   once per collection;
 * - `v2.` and a 128-bit salt (written before): HMAC-SHA256 of the record's id and salt.
 * Reading a record needs the collection's secret once per node (then cached), not a KMS call per
 * record; deleting the record deletes its salt, and with it any way to its data key. No key seals
 * more than one record's values, so AES-GCM's random IVs never approach their collision bound however
 * many records a collection holds. A group's AAD names its tenant, collection, record and group id,
 * so a blob moved to another record, or a salt copied to one, fails authentication.
 *
 * Values are sealed in groups, one AES-256-GCM blob per group holding a JSON object of the group's
 * values: the values of one write that share a deletion rule, purposes and deletion time. Every
 * deletion treats such values alike (retention by time or event, erasure that keeps what a legal
 * obligation covers: decided by purpose), so deletions drop whole groups, without a key; only a value
 * whose group-mates stay (a rectification, a schema change, a rule that changed since) makes its
 * group be opened and sealed again without it, under a new group id.
 *
 * Format 1 (records written before): the data key wrapped by KMS itself, and each value sealed on its
 * own (`c` in its metadata). Both are read; writes seal new values in format 2 groups.
 */
import { createHmac } from 'node:crypto';
import { DecryptError, openAesGcm, sealAesGcm } from '../crypto/aead.js';
import { randomBytes } from '../crypto/random.js';
import { XAES_SALT_BYTES, type XaesKeyDeriver } from '../crypto/xaes.js';
import type { Property } from './schema.js';
import type { CollectionRow } from './store.js';
import type { Value } from './transforms.js';

/** One stored value: where its ciphertext is, when it was written, when its deletion rule makes it go. */
export interface StoredValue {
  /** Format 1: the value's own ciphertext (base64). */
  c?: string;
  /** Format 2: the id of the group it is sealed in. */
  g?: string;
  /** A searchable value's blind-index digest: its vault_index row is found again by it. */
  x?: string;
  t: number;
  d: number | null;
}

/**
 * A record's sealed groups: id → base64 of iv | tag | ciphertext of a JSON object of values. Stored
 * as a flat JSON array [id, blob, id, blob, ...]: an object keyed by random ids cost JSON.parse four
 * times as much (every id a new property name). Records written before that hold an object.
 */
type Groups = Map<string, string>;

/** What a record row holds of its values: the metadata of each, and the sealed groups. */
export interface Stored {
  values: Record<string, StoredValue>;
  groups: Groups;
}

type Owner = Pick<CollectionRow, 'account_id' | 'id'>;

/** How a format 2 record's data_key column starts when its key is an HMAC of its id and salt (written before v3). */
export const LOCAL_SALT = 'v2.';
/** How it starts when its key is XAES-256-GCM's derived key for its salt (records written now). */
export const XAES_SALT = 'v3.';

export class IntegrityError extends Error {
  override name = 'IntegrityError';
}

/**
 * A key of the collection's secret was dropped (zeroed) while an operation still held it: the KMS key
 * was disabled or scheduled for deletion, or the collection deleted, meanwhile. Nothing may be derived,
 * sealed or indexed with it; the operation fails (409) rather than write under a zero key.
 */
export class KeyDroppedError extends Error {
  override name = 'KeyDroppedError';
  constructor() {
    super('the collection\'s key was dropped during the operation');
  }
}

const ZERO_KEY = Buffer.alloc(32);
/** `key`, unless it was zeroed by the secret's eviction (a 32-byte HKDF output is never all zeros). */
export function liveKey(key: Buffer): Buffer {
  if (key.length === ZERO_KEY.length && key.equals(ZERO_KEY)) throw new KeyDroppedError();
  return key;
}

export function parseStored(valuesJson: string, groupsJson: string | null): Stored {
  return { values: JSON.parse(valuesJson) as Record<string, StoredValue>, groups: parseGroups(groupsJson) };
}

/** A new record's (or a record's emptied) values and groups. */
export function emptyStored(): Stored {
  return { values: {}, groups: new Map() };
}

/** The groups column, read: the array written now, or the object written before. */
export function parseGroups(groupsJson: string | null): Groups {
  const groups: Groups = new Map();
  if (!groupsJson) return groups;
  const parsed = JSON.parse(groupsJson) as unknown;
  if (Array.isArray(parsed)) {
    for (let i = 0; i + 1 < parsed.length; i += 2) groups.set(String(parsed[i]), String(parsed[i + 1]));
  } else {
    for (const [gid, blob] of Object.entries(parsed as Record<string, string>)) groups.set(gid, blob);
  }
  return groups;
}

/** The groups column: null when the record has no format 2 group (all of its values are format 1, or it has none). */
export function groupsJson(groups: Groups): string | null {
  if (!groups.size) return null;
  const flat: string[] = [];
  for (const [gid, blob] of groups) flat.push(gid, blob);
  return JSON.stringify(flat);
}

/** Values that may share a group: deleted by the same rule, at the same time, kept for the same purposes. */
function groupKey(p: Property, d: number | null): string {
  return `${ruleKey(p)}${d}`;
}

/** What a property's values are deleted and kept by: its deletion rule and its purposes. */
export function ruleKey(p: Property): string {
  let k = RULE_KEYS.get(p);
  if (k === undefined) {
    k = JSON.stringify([p.deletion, [...p.purposes].sort()]);
    RULE_KEYS.set(p, k);
  }
  return k;
}
const RULE_KEYS = new WeakMap<Property, string>();

/** Group ids are random, never reused: a group sealed anew has a new id. */
function newGroupId(): string {
  return randomBytes(9).toString('base64url');
}

function groupAad(col: Owner, recordId: string, gid: string): Buffer {
  return Buffer.from(`custos-vault-v2\u0000group\u0000${col.account_id}\u0000${col.id}\u0000${recordId}\u0000${gid}`, 'utf8');
}

/** A format 1 value's AAD: bound to its tenant, collection, record and property. */
export function valueAad(col: Owner, recordId: string, property: string): Buffer {
  return Buffer.from(`custos-vault-v1\u0000${col.account_id}\u0000${col.id}\u0000${recordId}\u0000${property}`, 'utf8');
}

/** Whether a record's data key comes from its collection's secret and a salt (format 2), not from KMS. */
export function derivedLocally(dataKey: string): boolean {
  return dataKey.startsWith(XAES_SALT) || dataKey.startsWith(LOCAL_SALT);
}

/** A new record's data_key column: a random 96-bit salt for XAES-256-GCM's key derivation. */
export function newRecordSalt(): string {
  return XAES_SALT + randomBytes(XAES_SALT_BYTES).toString('base64');
}

/** A `v3.` data_key column: 12 bytes of salt in standard base64 (16 characters, no padding). */
const V3_SALT = /^v3\.[A-Za-z0-9+/]{16}$/;

/** What a format 2 record's key is derived with: the collection's `records` key, and a deriver keyed with it. */
export interface RecordKeys {
  records: Buffer;
  deriver: XaesKeyDeriver;
}

/** The record's data key, from the collection's `records` key and the record's salt (and, for `v2.`, its id). */
export function recordKeyFrom(keys: RecordKeys, col: Owner, recordId: string, dataKey: string): Buffer {
  if (dataKey.startsWith(XAES_SALT)) {
    if (!V3_SALT.test(dataKey)) throw new IntegrityError(`the data key of record ${recordId} is malformed`);
    if (keys.deriver.destroyed) throw new KeyDroppedError();
    return keys.deriver.derive(Buffer.from(dataKey.slice(XAES_SALT.length), 'base64'));
  }
  const salt = dataKey.slice(LOCAL_SALT.length);
  if (!dataKey.startsWith(LOCAL_SALT) || salt.length !== 24) throw new IntegrityError(`the data key of record ${recordId} is malformed`);
  return createHmac('sha256', liveKey(keys.records)).update(`custos-vault-v2\u0000record-key\u0000${col.account_id}\u0000${col.id}\u0000${recordId}\u0000${salt}`).digest();
}

function sealGroup(dek: Buffer, col: Owner, recordId: string, gid: string, values: Record<string, Value>): string {
  return sealAesGcm(dek, Buffer.from(JSON.stringify(values), 'utf8'), groupAad(col, recordId, gid)).toString('base64');
}

function openGroup(dek: Buffer, col: Owner, recordId: string, gid: string, blob: string): Record<string, Value> {
  try {
    return JSON.parse(openAesGcm(dek, Buffer.from(blob, 'base64'), groupAad(col, recordId, gid)).toString('utf8')) as Record<string, Value>;
  } catch (e) {
    if (e instanceof DecryptError) throw new IntegrityError(`a stored value of record ${recordId} failed authentication`);
    throw e;
  }
}

function openValue(dek: Buffer, col: Owner, recordId: string, property: string, blob: string): Value {
  try {
    return JSON.parse(openAesGcm(dek, Buffer.from(blob, 'base64'), valueAad(col, recordId, property)).toString('utf8')) as Value;
  } catch (e) {
    if (e instanceof DecryptError) throw new IntegrityError(`a stored value of record ${recordId} failed authentication`);
    throw e;
  }
}

/** One value to seal: its property, canonical value, times, and blind-index digest if searchable. */
export interface Sealable {
  p: Property;
  v: Value;
  t: number;
  d: number | null;
  x?: string | undefined;
}

/** Seals values into `stored`, in new groups (one per group key). */
export function sealInto(stored: Stored, dek: Buffer, col: Owner, recordId: string, entries: Sealable[]): void {
  const byKey = new Map<string, Sealable[]>();
  for (const e of entries) {
    const k = groupKey(e.p, e.d);
    const list = byKey.get(k);
    if (list) list.push(e);
    else byKey.set(k, [e]);
  }
  for (const list of byKey.values()) {
    const gid = newGroupId();
    const obj: Record<string, Value> = {};
    for (const e of list) obj[e.p.name] = e.v;
    stored.groups.set(gid, sealGroup(dek, col, recordId, gid, obj));
    for (const e of list) stored.values[e.p.name] = e.x === undefined ? { g: gid, t: e.t, d: e.d } : { g: gid, x: e.x, t: e.t, d: e.d };
  }
}

/**
 * Removes values from `stored`. A format 1 value and a group left empty go without a key; a group
 * some of whose values stay is opened and sealed again, under a new id, with the rest (`dek` is
 * asked for only then).
 */
export async function removeFrom(stored: Stored, names: Iterable<string>, col: Owner, recordId: string, dek: () => Promise<Buffer>): Promise<void> {
  const touched = new Set<string>();
  for (const n of names) {
    const v = stored.values[n];
    if (!v) continue;
    delete stored.values[n];
    if (v.g !== undefined) touched.add(v.g);
  }
  if (!touched.size) return;
  const members = new Map<string, string[]>();
  for (const [n, v] of Object.entries(stored.values)) {
    if (v.g !== undefined && touched.has(v.g)) members.set(v.g, [...(members.get(v.g) ?? []), n]);
  }
  let key: Buffer | null = null;
  try {
    for (const gid of touched) {
      const blob = stored.groups.get(gid);
      stored.groups.delete(gid);
      const stay = members.get(gid);
      if (!stay || blob === undefined) continue;
      key ??= await dek();
      const all = openGroup(key, col, recordId, gid, blob);
      const kept: Record<string, Value> = {};
      for (const n of stay) {
        if (!Object.hasOwn(all, n)) throw new IntegrityError(`a stored value of record ${recordId} is missing from its group`);
        kept[n] = all[n]!;
      }
      const next = newGroupId();
      stored.groups.set(next, sealGroup(key, col, recordId, next, kept));
      for (const n of stay) stored.values[n]!.g = next;
    }
  } finally {
    key?.fill(0);
  }
}

/**
 * Decrypts the named values of a record written in format 2, from its groups alone: every value such
 * a record holds is in exactly one of its groups (a value removed from a group is removed by sealing
 * the group again without it), so its metadata need not be read.
 */
export function openGroups(groupsJson: string | null, dek: Buffer, col: Owner, recordId: string, names: Iterable<string>): Record<string, Value> {
  const out: Record<string, Value> = {};
  for (const [gid, blob] of parseGroups(groupsJson)) {
    const values = openGroup(dek, col, recordId, gid, blob);
    for (const n of names) if (Object.hasOwn(values, n)) out[n] = values[n]!;
  }
  return out;
}

/** Of `names`, those removeFrom can remove without a key: format 1 values, and whole groups. */
export function keylessRemovable(stored: Stored, names: Iterable<string>): string[] {
  const removing = new Set(names);
  const partial = new Set<string>();
  for (const [n, v] of Object.entries(stored.values)) if (v.g !== undefined && !removing.has(n)) partial.add(v.g);
  return [...removing].filter((n) => {
    const v = Object.hasOwn(stored.values, n) ? stored.values[n] : undefined;
    return v !== undefined && (v.g === undefined || !partial.has(v.g));
  });
}

/** Decrypts the named values a record holds (names it has no value for are left out). */
export function openValues(stored: Stored, dek: Buffer, col: Owner, recordId: string, names: Iterable<string>): Record<string, Value> {
  const out: Record<string, Value> = {};
  let opened: Map<string, Record<string, Value>> | undefined;
  for (const n of names) {
    if (!Object.hasOwn(stored.values, n)) continue;
    const v = stored.values[n]!;
    if (v.g !== undefined) {
      opened ??= new Map();
      let group = opened.get(v.g);
      if (!group) {
        const blob = stored.groups.get(v.g);
        if (blob === undefined) throw new IntegrityError(`a stored value of record ${recordId} has lost its group`);
        group = openGroup(dek, col, recordId, v.g, blob);
        opened.set(v.g, group);
      }
      if (!Object.hasOwn(group, n)) throw new IntegrityError(`a stored value of record ${recordId} is missing from its group`);
      out[n] = group[n]!;
    } else if (v.c !== undefined) {
      out[n] = openValue(dek, col, recordId, n, v.c);
    }
  }
  return out;
}
