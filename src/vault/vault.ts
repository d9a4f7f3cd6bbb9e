/**
 * The personal-data vault. Applications keep their users' personal data here instead of in plain
 * columns: each record's values are encrypted with the record's own data key (derived from the
 * collection's secret, which KMS wraps under the collection's key; sealing.ts) before they reach the
 * database; exact-match search goes through keyed blind
 * indexes; only whitelisted principals reach the data, for a purpose each property is collected for,
 * and see values masked unless they may unmask them; values go when their deletion rule fires.
 */
import { createHmac, hkdfSync, randomUUID } from 'node:crypto';
import { randomBytes } from '../crypto/random.js';
import { XaesKeyDeriver } from '../crypto/xaes.js';
import { CompiledQuery, sql, type AliasedRawBuilder, type RawBuilder } from 'kysely';
import { ServiceError } from '../errors.js';
import type { KeyScope, KmsService } from '../kms/kms.js';
import type { KeyRow } from '../kms/store.js';
import { isUniqueViolation, multiRowInsertSql, preparedQuery, usesNumberedParams } from '../store/db.js';
import {
  ageAt, canonicalValue, compileRecordValidator, describeDeletion, durationMs, indexForm, normalizeSchema, SchemaError,
  type CollectionSchema, type Property, type RecordValidator, type Transform, CollectionSchemaInput,
} from './schema.js';
import type { Static } from '@sinclair/typebox';
import type { AccessRow, CollectionRow, RecordRow, VaultDb } from './store.js';
import {
  derivedLocally, emptyStored, groupsJson, IntegrityError, KeyDroppedError, liveKey, LOCAL_SALT, keylessRemovable, XAES_SALT, type RecordKeys, newRecordSalt, openGroups, openValues, parseStored, recordKeyFrom, removeFrom, ruleKey, sealInto,
  type Sealable, type Stored, type StoredValue,
} from './sealing.js';
import { generalize, keyedHash, mask, maskHidesAll, partial, REDACTED, type Value } from './transforms.js';

export class VaultError extends ServiceError {
  constructor(status: number, code: string, message: string) {
    super('VAULT', status, code, message);
  }
  static notFound(what: string): VaultError {
    return new VaultError(404, 'NotFound', `${what} not found`);
  }
}

export const PERMISSIONS = ['read', 'write', 'delete', 'search', 'detokenize'] as const;
export type Permission = (typeof PERMISSIONS)[number];
export type PrincipalType = 'user' | 'group' | 'agency';

export interface AccessEntry {
  type: PrincipalType;
  id: string;
  permissions: Permission[];
  /** Properties this principal may read in the clear; `*` for all. */
  unmask: string[];
}

/** Who is asking, as the whitelist sees it. */
export interface Caller {
  accountId: string;
  userId: string;
  groupIds: string[];
  /** The agency of this account the caller acts through, if any. */
  agencyId: string | null;
}

/** The union of the whitelist entries that name the caller. */
export interface EffectiveAccess {
  permissions: Set<Permission>;
  unmask: Set<string>;
}

export interface Collection {
  row: CollectionRow;
  schema: CollectionSchema;
}

export interface ReadOptions {
  reason: string;
  /** Properties to return (default: every property collected for the reason). */
  props?: string[] | undefined;
  /** Per-property transformation; `plain` needs the unmask permission for that property. */
  transforms?: Record<string, Transform> | undefined;
}

export interface RecordView {
  id: string;
  subject_id: string;
  region: string;
  created_at: number;
  updated_at: number;
  fields: Record<string, Value | null>;
  /** The transformation each returned field went through. */
  transforms: Record<string, Transform>;
}

export interface InventoryRow {
  collection: string;
  data: string;
  description: string;
  personal_data_type: string;
  how_collected: string;
  modifiable: boolean;
  mandatory: boolean;
  when_deleted: string;
  purposes: string[];
  region: string;
  kms_key_id: string;
  kms_key_alias: string | null;
}

/** The tenant's default vault key in a project, made on first use. */
export const DEFAULT_KEY_ALIAS = 'vault/default';
const COLLECTION_NAME = /^[a-z][a-z0-9_-]{1,62}$/;
const SUBJECT_ID = /^[A-Za-z0-9._:@-]{1,128}$/;
const SECRET_TTL_MS = 5 * 60_000;
/** A collection's unwrapped secret, the keys derived from it, and until when it is kept unused. */
interface HeldSecret {
  secret: Buffer;
  keys: Map<string, Buffer>;
  recordKeys: RecordKeys;
  until: number;
  /** Set when dropSecret zeroed it: an operation that still holds it must not use it. */
  dropped: boolean;
}
const MAX_PAGE = 100;
const LEASE = 'vault.retention.lease';

export interface VaultOptions {
  now?: () => number;
  /** Resolves once committed changes survive a power loss (Store.durable); see DURABLE_METHODS. */
  durable?: () => Promise<void>;
}

/**
 * Changes acknowledged only once they survive a power loss: deletions and erasures (personal data a
 * data subject was told is gone must not come back), rectifications, schema changes that drop values,
 * and the whitelist. New records are not among them (docs/deploy.md).
 */
/** The purpose a collection copy is checked under: declared by no one, so only a restriction refuses it. */
const COPY_PURPOSE = 'custos:collection-copy';

const DURABLE_METHODS = [
  'deleteCollection', 'updateSchema', 'setAccess', 'updateRecord', 'deleteRecord', 'recordEvent', 'runRetention', 'eraseSubject', 'rectifySubject', 'destroyAccount',
] as const satisfies readonly (keyof VaultService)[];

/**
 * Decides whether a subject's data may be processed for a purpose (consent, restriction, objection):
 * the privacy service implements it; the vault asks before it decrypts anything for a read.
 */
export interface ProcessingGate {
  /** For each subject that may not be processed for the purpose, why not. */
  blocked(accountId: string, subjectIds: string[], purpose: string): Promise<Map<string, string>>;
  /**
   * Columns the vault adds to its record query (the subject is the named column) so that the common
   * case, a subject nothing blocks, needs no query of its own; `clear` says a row's subject is
   * certainly not blocked. Anything else is decided by `blocked`.
   */
  probe?(accountId: string, purpose: string, subjectColumn: string): { columns: AliasedRawBuilder<unknown, string>[]; clear(row: Record<string, unknown>): boolean };
}

const RECORD_COLUMNS = ['id', 'collection_id', 'account_id', 'subject_id', 'region', 'kms_key_id', 'data_key', 'values_json', 'groups_json', 'next_delete_at', 'created_at', 'updated_at'] as const satisfies readonly (keyof RecordRow)[];
const everyRecordColumn: Exclude<keyof RecordRow, (typeof RECORD_COLUMNS)[number]> extends never ? true : never = true;
void everyRecordColumn;
const RECORD_SELECT = sql.raw(RECORD_COLUMNS.map((col) => `r.${col}`).join(', '));
/**
 * What a read (with a purpose) takes of a record: no retention or ownership columns, and a format 2
 * record's metadata not at all (its values are read from its groups alone: openGroups).
 */
const READ_SELECT = sql.raw(`r.id, r.subject_id, r.region, r.kms_key_id, r.data_key, r.groups_json, case when substr(r.data_key, 1, 3) in ('${XAES_SALT}', '${LOCAL_SALT}') then null else r.values_json end as values_json, r.created_at, r.updated_at`);
/** A record as a read takes it: values_json is null for a format 2 record. */
type ReadRow = Pick<RecordRow, 'id' | 'subject_id' | 'region' | 'kms_key_id' | 'data_key' | 'groups_json' | 'created_at' | 'updated_at'> & { values_json: string | null };
/** What decrypting a record needs of it. */
type SealedRow = Pick<ReadRow, 'id' | 'kms_key_id' | 'data_key' | 'groups_json' | 'values_json'>;
const INDEX_COLUMNS = ['collection_id', 'property', 'digest', 'record_id'] as const;

const NO_EVENTS: ReadonlyMap<string, number> = new Map();
/** Marks a row, read with the gate's probe, whose subject the probe found certainly clear (a WeakSet of them cost more). */
const CLEARED = Symbol('vault:gate-clear');
type Probe = ReturnType<NonNullable<ProcessingGate['probe']>>;
/** Stands for the record id in byId's compiled query (a value no caller can pass: ids are UUIDs). */
const RECORD_ID_SLOT = `\u0000record-id:${randomUUID()}`;

/** Everything the vault holds about one subject, in the clear (for access and portability requests). */
export interface SubjectData {
  collection: string;
  region: string;
  record_id: string;
  created_at: number;
  updated_at: number;
  fields: Record<string, Value>;
}

/**
 * How much of a value each transformation shows. A property's default transformation is a ceiling:
 * a caller without the unmask permission for it may ask for one that shows as much or less, not more.
 */
const DISCLOSURE: Record<Transform, number> = { redact: 0, hash: 1, tokenize: 1, mask: 2, generalize: 3, partial: 4, plain: 5 };

function mayUnmask(access: EffectiveAccess, property: string): boolean {
  return access.unmask.has('*') || access.unmask.has(property);
}

export class VaultService {
  private readonly now: () => number;
  /** Unwrapped collection secrets, dropped after a while unused (zeroed on eviction). */
  private readonly secrets = new Map<string, HeldSecret>();
  private readonly validators = new Map<string, { create: RecordValidator; update: RecordValidator }>();
  /** byId's query per collection and purpose, compiled once, with the gate's probe it carries. */
  private readonly byIdQueries = new Map<string, { query: CompiledQuery; probe: Probe | undefined }>();
  private readonly numberedParams: boolean;
  readonly stats = { recordsWritten: 0, recordsRead: 0, valuesDeleted: 0, recordsDeleted: 0, valuesDeferred: 0 };
  private gate: ProcessingGate | null = null;

  constructor(
    private readonly db: VaultDb,
    private readonly kms: KmsService,
    opts: VaultOptions = {},
  ) {
    this.now = opts.now ?? Date.now;
    this.numberedParams = usesNumberedParams(db);
    const durable = opts.durable;
    if (durable) {
      const self = this as unknown as Record<string, (...args: unknown[]) => Promise<unknown>>;
      for (const name of DURABLE_METHODS) {
        const original = self[name]!;
        self[name] = async (...args: unknown[]) => {
          const result = await original.apply(this, args);
          await durable();
          return result;
        };
      }
    }
  }

  /** Installs the consent/restriction check every read goes through. */
  setProcessingGate(gate: ProcessingGate): void {
    this.gate = gate;
    // byId's compiled queries carry the previous gate's probe.
    this.byIdQueries.clear();
  }

  // ------------------------------------------------------------------ collections

  async createCollection(scope: KeyScope, createdBy: string, input: { name: string; kmsKey?: string | undefined; access?: AccessEntry[] | undefined } & Static<typeof CollectionSchemaInput>): Promise<Collection> {
    if (!COLLECTION_NAME.test(input.name)) throw new VaultError(400, 'InvalidName', 'a collection name is 2–63 lower-case letters, digits, "_" or "-", starting with a letter');
    const schema = this.parseSchema(input);
    const key = await this.collectionKey(scope, input.kmsKey);
    const id = randomUUID();
    const secret = randomBytes(32);
    const wrapped = await this.kmsCall(() => this.kms.encrypt(key, secret, secretContext(id)));
    secret.fill(0);
    const now = this.now();
    const row: CollectionRow = {
      id, account_id: scope.accountId, project_id: scope.projectId, region: scope.region, name: input.name, kms_key_id: key.id,
      schema_version: 1, schema_json: JSON.stringify(schema), secret_wrapped: wrapped.toString('base64'), created_at: now, updated_at: now,
    };
    try {
      await this.db.transaction().execute(async (trx) => {
        await trx.insertInto('vault_collections').values(row).execute();
        await trx.insertInto('vault_schema_versions').values({ collection_id: id, version: 1, schema_json: row.schema_json, created_at: now, created_by: createdBy }).execute();
        for (const a of input.access ?? []) await trx.insertInto('vault_access').values(accessRow(id, a, now)).execute();
      });
    } catch (e) {
      if (isUniqueViolation(e)) throw new VaultError(409, 'CollectionExists', `a collection named ${input.name} already exists in this account`);
      throw e;
    }
    return { row, schema };
  }

  private parseSchema(input: Static<typeof CollectionSchemaInput>): CollectionSchema {
    try {
      return normalizeSchema(input);
    } catch (e) {
      if (e instanceof SchemaError) throw new VaultError(400, 'InvalidSchema', e.message);
      throw e;
    }
  }

  /** The KMS key a request names for a collection in the scope's project (400 when there is none, or it is not symmetric). */
  async namedKey(scope: KeyScope, requested: string): Promise<KeyRow> {
    return this.collectionKey(scope, requested);
  }

  /** The collection's key: one named in the request (id or alias in the project), else the tenant's default vault key. */
  private async collectionKey(scope: KeyScope, requested?: string): Promise<KeyRow> {
    if (requested) {
      const key = await this.kms.findKey(scope, requested.replace(/^alias\//, ''));
      if (!key) throw new VaultError(400, 'KeyNotFound', `the KMS key ${requested} does not exist in the collection's project`);
      if (key.key_spec !== 'AES_256' && key.key_spec !== 'SM4') throw new VaultError(400, 'InvalidKey', 'a collection key must be a symmetric key (AES_256)');
      return key;
    }
    return this.kms.defaultKey(scope, DEFAULT_KEY_ALIAS, 'default key of the personal-data vault');
  }

  async getCollection(accountId: string, name: string): Promise<Collection | undefined> {
    const row = await this.db.selectFrom('vault_collections').selectAll().where('account_id', '=', accountId).where('name', '=', name).executeTakeFirst();
    return row ? { row, schema: JSON.parse(row.schema_json) as CollectionSchema } : undefined;
  }

  async listCollections(accountId: string): Promise<Collection[]> {
    const rows = await this.db.selectFrom('vault_collections').selectAll().where('account_id', '=', accountId).orderBy('name').execute();
    return rows.map((row) => ({ row, schema: JSON.parse(row.schema_json) as CollectionSchema }));
  }

  async schemaVersions(c: Collection): Promise<{ version: number; created_at: number; created_by: string; schema: CollectionSchema }[]> {
    const rows = await this.db.selectFrom('vault_schema_versions').selectAll().where('collection_id', '=', c.row.id).orderBy('version').execute();
    return rows.map((r) => ({ version: r.version, created_at: r.created_at, created_by: r.created_by, schema: JSON.parse(r.schema_json) as CollectionSchema }));
  }

  /** Deletes a collection with every record, index entry, token and its secret. */
  async deleteCollection(c: Collection, opts: { force: boolean }): Promise<{ records: number }> {
    const count = Number((await this.db.selectFrom('vault_records').select((eb) => eb.fn.countAll().as('n')).where('collection_id', '=', c.row.id).executeTakeFirstOrThrow()).n);
    if (count > 0 && !opts.force) throw new VaultError(409, 'CollectionNotEmpty', `the collection holds ${count} records; delete them first or pass force=true`);
    await this.db.transaction().execute(async (trx) => {
      for (const t of ['vault_index', 'vault_tokens', 'vault_records', 'vault_access', 'vault_schema_versions'] as const) await trx.deleteFrom(t).where('collection_id', '=', c.row.id).execute();
      await trx.deleteFrom('vault_collections').where('id', '=', c.row.id).execute();
    });
    this.dropSecret(c.row.id);
    this.stats.recordsDeleted += count;
    return { records: count };
  }

  /**
   * A new schema version. It must fit the data already stored: a property that became mandatory must
   * have a value in every record, a changed type or format must accept every stored value, a removed
   * property's values go only when `dropRemovedValues` says so. A property that became searchable is
   * indexed from the stored values.
   */
  async updateSchema(c: Collection, by: string, input: Static<typeof CollectionSchemaInput>, opts: { dropRemovedValues: boolean }): Promise<Collection> {
    const next = this.parseSchema(input);
    const old = new Map(c.schema.properties.map((p) => [p.name, p]));
    const nextByName = new Map(next.properties.map((p) => [p.name, p]));
    const removed = c.schema.properties.filter((p) => !nextByName.has(p.name)).map((p) => p.name);
    const retyped = next.properties.filter((p) => {
      const o = old.get(p.name);
      return o && (o.data_type !== p.data_type || o.pii_type !== p.pii_type || p.max_length < o.max_length);
    });
    const nowMandatory = next.properties.filter((p) => p.mandatory && !old.get(p.name)?.mandatory);
    const indexOn = next.properties.filter((p) => p.searchable && !old.get(p.name)?.searchable);
    const indexOff = c.schema.properties.filter((p) => p.searchable && !nextByName.get(p.name)?.searchable).map((p) => p.name);
    const tokensReset = next.properties.filter((p) => old.get(p.name) && old.get(p.name)!.stable_tokens !== p.stable_tokens).map((p) => p.name);
    const ruleChanged = next.properties.filter((p) => old.get(p.name) && JSON.stringify(old.get(p.name)!.deletion) !== JSON.stringify(p.deletion));
    const decryptFor = new Set([...retyped, ...indexOn].map((p) => p.name));
    const validator = compileRecordValidator(next, 'update');

    // First pass, read-only: does every stored record fit the new schema?
    const problems = new Map<string, number>();
    const note = (what: string) => problems.set(what, (problems.get(what) ?? 0) + 1);
    await this.forEachRecord(c.row.id, async (rec) => {
      const values = JSON.parse(rec.values_json) as Record<string, StoredValue>;
      for (const name of removed) if (values[name] && !opts.dropRemovedValues) note(`property ${name} was removed but has values`);
      for (const p of nowMandatory) if (!values[p.name]) note(`property ${p.name} became mandatory but has no value`);
      const check = retyped.filter((p) => values[p.name]);
      if (check.length) {
        const plain = await this.decryptValues(c, rec, check.map((p) => p.name));
        for (const p of check) {
          try {
            validator({ [p.name]: plain[p.name] });
          } catch {
            note(`property ${p.name}: a stored value does not fit the new definition`);
          }
        }
      }
    });
    if (problems.size) throw new VaultError(409, 'SchemaConflict', `the new schema does not fit the stored records: ${[...problems].map(([w, n]) => `${w} (${n} record${n === 1 ? '' : 's'})`).join('; ')}`);

    // Second pass: drop removed values, re-index, re-time deletion rules, and seal again the groups
    // whose values no longer share a deletion rule, time or purposes (sealing.ts).
    const now = this.now();
    const regroup = new Set(next.properties.filter((p) => old.has(p.name) && ruleKey(old.get(p.name)!) !== ruleKey(p)).map((p) => p.name));
    // Each record is written only as it was read; one changed meanwhile is read again and redone.
    const apply = async (rec: RecordRow): Promise<boolean> => {
      const stored = parseStored(rec.values_json, rec.groups_json);
      const values = stored.values;
      let changed = false;
      const unindex = indexRowsOf(c.row.id, rec.id, values, [...removed, ...indexOff]);
      for (const n of indexOff) {
        if (values[n]?.x !== undefined) {
          delete values[n]!.x;
          changed = true;
        }
      }
      const gone = removed.filter((name) => values[name]);
      if (gone.length) {
        await integrityAsync(() => removeFrom(stored, gone, c.row, rec.id, () => this.recordKey(c, rec)));
        changed = true;
      }
      for (const p of ruleChanged) {
        const v = values[p.name];
        if (v && !p.deletion.on_event) {
          v.d = p.deletion.after ? v.t + durationMs(p.deletion.after, v.t) : null;
          changed = true;
        }
      }
      const moved = Object.keys(values).filter((n) => regroup.has(n) && values[n]!.g !== undefined);
      if (moved.length) {
        // Every grouped value of the record, sealed again in groups of the new schema's keys.
        const names = Object.keys(values).filter((n) => values[n]!.g !== undefined && nextByName.has(n));
        const dek = await this.recordKey(c, rec);
        try {
          const plainAll = await this.decryptValues(c, rec, names, dek);
          const entries: Sealable[] = names.map((n) => ({ p: nextByName.get(n)!, v: plainAll[n]!, t: values[n]!.t, d: values[n]!.d, x: values[n]!.x }));
          for (const n of names) delete values[n];
          stored.groups = new Map();
          sealInto(stored, dek, c.row, rec.id, entries);
        } finally {
          dek.fill(0);
        }
        changed = true;
      }
      const toIndex = indexOn.filter((p) => values[p.name] && decryptFor.has(p.name));
      const plain = toIndex.length ? await this.decryptValues(c, rec, toIndex.map((p) => p.name)) : {};
      const reindex: IndexRow[] = [];
      for (const p of toIndex) {
        const digest = this.blindIndex(await this.keysOf(c), p, plain[p.name] as Value);
        values[p.name]!.x = digest;
        reindex.push([c.row.id, p.name, digest, rec.id]);
        changed = true;
      }
      return this.db.transaction().execute(async (trx) => {
        if (changed) {
          const u = await trx.updateTable('vault_records').set({ values_json: JSON.stringify(values), groups_json: groupsJson(stored.groups), next_delete_at: nextDeletion(values), updated_at: Math.max(now, rec.updated_at + 1) })
            .where('id', '=', rec.id).where('values_json', '=', rec.values_json).executeTakeFirst();
          if (Number(u.numUpdatedRows) !== 1) return false;
        }
        await deleteIndexRows(trx, unindex);
        const dropTokens = [...removed, ...tokensReset];
        if (dropTokens.length) await trx.deleteFrom('vault_tokens').where('record_id', '=', rec.id).where('property', 'in', dropTokens).execute();
        for (const [collectionId, property, digest, recordId] of reindex) {
          await trx.insertInto('vault_index').values({ collection_id: collectionId, property, digest, record_id: recordId }).onConflict((oc) => oc.doNothing()).execute();
        }
        return true;
      });
    };
    await this.forEachRecord(c.row.id, async (first) => {
      let rec: RecordRow | undefined = first;
      for (let attempt = 0; rec; attempt++) {
        if (await apply(rec)) return;
        if (attempt >= 4) throw new VaultError(409, 'ConcurrentChange', 'a record kept changing while the schema change was applied; retry');
        rec = await this.db.selectFrom('vault_records').selectAll().where('id', '=', rec.id).executeTakeFirst();
      }
    });

    const version = c.row.schema_version + 1;
    const schemaJson = JSON.stringify(next);
    const r = await this.db.transaction().execute(async (trx) => {
      const u = await trx.updateTable('vault_collections').set({ schema_version: version, schema_json: schemaJson, updated_at: now })
        .where('id', '=', c.row.id).where('schema_version', '=', c.row.schema_version).executeTakeFirst();
      if (Number(u.numUpdatedRows) !== 1) return false;
      await trx.insertInto('vault_schema_versions').values({ collection_id: c.row.id, version, schema_json: schemaJson, created_at: now, created_by: by }).execute();
      return true;
    });
    if (!r) throw new VaultError(409, 'ConcurrentChange', 'the schema was changed meanwhile; read it again and retry');
    return { row: { ...c.row, schema_version: version, schema_json: schemaJson, updated_at: now }, schema: next };
  }

  private async forEachRecord(collectionId: string, fn: (r: RecordRow) => Promise<void>): Promise<void> {
    let after = '';
    for (;;) {
      const rows = await this.db.selectFrom('vault_records').selectAll().where('collection_id', '=', collectionId).where('id', '>', after).orderBy('id').limit(200).execute();
      for (const r of rows) await fn(r);
      if (rows.length < 200) return;
      after = rows[rows.length - 1]!.id;
    }
  }

  /**
   * Copies a collection — schema, whitelist and every record — into another project (region) under
   * the destination's key: each record gets a new data key there, values keep their collection and
   * deletion times, indexes are rebuilt under the copy's own secret. Whether the copy may cross
   * regions is the caller's decision (a transfer record); the vault only copies.
   */
  async copyCollection(src: Collection, dest: KeyScope, name: string, by: string): Promise<{ collection: Collection; records: number; restricted: number }> {
    const access = await this.listAccess(src);
    const copy = await this.createCollection(dest, by, { name, access, properties: src.schema.properties, description: src.schema.description, ...(src.schema.min_age !== undefined ? { min_age: src.schema.min_age } : {}) });
    let records = 0;
    let restricted = 0;
    await this.forEachRecord(src.row.id, async (rec) => {
      // Copying is processing: a subject whose processing is restricted stays out of the copy (its
      // record remains in the source). Asked under a purpose no one declares, so only a restriction
      // (which allows nothing but legal claims) refuses it.
      if (this.gate && (await this.gate.blocked(src.row.account_id, [rec.subject_id], COPY_PURPOSE)).size) {
        restricted++;
        return;
      }
      const source = JSON.parse(rec.values_json) as Record<string, StoredValue>;
      const plain = await this.decryptValues(src, rec, Object.keys(source));
      const id = randomUUID();
      // The copy's keys for each record: a copy can outlast the secret cache's lifetime (it zeroes what it
      // drops), and each record checks the destination key can still be used.
      const held = this.cachedSecret(copy) ?? (await this.loadSecret(copy));
      const keys = held.keys;
      const { dek, dataKey } = this.newRecordKey(copy, held.recordKeys, id);
      const stored: Stored = emptyStored();
      const index: { property: string; digest: string }[] = [];
      try {
        const entries: Sealable[] = [];
        for (const p of copy.schema.properties) {
          const v = plain[p.name];
          if (v === undefined) continue;
          const x = p.searchable ? this.blindIndex(keys, p, v) : undefined;
          entries.push({ p, v, t: source[p.name]!.t, d: source[p.name]!.d, x });
          if (x !== undefined) index.push({ property: p.name, digest: x });
        }
        sealInto(stored, dek, copy.row, id, entries);
      } finally {
        dek.fill(0);
      }
      await this.db.transaction().execute(async (trx) => {
        await trx.insertInto('vault_records').values({
          id, collection_id: copy.row.id, account_id: copy.row.account_id, subject_id: rec.subject_id, region: copy.row.region, kms_key_id: copy.row.kms_key_id,
          data_key: dataKey, values_json: JSON.stringify(stored.values), groups_json: groupsJson(stored.groups), next_delete_at: nextDeletion(stored.values), created_at: rec.created_at, updated_at: this.now(),
        }).execute();
        if (index.length) await trx.insertInto('vault_index').values(index.map((i) => ({ collection_id: copy.row.id, property: i.property, digest: i.digest, record_id: id }))).execute();
      });
      records++;
    });
    this.stats.recordsWritten += records;
    return { collection: copy, records, restricted };
  }

  // ------------------------------------------------------------------ whitelist

  async listAccess(c: Collection): Promise<AccessEntry[]> {
    const rows = await this.db.selectFrom('vault_access').selectAll().where('collection_id', '=', c.row.id).orderBy('principal_type').orderBy('principal_id').execute();
    return rows.map(fromAccessRow);
  }

  /** Replaces the whitelist. Unmask entries must name properties of the schema (or `*`). */
  async setAccess(c: Collection, entries: AccessEntry[]): Promise<AccessEntry[]> {
    const names = new Set(c.schema.properties.map((p) => p.name));
    const seen = new Set<string>();
    for (const e of entries) {
      const k = `${e.type}:${e.id}`;
      if (seen.has(k)) throw new VaultError(400, 'InvalidAccess', `${e.type} ${e.id} is listed twice`);
      seen.add(k);
      for (const u of e.unmask) if (u !== '*' && !names.has(u)) throw new VaultError(400, 'InvalidAccess', `unmask names property ${u}, which the collection does not have`);
      if (e.unmask.length && !e.permissions.includes('read') && !e.permissions.includes('detokenize')) throw new VaultError(400, 'InvalidAccess', `${e.type} ${e.id}: unmask needs the read or detokenize permission`);
    }
    const now = this.now();
    await this.db.transaction().execute(async (trx) => {
      await trx.deleteFrom('vault_access').where('collection_id', '=', c.row.id).execute();
      for (const e of entries) await trx.insertInto('vault_access').values(accessRow(c.row.id, e, now)).execute();
    });
    return this.listAccess(c);
  }

  /** What the whitelist lets the caller do; null when it does not name the caller at all. */
  async accessOf(c: Collection, caller: Caller): Promise<EffectiveAccess | null> {
    if (caller.accountId !== c.row.account_id) return null;
    const rows = await this.db.selectFrom('vault_access').selectAll().where('collection_id', '=', c.row.id).execute();
    const mine = rows.filter((r) =>
      (r.principal_type === 'user' && r.principal_id === caller.userId && !caller.agencyId) ||
      (r.principal_type === 'group' && caller.groupIds.includes(r.principal_id) && !caller.agencyId) ||
      (r.principal_type === 'agency' && r.principal_id === caller.agencyId));
    if (!mine.length) return null;
    const eff: EffectiveAccess = { permissions: new Set(), unmask: new Set() };
    for (const r of mine) {
      const e = fromAccessRow(r);
      for (const p of e.permissions) eff.permissions.add(p);
      for (const u of e.unmask) eff.unmask.add(u);
    }
    return eff;
  }

  private require(access: EffectiveAccess, perm: Permission): void {
    if (!access.permissions.has(perm)) throw new VaultError(403, 'NotWhitelisted', `the collection's whitelist does not give you the ${perm} permission`);
  }

  // ------------------------------------------------------------------ keys

  /**
   * The keys derived from the collection's secret: `index` (blind indexes), `hash`, `token`, and
   * `records` (each record's data key is derived from it). The secret is unwrapped by KMS once and kept a while;
   * every use checks that the collection's KMS key may still be used (a cached row, re-read when it
   * refuses), so disabling the key or scheduling its deletion stops reads as a KMS decrypt would.
   */
  private async keysOf(c: Collection): Promise<Map<string, Buffer>> {
    return (this.cachedSecret(c) ?? (await this.loadSecret(c))).keys;
  }

  /** The held secret without a wait, when it is held and the key's cached row says it may be used. */
  private cachedSecret(c: Collection): HeldSecret | undefined {
    const hit = this.secrets.get(c.row.id);
    if (!hit) return undefined;
    const now = this.now();
    if (hit.until <= now || !this.kms.cachedUsableKey(this.scopeOf(c.row), c.row.kms_key_id)) return undefined;
    hit.until = now + SECRET_TTL_MS;
    return hit;
  }

  private async loadSecret(c: Collection): Promise<HeldSecret> {
    // Other requests run during each wait: one may drop the held secret (its check found the key
    // unusable) or load it too. What is returned is the entry held when this returns, never a dropped one.
    for (let attempt = 0; ; attempt++) {
      const now = this.now();
      const key = await this.kms.getKey(this.scopeOf(c.row), c.row.kms_key_id);
      const hit = this.secrets.get(c.row.id);
      if (hit && hit.until > now) {
        try {
          await this.kmsCall(() => this.kms.checkUsable(key));
        } catch (e) {
          // The key may not be used: nor may what it unwrapped, which is not kept either.
          this.dropSecret(c.row.id);
          throw e;
        }
        if (!hit.dropped && this.secrets.get(c.row.id) === hit) {
          hit.until = now + SECRET_TTL_MS;
          return hit;
        }
        if (attempt < 3) continue;
        throw new VaultError(409, 'KeyUnavailable', 'the collection\'s key changed during the operation; retry');
      }
      if (hit) this.dropSecret(c.row.id);
      const secret = await this.kmsCall(() => this.kms.decrypt(key, Buffer.from(c.row.secret_wrapped, 'base64'), secretContext(c.row.id)));
      const won = this.secrets.get(c.row.id);
      if (won && !won.dropped && won.until > this.now()) {
        // Another request unwrapped it meanwhile: keep one copy.
        secret.fill(0);
        return won;
      }
      if (won) this.dropSecret(c.row.id);
      const keys = new Map<string, Buffer>();
      for (const use of ['index', 'hash', 'token', 'records']) keys.set(use, Buffer.from(hkdfSync('sha256', secret, Buffer.from(c.row.id), `custos-vault/${use}`, 32)));
      const records = keys.get('records')!;
      const held: HeldSecret = { secret, keys, recordKeys: { records, deriver: new XaesKeyDeriver(records) }, until: now + SECRET_TTL_MS, dropped: false };
      this.secrets.set(c.row.id, held);
      if (this.secrets.size > 10_000) this.sweepSecrets(now);
      return held;
    }
  }

  private dropSecret(id: string): void {
    const e = this.secrets.get(id);
    if (!e) return;
    e.dropped = true;
    e.secret.fill(0);
    e.recordKeys.deriver.destroy();
    for (const k of e.keys.values()) k.fill(0);
    this.secrets.delete(id);
  }

  private sweepSecrets(now: number): void {
    for (const [id, e] of this.secrets) if (e.until <= now) this.dropSecret(id);
  }

  private scopeOf(row: { account_id: string; project_id: string; region: string }): KeyScope {
    return { accountId: row.account_id, projectId: row.project_id, region: row.region };
  }

  /** KMS refusals (disabled, pending deletion, destroyed key) are the vault's 409, not a server error. */
  private async kmsCall<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      if (e instanceof ServiceError && e.service !== 'VAULT' && e.status < 500) throw new VaultError(409, 'KeyUnavailable', `the collection's KMS key cannot be used: ${e.message}`);
      throw e;
    }
  }

  /** `canonical`: `v` was just made canonicalValue(p, …) for this very property. */
  private blindIndex(keys: Map<string, Buffer>, p: Property, v: Value, canonical = false): string {
    return createHmac('sha256', liveOrRefuse(keys.get('index')!)).update(`${p.name}\u0000${indexForm(p, v, canonical)}`).digest('hex').slice(0, 40);
  }

  /** The record's data key: derived from the collection's secret and its salt (format 2), or unwrapped by KMS (format 1). */
  private async recordKey(c: Collection, rec: Pick<SealedRow, 'id' | 'kms_key_id' | 'data_key'>): Promise<Buffer> {
    const held = this.heldRecordKey(c, rec);
    if (held) return held;
    if (derivedLocally(rec.data_key)) {
      const keys = (await this.loadSecret(c)).recordKeys;
      return integrity(() => recordKeyFrom(keys, c.row, rec.id, rec.data_key));
    }
    const key = await this.kms.getKey(this.scopeOf(c.row), rec.kms_key_id);
    return this.kmsCall(() => this.kms.decrypt(key, Buffer.from(rec.data_key, 'base64'), recordContext(c.row.id, rec.id)));
  }

  /** A new record's data key, and the record's data_key column (the salt it is derived with). */
  private newRecordKey(c: Collection, keys: RecordKeys, recordId: string): { dek: Buffer; dataKey: string } {
    const dataKey = newRecordSalt();
    return { dek: recordKeyFrom(keys, c.row, recordId, dataKey), dataKey };
  }

  private async decryptValues(c: Collection, rec: SealedRow, names: string[], dek?: Buffer): Promise<Record<string, Value>> {
    const key = dek ?? (await this.recordKey(c, rec));
    try {
      return this.openRecord(c, rec, names, key);
    } finally {
      if (!dek) key.fill(0);
    }
  }

  /** The named values of a record, decrypted with its key. */
  private openRecord(c: Collection, rec: SealedRow, names: string[], key: Buffer): Record<string, Value> {
    // A record written in format 2 holds its values in its groups alone: no metadata to read.
    if (derivedLocally(rec.data_key)) return integrity(() => openGroups(rec.groups_json, key, c.row, rec.id, names));
    return integrity(() => {
      if (rec.values_json === null) throw new IntegrityError(`record ${rec.id} was read without its metadata`);
      return openValues(parseStored(rec.values_json, rec.groups_json), key, c.row, rec.id, names);
    });
  }

  /** A format 2 record's key without a wait, while the collection's secret is held (else recordKey). */
  private heldRecordKey(c: Collection, rec: Pick<SealedRow, 'id' | 'data_key'>): Buffer | undefined {
    if (!derivedLocally(rec.data_key)) return undefined;
    const held = this.cachedSecret(c);
    return held && integrity(() => recordKeyFrom(held.recordKeys, c.row, rec.id, rec.data_key));
  }

  private validatorsOf(c: Collection): { create: RecordValidator; update: RecordValidator } {
    const k = `${c.row.id}:${c.row.schema_version}`;
    let v = this.validators.get(k);
    if (!v) {
      v = { create: compileRecordValidator(c.schema, 'create'), update: compileRecordValidator(c.schema, 'update') };
      if (this.validators.size > 1000) this.validators.clear();
      this.validators.set(k, v);
    }
    return v;
  }

  // ------------------------------------------------------------------ records

  async createRecord(c: Collection, access: EffectiveAccess, subjectId: string, fields: Record<string, unknown>): Promise<RecordRow> {
    this.require(access, 'write');
    checkSubject(subjectId);
    try {
      this.validatorsOf(c).create(fields);
    } catch (e) {
      if (e instanceof SchemaError) throw new VaultError(400, 'InvalidRecord', e.message);
      throw e;
    }
    this.checkAge(c, fields);
    const id = randomUUID();
    const now = this.now();
    const fired = c.schema.properties.some((p) => p.deletion.on_event) ? await this.firedEvents(c, subjectId) : NO_EVENTS;
    const held = this.cachedSecret(c) ?? (await this.loadSecret(c));
    const keys = held.keys;
    const { dek, dataKey } = this.newRecordKey(c, held.recordKeys, id);
    const stored: Stored = emptyStored();
    const index: { property: string; digest: string }[] = [];
    try {
      const entries: Sealable[] = [];
      for (const p of c.schema.properties) {
        const raw = fields[p.name];
        if (raw === undefined || raw === null) continue;
        const v = canonicalValue(p, raw as Value);
        const x = p.searchable ? this.blindIndex(keys, p, v, true) : undefined;
        entries.push({ p, v, t: now, d: this.dueOf(p, now, fired, undefined), x });
        if (x !== undefined) index.push({ property: p.name, digest: x });
      }
      sealInto(stored, dek, c.row, id, entries);
    } finally {
      dek.fill(0);
    }
    const row: RecordRow = {
      id, collection_id: c.row.id, account_id: c.row.account_id, subject_id: subjectId, region: c.row.region, kms_key_id: c.row.kms_key_id,
      data_key: dataKey, values_json: JSON.stringify(stored.values), groups_json: groupsJson(stored.groups), next_delete_at: nextDeletion(stored.values), created_at: now, updated_at: now,
    };
    // Insert text made once per shape: compiling the templates cost a third of the database's work here.
    await this.db.transaction().execute(async (trx) => {
      await trx.executeQuery(preparedQuery(multiRowInsertSql(this.numberedParams, 'vault_records', RECORD_COLUMNS, 1), RECORD_COLUMNS.map((col) => row[col])));
      if (index.length) {
        await trx.executeQuery(preparedQuery(multiRowInsertSql(this.numberedParams, 'vault_index', INDEX_COLUMNS, index.length), index.flatMap((i) => [c.row.id, i.property, i.digest, id])));
      }
    });
    this.stats.recordsWritten++;
    return row;
  }

  /** A collection with a minimum age refuses subjects below it (the date itself is never echoed). */
  private checkAge(c: Collection, fields: Record<string, unknown>): void {
    if (c.schema.min_age === undefined) return;
    const dob = c.schema.properties.find((p) => p.pii_type === 'date_of_birth');
    const v = dob ? fields[dob.name] : undefined;
    if (typeof v === 'string' && ageAt(v, this.now()) < c.schema.min_age) {
      throw new VaultError(422, 'BelowMinimumAge', `the collection accepts data subjects aged ${c.schema.min_age} or more; property ${dob!.name} is below that`);
    }
  }

  /**
   * When a value written now is due for deletion: after its duration; for a rule on an event, when
   * the value it replaces was due (a rectification does not put the deletion off), else as an event
   * already received for the subject scheduled it (a value written after "consent_withdrawn" is as
   * due as the ones before), else not until the event comes.
   */
  private dueOf(p: Property, now: number, fired: ReadonlyMap<string, number>, previous: number | null | undefined): number | null {
    const event = p.deletion.on_event;
    if (!event) return p.deletion.after ? now + durationMs(p.deletion.after, now) : null;
    if (previous !== undefined && previous !== null) return previous;
    const at = fired.get(event);
    return at === undefined ? null : eventDue(p, at);
  }

  /** The subject's events received so far (the earliest of each), for collections with event rules. */
  private async firedEvents(c: Collection, subjectId: string): Promise<Map<string, number>> {
    const fired = new Map<string, number>();
    if (!c.schema.properties.some((p) => p.deletion.on_event)) return fired;
    const rows = await this.db.selectFrom('vault_subject_events').select(['event', 'occurred_at']).where('account_id', '=', c.row.account_id).where('subject_id', '=', subjectId).execute();
    for (const r of rows) {
      const at = Number(r.occurred_at);
      const prev = fired.get(r.event);
      if (prev === undefined || at < prev) fired.set(r.event, at);
    }
    return fired;
  }

  /**
   * Records of the collection for a read for the purpose, in one query: each row (what a read takes
   * of it: ReadRow) with the processing gate's probe of its subject. (The KMS key's state is checked
   * on every use of the collection's secret: keysOf.)
   */
  private async loadRecords(c: Collection, purpose: string, filter: RawBuilder<unknown>): Promise<ReadRow[]> {
    const probe = this.gate?.probe?.(c.row.account_id, purpose, 'r.subject_id');
    const q = this.recordQuery(c, READ_SELECT, probe, filter).compile(this.db);
    const { rows } = await this.db.executeQuery<Record<string, unknown>>(preparedQuery(q.sql, q.parameters));
    return this.recordsOf(rows, probe) as unknown as ReadRow[];
  }

  private recordQuery(c: Collection, columns: RawBuilder<unknown>, probe: Probe | undefined, filter: RawBuilder<unknown>): RawBuilder<Record<string, unknown>> {
    // Written as one SQL template: building it through the query builder cost ten times the query.
    const gate = probe?.columns.length ? sql`, ${sql.join(probe.columns)}` : sql``;
    return sql<Record<string, unknown>>`select ${columns}${gate} from vault_records r where r.collection_id = ${c.row.id} and ${filter}`;
  }

  /**
   * The rows as records, noting those whose subject the probe found clear. Rows read with a probe keep
   * its columns: they only reach view() and the gate, which build their answers field by field.
   */
  private recordsOf(rows: Record<string, unknown>[], probe: Probe | undefined): Record<string, unknown>[] {
    if (probe) for (const row of rows) if (probe.clear(row)) (row as { [CLEARED]?: true })[CLEARED] = true;
    return rows;
  }

  /** A record, whole (to change or delete it). */
  private async mustGet(c: Collection, id: string): Promise<RecordRow> {
    return (await this.byId(c, id, null)) as unknown as RecordRow;
  }

  /** A record as a read for the purpose takes it, with the gate's probe of its subject. */
  private async readOne(c: Collection, id: string, purpose: string): Promise<ReadRow> {
    return (await this.byId(c, id, purpose)) as unknown as ReadRow;
  }

  private async byId(c: Collection, id: string, purpose: string | null): Promise<Record<string, unknown>> {
    // The one-record read, compiled once per collection and purpose: compiling the template (with the
    // gate's probe) cost more than running it. Only the record id changes between calls; the probe's
    // parameters are a function of the account and purpose (ProcessingGate.probe).
    const shape = `${c.row.id}\u0000${purpose ?? ''}`;
    let hit = this.byIdQueries.get(shape);
    if (!hit) {
      const probe = purpose !== null ? this.gate?.probe?.(c.row.account_id, purpose, 'r.subject_id') : undefined;
      hit = { query: this.recordQuery(c, purpose !== null ? READ_SELECT : RECORD_SELECT, probe, sql`r.id = ${RECORD_ID_SLOT}`).compile(this.db), probe };
      if (this.byIdQueries.size >= 1000) this.byIdQueries.delete(this.byIdQueries.keys().next().value as string);
      this.byIdQueries.set(shape, hit);
    }
    const parameters = hit.query.parameters.map((p) => (p === RECORD_ID_SLOT ? id : p));
    const { rows } = await this.db.executeQuery<Record<string, unknown>>(preparedQuery(hit.query.sql, parameters));
    const [rec] = this.recordsOf(rows, hit.probe);
    if (!rec) throw VaultError.notFound('record');
    return rec;
  }

  /** Which properties a read returns, checked against the purpose they are collected for. */
  private selectProps(c: Collection, opts: ReadOptions): Property[] {
    const byName = new Map(c.schema.properties.map((p) => [p.name, p]));
    if (opts.props?.length) {
      return opts.props.map((n) => {
        const p = byName.get(n);
        if (!p) throw new VaultError(400, 'UnknownProperty', `property ${n} is not in the collection's schema`);
        if (!p.purposes.includes(opts.reason)) throw new VaultError(403, 'PurposeNotAllowed', `property ${n} is not collected for the purpose ${opts.reason}`);
        return p;
      });
    }
    const props = c.schema.properties.filter((p) => p.purposes.includes(opts.reason));
    if (!props.length) throw new VaultError(403, 'PurposeNotAllowed', `no property of the collection is collected for the purpose ${opts.reason}`);
    return props;
  }

  private checkTransforms(c: Collection, access: EffectiveAccess, opts: ReadOptions): void {
    for (const [n, t] of Object.entries(opts.transforms ?? {})) {
      const p = c.schema.properties.find((x) => x.name === n);
      if (!p) throw new VaultError(400, 'UnknownProperty', `property ${n} is not in the collection's schema`);
      if (t === 'generalize' && !(p.pii_type === 'ip_address' || p.pii_type === 'province_city' || p.data_type === 'date')) throw new VaultError(400, 'InvalidTransform', `property ${n} (${p.pii_type}) cannot be generalized`);
      if (!mayUnmask(access, n) && DISCLOSURE[t] > DISCLOSURE[p.default_transform]) {
        if (t === 'plain') throw new VaultError(403, 'UnmaskNotAllowed', `you may not read property ${n} in the clear`);
        throw new VaultError(403, 'TransformNotAllowed', `property ${n}: ${t} shows more of the value than its default (${p.default_transform}); that needs the unmask permission for it`);
      }
    }
  }

  async readRecord(c: Collection, access: EffectiveAccess, id: string, opts: ReadOptions): Promise<RecordView> {
    this.require(access, 'read');
    const props = this.selectProps(c, opts);
    this.checkTransforms(c, access, opts);
    const rec = await this.readOne(c, id, opts.reason);
    await this.admitted(c, [rec], opts.reason, true);
    return (await this.view(c, [rec], props, opts))[0]!;
  }

  /** Records whose subject may be processed for the purpose; `single` makes a blocked one an error. */
  private async admitted<R extends { subject_id: string }>(c: Collection, recs: R[], purpose: string, single: boolean): Promise<R[]> {
    if (!this.gate || !recs.length) return recs;
    const unsure = recs.filter((r) => (r as { [CLEARED]?: true })[CLEARED] !== true);
    if (!unsure.length) return recs;
    const blocked = await this.gate.blocked(c.row.account_id, [...new Set(unsure.map((r) => r.subject_id))], purpose);
    if (!blocked.size) return recs;
    if (single) throw new VaultError(403, 'ProcessingNotAllowed', `the data subject's data may not be processed for ${purpose}: ${blocked.values().next().value}`);
    return recs.filter((r) => !blocked.has(r.subject_id));
  }

  /** Decrypts and transforms records for the caller (no KMS call for format 2 records while the collection's keys are held). */
  private async view(c: Collection, recs: ReadRow[], props: Property[], opts: ReadOptions): Promise<RecordView[]> {
    const needKeys = props.some((p) => {
      const t = opts.transforms?.[p.name] ?? p.default_transform;
      return t === 'hash' || t === 'tokenize';
    });
    const keys = needKeys ? await this.keysOf(c) : null;
    const names = props.map((p) => p.name);
    const out: RecordView[] = [];
    for (const rec of recs) {
      // Decrypted without a wait while the collection's secret is held: a read is one query and CPU.
      const key = this.heldRecordKey(c, rec) ?? (await this.recordKey(c, rec));
      let plain: Record<string, Value>;
      try {
        plain = this.openRecord(c, rec, names, key);
      } finally {
        key.fill(0);
      }
      const fields: Record<string, Value | null> = {};
      const transforms: Record<string, Transform> = {};
      for (const p of props) {
        const t = opts.transforms?.[p.name] ?? p.default_transform;
        transforms[p.name] = t;
        const v = plain[p.name];
        fields[p.name] = v === undefined ? null : t === 'tokenize' ? await this.tokenFor(c, rec.id, p, v, keys!) : transformed(p, v, t, keys);
      }
      out.push({ id: rec.id, subject_id: rec.subject_id, region: rec.region, created_at: rec.created_at, updated_at: rec.updated_at, fields, transforms });
      this.stats.recordsRead++;
    }
    return out;
  }

  private async apply(c: Collection, rec: { id: string }, p: Property, v: Value, t: Transform, keys: Map<string, Buffer> | null): Promise<Value> {
    return t === 'tokenize' ? this.tokenFor(c, rec.id, p, v, keys!) : transformed(p, v, t, keys);
  }

  /** A token standing for the value: derived from it (stable) or random and remembered per record and property. */
  private async tokenFor(c: Collection, recordId: string, p: Property, v: Value, keys: Map<string, Buffer>): Promise<string> {
    let token: string;
    if (p.stable_tokens) {
      token = `tok_${createHmac('sha256', liveOrRefuse(keys.get('token')!)).update(`${p.name}\u0000${indexForm(p, v)}`).digest('base64url').slice(0, 32)}`;
    } else {
      const existing = await this.db.selectFrom('vault_tokens').select('token').where('record_id', '=', recordId).where('property', '=', p.name).executeTakeFirst();
      if (existing) return existing.token;
      token = `tok_${randomBytes(24).toString('base64url')}`;
    }
    await this.db.insertInto('vault_tokens').values({ collection_id: c.row.id, token, record_id: recordId, property: p.name, created_at: this.now() }).onConflict((oc) => oc.doNothing()).execute();
    return token;
  }

  /** The values tokens stand for; a token that stands for nothing (any more) comes back as null. */
  async detokenize(c: Collection, access: EffectiveAccess, tokens: string[], reason: string): Promise<{ token: string; property: string | null; record_id: string | null; value: Value | null }[]> {
    this.require(access, 'detokenize');
    const out = [];
    for (const token of tokens) {
      const row = await this.db.selectFrom('vault_tokens').selectAll().where('collection_id', '=', c.row.id).where('token', '=', token).orderBy('created_at').limit(1).executeTakeFirst();
      if (!row) {
        out.push({ token, property: null, record_id: null, value: null });
        continue;
      }
      const p = c.schema.properties.find((x) => x.name === row.property);
      const rec = p ? (await this.loadRecords(c, reason, sql`r.id = ${row.record_id}`))[0] : undefined;
      if (!p || !rec) {
        out.push({ token, property: null, record_id: null, value: null });
        continue;
      }
      if (!p.purposes.includes(reason)) throw new VaultError(403, 'PurposeNotAllowed', `property ${p.name} is not collected for the purpose ${reason}`);
      await this.admitted(c, [rec], reason, true);
      const plain = (await this.decryptValues(c, rec, [p.name]))[p.name];
      // In the clear only for a caller who may unmask the property; masked otherwise, or as the property's
      // default when that shows less than a mask (redact, hash, or the token itself).
      let value: Value | null = null;
      if (plain !== undefined) {
        const t = p.default_transform;
        if (mayUnmask(access, p.name)) value = plain;
        else if (DISCLOSURE[t] < DISCLOSURE.mask) value = await this.apply(c, rec, p, plain, t, t === 'redact' ? null : await this.keysOf(c));
        else value = mask(p, plain);
      }
      out.push({ token, property: p.name, record_id: rec.id, value });
    }
    return out;
  }

  async listBySubject(c: Collection, access: EffectiveAccess, subjectId: string, opts: ReadOptions & { limit: number; after?: string | undefined }): Promise<{ records: RecordView[]; next: string | null }> {
    this.require(access, 'read');
    checkSubject(subjectId);
    const props = this.selectProps(c, opts);
    this.checkTransforms(c, access, opts);
    const limit = Math.min(Math.max(opts.limit, 1), MAX_PAGE);
    const after = opts.after;
    const rows = await this.loadRecords(c, opts.reason, sql`r.subject_id = ${subjectId}${after ? sql` and r.id > ${after}` : sql``} order by r.id limit ${limit + 1}`);
    const page = rows.slice(0, limit);
    await this.admitted(c, page, opts.reason, true);
    return { records: await this.view(c, page, props, opts), next: rows.length > limit ? page[page.length - 1]!.id : null };
  }

  /** Exact-match search on searchable properties (all must match), through the blind indexes only. */
  async search(c: Collection, access: EffectiveAccess, match: Record<string, unknown>, opts: ReadOptions & { limit: number }): Promise<RecordView[]> {
    this.require(access, 'search');
    const entries = Object.entries(match);
    if (!entries.length) throw new VaultError(400, 'InvalidSearch', 'name at least one property to match');
    const keys = await this.keysOf(c);
    const digests: { property: string; digest: string }[] = [];
    for (const [n, raw] of entries) {
      const p = c.schema.properties.find((x) => x.name === n);
      if (!p) throw new VaultError(400, 'UnknownProperty', `property ${n} is not in the collection's schema`);
      if (!p.searchable) throw new VaultError(400, 'NotSearchable', `property ${n} is not searchable`);
      if (!p.purposes.includes(opts.reason)) throw new VaultError(403, 'PurposeNotAllowed', `property ${n} is not collected for the purpose ${opts.reason}`);
      // A match confirms a guessed value: more than a default shows that shows nothing of it (redact,
      // hash, tokenize, or a mask that hides the whole value, as a date of birth's does).
      if (!mayUnmask(access, n) && (DISCLOSURE[p.default_transform] < DISCLOSURE.mask || (p.default_transform === 'mask' && maskHidesAll(p)))) {
        throw new VaultError(403, 'SearchNotAllowed', `property ${n}: a match would show more of the value than its default (${p.default_transform}); searching by it needs the unmask permission for it`);
      }
      try {
        this.validatorsOf(c).update({ [n]: raw });
      } catch (e) {
        if (e instanceof SchemaError) throw new VaultError(400, 'InvalidSearch', e.message);
        throw e;
      }
      if (raw === null) throw new VaultError(400, 'InvalidSearch', `property ${n}: search for a value, not null`);
      digests.push({ property: n, digest: this.blindIndex(keys, p, raw as Value) });
    }
    const props = this.selectProps(c, opts);
    this.checkTransforms(c, access, opts);
    const limit = Math.min(Math.max(opts.limit, 1), MAX_PAGE);
    if (digests.length === 1 && this.numberedParams) {
      // On PostgreSQL, one property's index lookup and its records in one statement (one round trip,
      // one text, prepared): the lowest record ids of the digest's entries, in the index's order.
      // (SQLite plans the subquery after a scan of the collection: there it stays two statements.)
      const d = digests[0]!;
      const recs = await this.loadRecords(c, opts.reason, sql`r.id in (select i.record_id from vault_index i where i.collection_id = ${c.row.id} and i.property = ${d.property} and i.digest = ${d.digest} order by i.record_id limit ${limit}) order by r.id`);
      return this.view(c, await this.admitted(c, recs, opts.reason, false), props, opts);
    }
    let ids: string[] | null = null;
    for (const d of digests) {
      const q = this.db.selectFrom('vault_index').select('record_id').where('collection_id', '=', c.row.id).where('property', '=', d.property).where('digest', '=', d.digest)
        .$if(ids !== null, (q) => q.where('record_id', 'in', ids!.length ? ids! : ['']))
        .limit(ids === null && digests.length === 1 ? limit : 10_000).compile();
      // The first digest's lookup has one text whatever the values: prepared. Later ones list ids.
      const { rows }: { rows: { record_id: string }[] } = await this.db.executeQuery(ids === null ? preparedQuery<{ record_id: string }>(q.sql, q.parameters) : q);
      ids = rows.map((r) => r.record_id);
      if (!ids.length) return [];
    }
    const want = ids!.slice(0, limit);
    const recs = await this.loadRecords(c, opts.reason, sql`r.id in (${sql.join(want)}) order by r.id`);
    // Subjects whose data may not be processed for this purpose are left out of the results.
    return this.view(c, await this.admitted(c, recs, opts.reason, false), props, opts);
  }

  /** Rectification: only modifiable properties; null clears an optional value. */
  async updateRecord(c: Collection, access: EffectiveAccess, id: string, fields: Record<string, unknown>): Promise<RecordRow> {
    this.require(access, 'write');
    try {
      this.validatorsOf(c).update(fields);
    } catch (e) {
      if (e instanceof SchemaError) throw new VaultError(400, 'InvalidRecord', e.message);
      throw e;
    }
    this.checkAge(c, fields);
    const byName = new Map(c.schema.properties.map((p) => [p.name, p]));
    for (const n of Object.keys(fields)) if (!byName.get(n)!.modifiable) throw new VaultError(403, 'PropertyNotModifiable', `property ${n} cannot be modified once collected`);
    let fired: Map<string, number> | undefined;
    for (let attempt = 0; attempt < 3; attempt++) {
      const rec = await this.mustGet(c, id);
      const stored = parseStored(rec.values_json, rec.groups_json);
      const values = stored.values;
      fired ??= await this.firedEvents(c, rec.subject_id);
      const dek = await this.recordKey(c, rec);
      const now = this.now();
      const index: { property: string; digest: string }[] = [];
      const changed = Object.keys(fields);
      const keys = changed.some((n) => byName.get(n)!.searchable) ? await this.keysOf(c) : null;
      let unindex: IndexRow[] = [];
      try {
        const entries: Sealable[] = [];
        for (const n of changed) {
          const p = byName.get(n)!;
          const raw = fields[n];
          if (raw === null) continue;
          const v = canonicalValue(p, raw as Value);
          const x = p.searchable ? this.blindIndex(keys!, p, v, true) : undefined;
          entries.push({ p, v, t: now, d: this.dueOf(p, now, fired, values[n]?.d), x });
          if (x !== undefined) index.push({ property: n, digest: x });
        }
        // The old values go (their groups sealed again without them), the new ones get groups of their own.
        unindex = indexRowsOf(c.row.id, id, values, changed);
        await integrityAsync(() => removeFrom(stored, changed, c.row, id, async () => Buffer.from(dek)));
        sealInto(stored, dek, c.row, id, entries);
      } finally {
        dek.fill(0);
      }
      const done = await this.db.transaction().execute(async (trx) => {
        const u = await trx.updateTable('vault_records').set({ values_json: JSON.stringify(values), groups_json: groupsJson(stored.groups), next_delete_at: nextDeletion(values), updated_at: Math.max(now, rec.updated_at + 1) })
          // Unchanged since read, by anyone: the retention job and events change values without updated_at.
          .where('id', '=', id).where('updated_at', '=', rec.updated_at).where('values_json', '=', rec.values_json).executeTakeFirst();
        if (Number(u.numUpdatedRows) !== 1) return false;
        await deleteIndexRows(trx, unindex);
        await trx.deleteFrom('vault_tokens').where('record_id', '=', id).where('property', 'in', changed).execute();
        if (index.length) await trx.insertInto('vault_index').values(index.map((i) => ({ collection_id: c.row.id, property: i.property, digest: i.digest, record_id: id }))).execute();
        return true;
      });
      if (done) {
        this.stats.recordsWritten++;
        return (await this.mustGet(c, id));
      }
    }
    throw new VaultError(409, 'ConcurrentChange', 'the record was changed meanwhile; retry');
  }

  /** Deletes a record: its values, index entries, tokens and wrapped data key. */
  async deleteRecord(c: Collection, access: EffectiveAccess, id: string): Promise<void> {
    this.require(access, 'delete');
    await this.removeRecords([await this.mustGet(c, id)], { ifUnchanged: false });
  }

  /**
   * Deletes records with their index rows and tokens; returns the rows deleted. Index rows are found
   * through the rows as deleted (their digests are in the metadata), so a change committed after the
   * caller read them cannot leave one behind. `ifUnchanged`: only records whose values are still as
   * the caller read them.
   */
  private async removeRecords(recs: RecordRow[], opts: { ifUnchanged: boolean }): Promise<Pick<RecordRow, 'id' | 'collection_id' | 'values_json'>[]> {
    if (!recs.length) return [];
    const removed: Pick<RecordRow, 'id' | 'collection_id' | 'values_json'>[] = [];
    await this.db.transaction().execute(async (trx) => {
      for (let i = 0; i < recs.length; i += 200) {
        const chunk = recs.slice(i, i + 200);
        const which = opts.ifUnchanged
          ? sql`(id, values_json) in (values ${sql.join(chunk.map((r) => sql`(${r.id}, ${r.values_json})`))})`
          : sql`id in (${sql.join(chunk.map((r) => r.id))})`;
        const { rows } = await sql<Pick<RecordRow, 'id' | 'collection_id' | 'values_json'>>`delete from vault_records where ${which} returning id, collection_id, values_json`.execute(trx);
        removed.push(...rows);
      }
      if (!removed.length) return;
      const ids = removed.map((r) => r.id);
      await deleteIndexRows(trx, removed.flatMap((r) => indexRowsOf(r.collection_id, r.id, JSON.parse(r.values_json) as Record<string, StoredValue>)));
      for (let i = 0; i < ids.length; i += 500) await trx.deleteFrom('vault_tokens').where('record_id', 'in', ids.slice(i, i + 500)).execute();
    });
    this.stats.recordsDeleted += removed.length;
    return removed;
  }

  // ------------------------------------------------------------------ retention

  /**
   * A subject event (`delivered`, `account_deregistered`, ...): every value of the subject's records
   * whose deletion rule waits for it is scheduled (now, or the rule's duration after the event), and
   * what is due goes at once.
   */
  async recordEvent(accountId: string, subjectId: string, event: string, occurredAt?: number): Promise<{ scheduled: number; deleted_values: number; deleted_records: number }> {
    checkSubject(subjectId);
    const now = this.now();
    const at = occurredAt ?? now;
    if (at > now + 5 * 60_000) throw new VaultError(400, 'InvalidEvent', 'an event cannot have occurred in the future');
    const collections = new Map((await this.listCollections(accountId)).map((c) => [c.row.id, c]));
    const recs = await this.db.selectFrom('vault_records').selectAll().where('collection_id', 'in', this.collectionIdsOf(accountId)).where('subject_id', '=', subjectId).execute();
    let scheduled = 0;
    for (const first of recs) {
      const c = collections.get(first.collection_id);
      if (!c) continue;
      // A conditional update; a concurrent rectification makes it read the record again.
      let rec: RecordRow | undefined = first;
      for (let attempt = 0; rec && attempt < 5; attempt++) {
        const values = JSON.parse(rec.values_json) as Record<string, StoredValue>;
        let n = 0;
        for (const p of c.schema.properties) {
          const v = values[p.name];
          if (!v || p.deletion.on_event !== event) continue;
          const due = eventDue(p, at);
          if (v.d === null || due < v.d) {
            v.d = due;
            n++;
          }
        }
        if (!n) break;
        const u = await this.db.updateTable('vault_records').set({ values_json: JSON.stringify(values), next_delete_at: nextDeletion(values) })
          .where('id', '=', rec.id).where('values_json', '=', rec.values_json).executeTakeFirst();
        if (Number(u.numUpdatedRows) === 1) {
          scheduled += n;
          break;
        }
        rec = await this.db.selectFrom('vault_records').selectAll().where('id', '=', rec.id).executeTakeFirst();
      }
    }
    await this.db.insertInto('vault_subject_events').values({ id: randomUUID(), account_id: accountId, subject_id: subjectId, event, occurred_at: at, received_at: now, values_scheduled: scheduled }).execute();
    const purged = await this.purgeDue(now, { accountId, subjectId });
    return { scheduled, deleted_values: purged.values, deleted_records: purged.records };
  }

  async subjectEvents(accountId: string, subjectId: string): Promise<{ event: string; occurred_at: number; received_at: number; values_scheduled: number }[]> {
    return this.db.selectFrom('vault_subject_events').select(['event', 'occurred_at', 'received_at', 'values_scheduled']).where('account_id', '=', accountId).where('subject_id', '=', subjectId).orderBy('occurred_at').execute();
  }

  /** The retention job: one node at a time (a lease in the database) deletes every value that is due. */
  async runRetention(): Promise<{ values: number; records: number } | null> {
    const now = this.now();
    // Secrets unused for a while are zeroed here too, not only when the cache is next used or full.
    this.sweepSecrets(now);
    if (!(await this.takeLease(now, 10 * 60_000))) return null;
    try {
      return await this.purgeDue(now);
    } finally {
      await this.db.updateTable('settings').set({ value: '0' }).where('name', '=', LEASE).execute();
    }
  }

  private async takeLease(now: number, ttlMs: number): Promise<boolean> {
    await this.db.insertInto('settings').values({ name: LEASE, value: '0' }).onConflict((oc) => oc.column('name').doNothing()).execute();
    const r = await this.db.updateTable('settings').set({ value: String(now + ttlMs) }).where('name', '=', LEASE).where(sql<boolean>`cast(value as bigint) <= ${now}`).executeTakeFirst();
    return Number(r.numUpdatedRows) === 1;
  }

  /**
   * Deletes every value that is due, and records left without values. A due value sealed with
   * values not yet due (a rule changed since they were written) needs its group sealed again without
   * it, so the collection's key; while the key cannot be used, such a value waits for the next run
   * (counted in stats.valuesDeferred) — it is as unreadable as the rest of the collection meanwhile.
   */
  private async purgeDue(now: number, only?: { accountId: string; subjectId: string }): Promise<{ values: number; records: number }> {
    let values = 0;
    let records = 0;
    const collections = new Map<string, Promise<Collection | undefined>>();
    const collection = (id: string) => {
      let c = collections.get(id);
      if (!c) collections.set(id, (c = this.collectionById(id)));
      return c;
    };
    let after: { at: number; id: string } | null = null;
    for (;;) {
      let q = this.db.selectFrom('vault_records').selectAll().where('next_delete_at', '<=', now);
      if (only) q = q.where('collection_id', 'in', this.collectionIdsOf(only.accountId)).where('subject_id', '=', only.subjectId);
      // Pages by position: a record whose values must wait is passed over, not fetched again.
      if (after) {
        const a: { at: number; id: string } = after;
        q = q.where((eb) => eb.or([eb('next_delete_at', '>', a.at), eb.and([eb('next_delete_at', '=', a.at), eb('id', '>', a.id)])]));
      }
      const due = await q.orderBy('next_delete_at').orderBy('id').limit(500).execute();
      if (!due.length) break;
      const gone: RecordRow[] = [];
      for (const rec of due) {
        const asRead = (JSON.parse(rec.values_json) as Record<string, StoredValue>);
        let stored = parseStored(rec.values_json, rec.groups_json);
        const expiredNow = Object.keys(asRead).filter((k) => asRead[k]!.d !== null && asRead[k]!.d! <= now);
        if (expiredNow.length === Object.keys(stored.values).length) {
          gone.push(rec);
          continue;
        }
        let expired = expiredNow;
        const owner = { account_id: rec.account_id, id: rec.collection_id };
        try {
          await integrityAsync(() => removeFrom(stored, expired, owner, rec.id, async () => {
            const c = await collection(rec.collection_id);
            if (!c) throw new VaultError(409, 'KeyUnavailable', 'the record\'s collection is gone');
            return this.recordKey(c, rec);
          }));
        } catch {
          // A group that keeps values not yet due could not be sealed again (the key cannot be used, or
          // the record is damaged): what needs no key goes now, the rest waits for a later run; one
          // record never holds up the others.
          stored = parseStored(rec.values_json, rec.groups_json);
          expired = keylessRemovable(stored, expiredNow);
          this.stats.valuesDeferred += expiredNow.length - expired.length;
          if (!expired.length) continue;
          await removeFrom(stored, expired, owner, rec.id, () => Promise.reject(new Error('no key is needed')));
        }
        const vals = stored.values;
        const unindex = indexRowsOf(rec.collection_id, rec.id, asRead, expired);
        await this.db.transaction().execute(async (trx) => {
          const u = await trx.updateTable('vault_records').set({ values_json: JSON.stringify(vals), groups_json: groupsJson(stored.groups), next_delete_at: nextDeletion(vals) })
            .where('id', '=', rec.id).where('updated_at', '=', rec.updated_at).where('values_json', '=', rec.values_json).executeTakeFirst();
          if (Number(u.numUpdatedRows) !== 1) return;
          values += expired.length;
          await deleteIndexRows(trx, unindex);
          await trx.deleteFrom('vault_tokens').where('record_id', '=', rec.id).where('property', 'in', expired).execute();
        });
      }
      // Only records unchanged since this page was read: a record changed meanwhile is read again next run.
      for (const r of await this.removeRecords(gone, { ifUnchanged: true })) {
        records++;
        values += Object.keys(JSON.parse(r.values_json) as object).length;
      }
      const last = due[due.length - 1]!;
      after = { at: Number(last.next_delete_at), id: last.id };
      if (due.length < 500) break;
    }
    this.stats.valuesDeleted += values;
    return { values, records };
  }

  /** The account's collections, for lookups of a subject across them through (collection_id, subject_id). */
  private collectionIdsOf(accountId: string) {
    return this.db.selectFrom('vault_collections').select('id').where('account_id', '=', accountId);
  }

  private async collectionById(id: string): Promise<Collection | undefined> {
    const row = await this.db.selectFrom('vault_collections').selectAll().where('id', '=', id).executeTakeFirst();
    return row ? { row, schema: JSON.parse(row.schema_json) as CollectionSchema } : undefined;
  }

  // ------------------------------------------------------------------ data-subject requests

  async subjectKnown(accountId: string, subjectId: string): Promise<boolean> {
    return !!(await this.db.selectFrom('vault_records').select('id').where('collection_id', 'in', this.collectionIdsOf(accountId)).where('subject_id', '=', subjectId).limit(1).executeTakeFirst());
  }

  /** Every value held about a subject across the account's collections, in the clear. */
  async subjectData(accountId: string, subjectId: string): Promise<SubjectData[]> {
    checkSubject(subjectId);
    const collections = new Map((await this.listCollections(accountId)).map((c) => [c.row.id, c]));
    const recs = await this.db.selectFrom('vault_records').selectAll().where('collection_id', 'in', this.collectionIdsOf(accountId)).where('subject_id', '=', subjectId).orderBy('created_at').orderBy('id').execute();
    const out: SubjectData[] = [];
    for (const rec of recs) {
      const c = collections.get(rec.collection_id);
      if (!c) continue;
      const fields = await this.decryptValues(c, rec, c.schema.properties.map((p) => p.name));
      out.push({ collection: c.row.name, region: rec.region, record_id: rec.id, created_at: rec.created_at, updated_at: rec.updated_at, fields });
      this.stats.recordsRead++;
    }
    return out;
  }

  /**
   * Erasure: every value of the subject goes, except those `keep` names a reason for (a legal
   * obligation); a record left without values goes with its data key. Returns what was kept and why.
   */
  async eraseSubject(accountId: string, subjectId: string, keep: (collection: Collection, p: Property) => string | null): Promise<{ deleted_values: number; deleted_records: number; kept: { collection: string; record_id: string; property: string; reason: string; until: number | null }[] }> {
    checkSubject(subjectId);
    const collections = new Map((await this.listCollections(accountId)).map((c) => [c.row.id, c]));
    let deletedValues = 0;
    let deletedRecords = 0;
    let kept: { collection: string; record_id: string; property: string; reason: string; until: number | null }[] = [];
    const failed = new Map<string, unknown>();
    // Each write applies only to the record as read; a record changed meanwhile (a rectification, the
    // retention job) is read again in the next pass, so nothing written concurrently survives the erasure.
    for (let pass = 0; ; pass++) {
      const recs = (await this.db.selectFrom('vault_records').selectAll().where('collection_id', 'in', this.collectionIdsOf(accountId)).where('subject_id', '=', subjectId).execute())
        .filter((r) => !failed.has(r.id));
      const gone: RecordRow[] = [];
      let changedMeanwhile = 0;
      kept = [];
      for (const rec of recs) {
        const c = collections.get(rec.collection_id);
        const stored = parseStored(rec.values_json, rec.groups_json);
        const values = stored.values;
        const drop: string[] = [];
        for (const name of Object.keys(values)) {
          const p = c?.schema.properties.find((x) => x.name === name);
          const why = c && p ? keep(c, p) : null;
          if (why) kept.push({ collection: c!.row.name, record_id: rec.id, property: name, reason: why, until: values[name]!.d });
          else drop.push(name);
        }
        if (drop.length === Object.keys(values).length) {
          gone.push(rec);
          continue;
        }
        if (!drop.length) continue;
        const unindex = indexRowsOf(rec.collection_id, rec.id, values, drop);
        // Values kept share a group only with values kept alike (same purposes); a group that mixes them
        // (purposes changed since) is sealed again without the erased ones, which needs the key.
        try {
          await integrityAsync(() => removeFrom(stored, drop, c!.row, rec.id, () => this.recordKey(c!, rec)));
        } catch (e) {
          failed.set(rec.id, e);
          continue;
        }
        const done = await this.db.transaction().execute(async (trx) => {
          const u = await trx.updateTable('vault_records').set({ values_json: JSON.stringify(values), groups_json: groupsJson(stored.groups), next_delete_at: nextDeletion(values), updated_at: Math.max(this.now(), rec.updated_at + 1) })
            .where('id', '=', rec.id).where('values_json', '=', rec.values_json).executeTakeFirst();
          if (Number(u.numUpdatedRows) !== 1) return false;
          await deleteIndexRows(trx, unindex);
          await trx.deleteFrom('vault_tokens').where('record_id', '=', rec.id).where('property', 'in', drop).execute();
          return true;
        });
        if (done) deletedValues += drop.length;
        else changedMeanwhile++;
      }
      const removed = await this.removeRecords(gone, { ifUnchanged: true });
      deletedRecords += removed.length;
      for (const r of removed) deletedValues += Object.keys(JSON.parse(r.values_json) as object).length;
      changedMeanwhile += gone.length - removed.length;
      if (!changedMeanwhile) break;
      if (pass >= 4) throw new VaultError(409, 'ConcurrentChange', 'the data subject\'s records kept changing during the erasure; retry');
    }
    this.stats.valuesDeleted += deletedValues;
    // Everything that could go went; a record whose erased values share a group with kept ones and
    // whose collection key cannot be used stays as it was, and the erasure is reported incomplete.
    const first = failed.values().next();
    if (!first.done) {
      if (first.value instanceof VaultError && first.value.code === 'KeyUnavailable') {
        throw new VaultError(409, 'KeyUnavailable', `the erasure is incomplete: ${failed.size} record${failed.size === 1 ? '' : 's'} need${failed.size === 1 ? 's' : ''} the collection's KMS key, which cannot be used: ${first.value.message}`);
      }
      throw first.value;
    }
    return { deleted_values: deletedValues, deleted_records: deletedRecords, kept };
  }

  /** Rectification on a subject's behalf: the given values in every record of the subject in one collection. */
  async rectifySubject(accountId: string, subjectId: string, collectionName: string, fields: Record<string, unknown>): Promise<number> {
    const c = await this.getCollection(accountId, collectionName);
    if (!c) throw new VaultError(400, 'UnknownCollection', `there is no collection ${collectionName}`);
    const all: EffectiveAccess = { permissions: new Set(['write']), unmask: new Set() };
    const recs = await this.db.selectFrom('vault_records').select('id').where('collection_id', '=', c.row.id).where('subject_id', '=', subjectId).execute();
    for (const r of recs) await this.updateRecord(c, all, r.id, fields);
    return recs.length;
  }

  /** Account destruction: every collection with its records, index entries, tokens, secrets and events. */
  async destroyAccount(accountId: string): Promise<{ collections: number; records: number }> {
    let records = 0;
    const cols = await this.listCollections(accountId);
    for (const c of cols) records += (await this.deleteCollection(c, { force: true })).records;
    await this.db.deleteFrom('vault_subject_events').where('account_id', '=', accountId).execute();
    return { collections: cols.length, records };
  }

  // ------------------------------------------------------------------ inventory

  /** The table a privacy notice needs, from the schemas: what, how collected, why, how long, where, under which key. */
  async inventory(accountId: string): Promise<InventoryRow[]> {
    const rows: InventoryRow[] = [];
    for (const c of await this.listCollections(accountId)) {
      const key = await this.kms.findKey(this.scopeOf(c.row), c.row.kms_key_id);
      for (const p of c.schema.properties) {
        rows.push({
          collection: c.row.name, data: p.name, description: p.description, personal_data_type: p.pii_type, how_collected: p.collection_method,
          modifiable: p.modifiable, mandatory: p.mandatory, when_deleted: describeDeletion(p.deletion), purposes: p.purposes, region: c.row.region,
          kms_key_id: c.row.kms_key_id, kms_key_alias: key?.alias ?? null,
        });
      }
    }
    return rows;
  }
}

// ------------------------------------------------------------------ helpers

function secretContext(collectionId: string): Record<string, string> {
  return { 'vault:collection': collectionId, 'vault:use': 'collection-secret' };
}
function recordContext(collectionId: string, recordId: string): Record<string, string> {
  return { 'vault:collection': collectionId, 'vault:record': recordId };
}
/** A value as a transformation other than tokenize shows it (`keys` for hash). */
function transformed(p: Property, v: Value, t: Exclude<Transform, 'tokenize'>, keys: Map<string, Buffer> | null): Value {
  switch (t) {
    case 'plain':
      return v;
    case 'mask':
      return mask(p, v);
    case 'partial':
      return partial(v);
    case 'redact':
      return REDACTED;
    case 'hash':
      return keyedHash(liveOrRefuse(keys!.get('hash')!), p, indexForm(p, v));
    case 'generalize':
      return generalize(p, v);
  }
}

/** A vault_index row: collection, property, digest, record. */
type IndexRow = [string, string, string, string];

/** The index rows of a record's values (of the named ones only, if given): their digests are in their metadata. */
function indexRowsOf(collectionId: string, recordId: string, values: Record<string, StoredValue>, names?: Iterable<string>): IndexRow[] {
  const rows: IndexRow[] = [];
  for (const n of names ?? Object.keys(values)) {
    const x = Object.hasOwn(values, n) ? values[n]!.x : undefined;
    if (x !== undefined) rows.push([collectionId, n, x, recordId]);
  }
  return rows;
}

async function deleteIndexRows(db: VaultDb, rows: IndexRow[]): Promise<void> {
  for (let i = 0; i < rows.length; i += 200) {
    const chunk = rows.slice(i, i + 200);
    await sql`delete from vault_index where (collection_id, property, digest, record_id) in (values ${sql.join(chunk.map((r) => sql`(${sql.join(r)})`))})`.execute(db);
  }
}

/** A stored value or data key that fails authentication is the vault's 500 IntegrityError. */
function integrity<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof IntegrityError) throw new VaultError(500, 'IntegrityError', e.message);
    if (e instanceof KeyDroppedError) throw keyDropped();
    throw e;
  }
}
function keyDropped(): VaultError {
  return new VaultError(409, 'KeyUnavailable', 'the collection\'s KMS key became unusable (or the collection was deleted) during the operation; retry');
}
/** A key of the collection's secret, refused (409) if it was zeroed while the operation held it. */
function liveOrRefuse(key: Buffer): Buffer {
  return integrity(() => liveKey(key));
}
async function integrityAsync<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof IntegrityError) throw new VaultError(500, 'IntegrityError', e.message);
    if (e instanceof KeyDroppedError) throw keyDropped();
    throw e;
  }
}
/** When a value whose rule waits for an event is due, the event having occurred at `at`. */
function eventDue(p: Property, at: number): number {
  return at + (p.deletion.after ? durationMs(p.deletion.after, at) : 0);
}
function nextDeletion(values: Record<string, StoredValue>): number | null {
  let min: number | null = null;
  for (const v of Object.values(values)) if (v.d !== null && (min === null || v.d < min)) min = v.d;
  return min;
}
function checkSubject(id: string): void {
  if (!SUBJECT_ID.test(id)) throw new VaultError(400, 'InvalidSubject', 'a subject id is 1–128 letters, digits or ._:@-');
}
function accessRow(collectionId: string, e: AccessEntry, now: number): AccessRow {
  return { collection_id: collectionId, principal_type: e.type, principal_id: e.id, permissions_json: JSON.stringify([...new Set(e.permissions)].sort()), unmask_json: JSON.stringify([...new Set(e.unmask)].sort()), created_at: now };
}
function fromAccessRow(r: AccessRow): AccessEntry {
  return { type: r.principal_type as PrincipalType, id: r.principal_id, permissions: JSON.parse(r.permissions_json) as Permission[], unmask: JSON.parse(r.unmask_json) as string[] };
}
