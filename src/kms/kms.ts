/**
 * Key Management: customer master keys (CMKs) whose every version's material is generated here (or
 * imported), wrapped by the root key and stored only wrapped. Symmetric keys encrypt into the
 * self-describing ciphertext of ciphertext.ts; asymmetric keys encrypt (RSA-OAEP) and sign.
 *
 * Nothing of a key's state is cached between requests: every operation reads the key's row, so a key
 * disabled or scheduled for deletion on one node is refused by every node at once. Only unwrapped
 * material is cached (it never changes for a version), bounded in size and time, and zeroed when
 * evicted where Node allows it.
 */
import {
  constants,
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPair,
  getCiphers,
  privateDecrypt,
  privateEncrypt,
  publicDecrypt,
  publicEncrypt,
  randomUUID,
  sign as cryptoSign,
  timingSafeEqual,
  verify as cryptoVerify,
  type KeyObject,
} from 'node:crypto';
import { promisify } from 'node:util';
import { sql } from 'kysely';
import { randomBytes } from '../crypto/random.js';
import type { RootKeyProvider } from '../crypto/rootkey.js';
import { isUniqueViolation } from '../store/db.js';
import { openWithKey, parseHeader, sealWithKey, type EncryptionContext } from './ciphertext.js';
import { KmsError } from './errors.js';
import { deepFreeze, IamCache, SharedEpoch, type CacheSpace, type IamCacheOptions } from '../iam/cache.js';
import type { GrantRow, KeyRow, KmsDb } from './store.js';

const generateKeyPairAsync = promisify(generateKeyPair);
const DAY = 86_400_000;

export const KEY_SPECS = ['AES_256', 'SM4', 'RSA_2048', 'RSA_3072', 'RSA_4096', 'EC_P256', 'EC_P384'] as const;
export type KeySpec = (typeof KEY_SPECS)[number];
export type KeyUsage = 'ENCRYPT_DECRYPT' | 'SIGN_VERIFY';
export type KeyOrigin = 'kms' | 'external';
export type KeyState = 'enabled' | 'disabled' | 'pending_deletion' | 'pending_import' | 'destroyed';

export const SIGNING_ALGORITHMS = [
  'RSASSA_PSS_SHA_256', 'RSASSA_PSS_SHA_384', 'RSASSA_PSS_SHA_512',
  'RSASSA_PKCS1_V1_5_SHA_256', 'RSASSA_PKCS1_V1_5_SHA_384', 'RSASSA_PKCS1_V1_5_SHA_512',
  'ECDSA_SHA_256', 'ECDSA_SHA_384',
] as const;
export type SigningAlgorithm = (typeof SIGNING_ALGORITHMS)[number];
export const ASYMMETRIC_ENCRYPTION = ['RSAES_OAEP_SHA_1', 'RSAES_OAEP_SHA_256'] as const;
export type EncryptionAlgorithm = 'SYMMETRIC_DEFAULT' | (typeof ASYMMETRIC_ENCRYPTION)[number];

/** Grant operations, by their AWS names (the Huawei dialect maps its names onto these). */
export const GRANT_OPERATIONS = [
  'Encrypt', 'Decrypt', 'GenerateDataKey', 'GenerateDataKeyWithoutPlaintext', 'ReEncryptFrom', 'ReEncryptTo',
  'Sign', 'Verify', 'GetPublicKey', 'DescribeKey', 'CreateGrant', 'RetireGrant',
] as const;
export type GrantOperation = (typeof GRANT_OPERATIONS)[number];

/**
 * Alias prefixes of the keys Custos services make and manage (obs/default, vault/default,
 * privacy/default): reserved, so no customer key can take such a name (a service treats the key
 * under it as its own, e.g. OBS asks no kms:cmk:decrypt to read what its default key protects).
 */
export const MANAGED_ALIAS_PREFIXES = ['obs/', 'vault/', 'privacy/'] as const;
export function isManagedAlias(alias: string | null | undefined): boolean {
  return typeof alias === 'string' && MANAGED_ALIAS_PREFIXES.some((p) => alias.startsWith(p));
}
/** For an alias a caller asks for (create-key, update-key-alias, CreateAlias): not a managed key's. */
export function assertCustomerAlias(alias: string | null | undefined): void {
  if (isManagedAlias(alias)) throw KmsError.invalid(`aliases starting with ${MANAGED_ALIAS_PREFIXES.join(', ')} are reserved for the keys Custos services manage`);
}

export const MIN_PENDING_DAYS = 7;
export const MAX_PENDING_DAYS = 1096;
export const MIN_ROTATION_DAYS = 30;
export const MAX_ROTATION_DAYS = 2560;
export const DEFAULT_ROTATION_DAYS = 365;
/** encrypt-data's limit on plaintext, as in both clouds. */
export const MAX_PLAINTEXT_BYTES = 4096;
const IMPORT_PARAMETERS_TTL_MS = DAY;

export interface KeyScope {
  accountId: string;
  projectId: string;
  region: string;
}

export interface KmsOptions {
  now?: () => number;
  /** How long unwrapped material stays in memory after its last use (default 5 minutes). */
  materialTtlMs?: number;
  /** How many key versions' material may be held unwrapped at once (default 1000). */
  materialCacheEntries?: number;
  /**
   * Resolves once committed changes survive a power loss (Store.durable). Awaited after every change
   * of key material or state: a key whose creation or rotation was acknowledged may already protect
   * data, and a disabled, destroyed or revoked one must not come back.
   */
  durable?: () => Promise<void>;
  /** The key-row cache (see KEY_ROW_WRITERS); its staleness bound is IAM's, 1 s by default. */
  rowCache?: Partial<IamCacheOptions>;
}

/**
 * Methods that change a key's row (state, versions, alias, tags, rotation, import). Each is wrapped:
 * - a key row it is handed from the cache is read again from the database first, so it decides on
 *   the current row, never on one cached before another node changed it (a disable there, a tag added
 *   there);
 * - this node's key-row cache forgets everything when it completes (nothing is cached while it runs),
 *   and other nodes are told through the `kms.epoch` row, which they read at least once a second
 *   before serving a cached row.
 * So a key disabled, scheduled for deletion or destroyed on one node is refused on this node at once
 * and on every other within that bound (AWS KMS, too, applies key state changes eventually); a refusal
 * on a cached row is checked again against the database (see `usable`), so a key enabled or rotated
 * elsewhere is not refused for that second. A test checks that every method writing kms_keys or
 * kms_key_versions, or calling update, is listed; update itself is not (each caller is wrapped, so
 * wrapping it too would read the row and tell the other nodes twice a change).
 */
export const KEY_ROW_WRITERS = [
  'createKey', 'enableKey', 'disableKey', 'scheduleDeletion', 'cancelDeletion', 'updateAlias', 'updateDescription', 'setTags',
  'setRotation', 'rotate', 'expireMaterial', 'destroy', 'destroyAccountKeys', 'importParameters', 'importMaterial', 'deleteImportedMaterial',
] as const;

/**
 * Identifies imported material without revealing it: SHA-256 over a label, the key id and the 256-bit
 * material (which no one can search for from its hash).
 */
function materialFingerprint(keyId: string, material: Buffer): string {
  return createHash('sha256').update(`custos kms material fingerprint\n${keyId}\n`).update(material).digest('hex');
}

function isKeyRow(v: unknown): v is KeyRow {
  return typeof v === 'object' && v !== null && typeof (v as KeyRow).id === 'string' && typeof (v as KeyRow).account_id === 'string' && typeof (v as KeyRow).state === 'string';
}

export function isSymmetric(spec: string): boolean {
  return spec === 'AES_256' || spec === 'SM4';
}

/** Whether this build's node:crypto has what a spec needs (SM4 keys need SM4-GCM). */
export function specSupported(spec: KeySpec): boolean {
  return spec !== 'SM4' || getCiphers().includes('sm4-gcm');
}

function signingAlgorithmsFor(spec: string): SigningAlgorithm[] {
  if (spec.startsWith('RSA_')) return SIGNING_ALGORITHMS.filter((a) => a.startsWith('RSASSA_'));
  if (spec === 'EC_P256') return ['ECDSA_SHA_256'];
  if (spec === 'EC_P384') return ['ECDSA_SHA_384'];
  return [];
}
export function algorithmsFor(key: Pick<KeyRow, 'key_spec' | 'key_usage'>): { encryption: EncryptionAlgorithm[]; signing: SigningAlgorithm[] } {
  if (key.key_usage === 'SIGN_VERIFY') return { encryption: [], signing: signingAlgorithmsFor(key.key_spec) };
  return { encryption: isSymmetric(key.key_spec) ? ['SYMMETRIC_DEFAULT'] : [...ASYMMETRIC_ENCRYPTION], signing: [] };
}

const HASH_OF: Record<SigningAlgorithm, 'sha256' | 'sha384' | 'sha512'> = {
  RSASSA_PSS_SHA_256: 'sha256', RSASSA_PSS_SHA_384: 'sha384', RSASSA_PSS_SHA_512: 'sha512',
  RSASSA_PKCS1_V1_5_SHA_256: 'sha256', RSASSA_PKCS1_V1_5_SHA_384: 'sha384', RSASSA_PKCS1_V1_5_SHA_512: 'sha512',
  ECDSA_SHA_256: 'sha256', ECDSA_SHA_384: 'sha384',
};
const DIGEST_BYTES = { sha256: 32, sha384: 48, sha512: 64 } as const;
/** The DER DigestInfo prefixes of RFC 8017 §9.2, for PKCS#1 v1.5 signatures over a given digest. */
const DIGEST_INFO = {
  sha256: Buffer.from('3031300d060960864801650304020105000420', 'hex'),
  sha384: Buffer.from('3041300d060960864801650304020205000430', 'hex'),
  sha512: Buffer.from('3051300d060960864801650304020305000440', 'hex'),
} as const;

/** Unwrapped material by key version: bounded, expiring, zeroed on eviction (raw keys; KeyObjects cannot be). */
class MaterialCache {
  private readonly entries = new Map<string, { value: Buffer | KeyObject; expires: number }>();
  constructor(
    private readonly max: number,
    private readonly ttlMs: number,
    private readonly now: () => number,
  ) {}

  get(id: string): Buffer | KeyObject | undefined {
    const e = this.entries.get(id);
    if (!e) return undefined;
    if (e.expires <= this.now()) {
      this.drop(id);
      return undefined;
    }
    e.expires = this.now() + this.ttlMs;
    this.entries.delete(id);
    this.entries.set(id, e);
    return e.value;
  }

  set(id: string, value: Buffer | KeyObject): void {
    this.drop(id);
    while (this.entries.size >= this.max) this.drop(this.entries.keys().next().value as string);
    this.entries.set(id, { value, expires: this.now() + this.ttlMs });
  }

  drop(id: string): void {
    const e = this.entries.get(id);
    if (!e) return;
    this.entries.delete(id);
    if (Buffer.isBuffer(e.value)) e.value.fill(0);
  }

  dropKey(keyId: string): void {
    for (const id of [...this.entries.keys()]) if (id.startsWith(`${keyId}/`)) this.drop(id);
  }

  sweep(): void {
    const now = this.now();
    for (const [id, e] of [...this.entries]) if (e.expires <= now) this.drop(id);
  }

  get size(): number {
    return this.entries.size;
  }
}

export interface ImportParameters {
  keyId: string;
  importToken: string;
  publicKey: Buffer;
  expiresAt: number;
}

export class KmsService {
  private readonly now: () => number;
  private readonly cache: MaterialCache;
  private readonly unwrapping = new Map<string, Promise<Buffer | KeyObject>>();
  readonly stats = { materialUnwraps: 0, materialCacheHits: 0, rotations: 0, destroyed: 0 };
  /** Key rows by account, project and id or alias (every KMS call, OBS write and vault write looks one up). */
  readonly rowCache: IamCache;
  private readonly keyRows: CacheSpace<KeyRow>;
  private readonly epoch: SharedEpoch;

  constructor(
    private readonly db: KmsDb,
    private readonly root: RootKeyProvider,
    private readonly opts: KmsOptions = {},
  ) {
    this.now = opts.now ?? Date.now;
    this.cache = new MaterialCache(opts.materialCacheEntries ?? 1000, opts.materialTtlMs ?? 300_000, this.now);
    const epoch = new SharedEpoch(db as unknown as ConstructorParameters<typeof SharedEpoch>[0], 'kms.epoch', () => this.rowCache);
    this.epoch = epoch;
    this.rowCache = new IamCache(() => epoch.read(), opts.rowCache);
    this.keyRows = this.rowCache.space('key');
    const self = this as unknown as Record<string, (...args: unknown[]) => Promise<unknown>>;
    for (const name of KEY_ROW_WRITERS) {
      const original = self[name]!;
      self[name] = (...args: unknown[]) =>
        this.rowCache.mutation(async () => {
          // Other nodes are told unless nothing changed: a refusal of the caller's request (4xx, thrown
          // before anything is written) or a job step another node did (false). Telling them for
          // nothing would empty every node's key cache at any tenant's whim.
          let changed = true;
          try {
            // A row from the cache (frozen) is read again; one a caller just read from the database (the
            // jobs' own selects) is not, since a conditional write on it is what makes a job step happen
            // once across nodes (a rotation re-read after another node's would rotate again).
            if (isKeyRow(args[0]) && Object.isFrozen(args[0])) args[0] = await this.currentRow(args[0]);
            const result = await original.apply(this, args);
            if (result === false) changed = false;
            return result;
          } catch (e) {
            // A unique violation is a statement refused whole (an alias in use), inside update() too.
            if ((e instanceof KmsError && e.status < 500) || isUniqueViolation(e)) changed = false;
            throw e;
          } finally {
            if (changed) await this.epoch.bump();
          }
        });
    }
  }

  /** The key's row as the database holds it now (never from the cache); a row since removed stays as given. */
  private async currentRow(key: KeyRow): Promise<KeyRow> {
    const row = await this.db.selectFrom('kms_keys').selectAll().where('id', '=', key.id).where('account_id', '=', key.account_id).executeTakeFirst();
    return row ?? key;
  }

  /**
   * The key, if it may be used for `usage` (else the refusal). A refusal on a cached row is checked
   * again against the database: the row may predate another node enabling or rotating the key.
   */
  private async usable(key: KeyRow, usage: KeyUsage, version?: number): Promise<KeyRow> {
    const ok = (k: KeyRow) => {
      this.assertUsable(k, usage);
      if (version !== undefined && (version < 1 || version > k.current_version)) throw new KmsError(400, 'InvalidCiphertext', 'the ciphertext names a key version that does not exist');
      return k;
    };
    try {
      return ok(key);
    } catch {
      return ok(await this.currentRow(key));
    }
  }

  /**
   * The key's row if it may encrypt and decrypt now, else KMS's refusal: for callers that keep what
   * the key unwrapped (the vault's collection secrets) and must stop using it once the key is disabled
   * or scheduled for deletion, as a decrypt would.
   */
  async checkUsable(key: KeyRow): Promise<KeyRow> {
    return this.usable(key, 'ENCRYPT_DECRYPT');
  }

  /**
   * The key's row from this node's cache, when the cache may serve it and the row says the key may
   * encrypt and decrypt now; undefined otherwise, and the caller takes getKey and checkUsable.
   * Synchronous, for callers that keep what the key unwrapped and check the key on each use.
   */
  cachedUsableKey(scope: KeyScope, ref: string): KeyRow | undefined {
    const k = this.keyRows.get(`${scope.accountId}/${scope.projectId}/${ref}`);
    if (!k) return undefined;
    try {
      this.assertUsable(k, 'ENCRYPT_DECRYPT');
    } catch {
      return undefined;
    }
    return k;
  }

  /** One read of the `kms.epoch` row: a change made by another node empties this node's key-row cache. */
  async pollEpoch(): Promise<void> {
    await this.rowCache.poll();
  }

  get cachedMaterial(): number {
    return this.cache.size;
  }

  // ------------------------------------------------------------------ keys

  async createKey(scope: KeyScope, input: { alias?: string | undefined; description?: string | undefined; keySpec: KeySpec; keyUsage?: KeyUsage | undefined; origin?: KeyOrigin | undefined; tags?: Record<string, string> | undefined }): Promise<KeyRow> {
    const spec = input.keySpec;
    if (!specSupported(spec)) throw new KmsError(400, 'Unsupported', `${spec} keys need SM4-GCM, which this server's crypto library does not provide`);
    const usage: KeyUsage = input.keyUsage ?? (spec.startsWith('EC_') ? 'SIGN_VERIFY' : 'ENCRYPT_DECRYPT');
    if (isSymmetric(spec) && usage !== 'ENCRYPT_DECRYPT') throw KmsError.invalid(`a ${spec} key can only be used for ENCRYPT_DECRYPT`);
    if (spec.startsWith('EC_') && usage !== 'SIGN_VERIFY') throw KmsError.invalid(`a ${spec} key can only be used for SIGN_VERIFY`);
    const origin = input.origin ?? 'kms';
    if (origin === 'external' && spec !== 'AES_256') throw new KmsError(400, 'Unsupported', 'imported key material is supported for AES_256 keys only');
    const tags = input.tags ?? {};
    checkTags(tags);
    const id = randomUUID();
    const now = this.now();
    const row: KeyRow = {
      id, account_id: scope.accountId, project_id: scope.projectId, region: scope.region,
      alias: input.alias ?? null, alias_created_at: input.alias ? now : null,
      description: input.description ?? '', key_spec: spec, key_usage: usage, origin,
      state: origin === 'external' ? 'pending_import' : 'enabled',
      created_at: now, updated_at: now, deletion_date: null, destroyed_at: null,
      current_version: origin === 'external' ? 0 : 1,
      rotation_enabled: 0, rotation_interval_days: DEFAULT_ROTATION_DAYS, next_rotation_at: null, last_rotated_at: null,
      tags_json: JSON.stringify(tags),
      import_token_hash: null, import_wrapping_key: null, import_wrapping_algorithm: null, import_expires_at: null, material_expires_at: null, material_fingerprint: null,
    };
    const version = origin === 'external' ? null : await this.newVersion(row, 1);
    try {
      await this.db.transaction().execute(async (tx) => {
        await tx.insertInto('kms_keys').values(row).execute();
        if (version) await tx.insertInto('kms_key_versions').values(version).execute();
      });
      await this.persisted();
    } catch (e) {
      if (isUniqueViolation(e)) throw new KmsError(409, 'AlreadyExists', `the alias ${input.alias} is already in use in this project`);
      throw e;
    }
    return row;
  }

  /** Generates a version's material and wraps it under the root key. */
  private async newVersion(key: Pick<KeyRow, 'id' | 'account_id' | 'key_spec'>, version: number) {
    let material: Buffer;
    let publicKey: string | null = null;
    const spec = key.key_spec;
    if (isSymmetric(spec)) material = randomBytes(32);
    else {
      const pair = spec.startsWith('RSA_')
        ? await generateKeyPairAsync('rsa', { modulusLength: Number(spec.slice(4)) })
        : await generateKeyPairAsync('ec', { namedCurve: spec === 'EC_P256' ? 'P-256' : 'P-384' });
      material = pair.privateKey.export({ type: 'pkcs8', format: 'der' });
      publicKey = pair.publicKey.export({ type: 'spki', format: 'der' }).toString('base64');
    }
    try {
      const wrapped = await this.root.wrap(material, versionAad(key, version));
      return { key_id: key.id, version, material_wrapped: wrapped.toString('base64'), public_key: publicKey, created_at: this.now() };
    } finally {
      material.fill(0);
    }
  }

  /** A key of the caller's project by id (or alias); another project's or tenant's key is not found. */
  /**
   * A service's default key in a project (`obs/default`, `vault/default`, ...), made on first use; two
   * nodes making it at once end up with the same key (the alias is unique per project).
   */
  async defaultKey(scope: KeyScope, alias: string, description: string): Promise<KeyRow> {
    const found = await this.findKey(scope, alias);
    if (found) return found;
    try {
      return await this.createKey(scope, { alias, description, keySpec: 'AES_256' });
    } catch (e) {
      const again = await this.findKey(scope, alias);
      if (again) return again;
      throw e;
    }
  }

  /**
   * A key of the project by id or alias. Every KMS operation (and every OBS and vault write) starts
   * here, so rows come from the per-node cache while it is fresh (see KEY_ROW_WRITERS). The row
   * handed out is shared and frozen.
   */
  async findKey(scope: KeyScope, ref: string): Promise<KeyRow | undefined> {
    const stale = this.rowCache.ensureFresh();
    if (stale) await stale;
    const k = `${scope.accountId}/${scope.projectId}/${ref}`;
    return this.keyRows.get(k) ?? this.keyRows.load(k, async () => {
      // One SQL template: building the query cost more than running it.
      const by = UUID.test(ref) ? sql`id = ${ref}` : sql`alias = ${ref}`;
      const { rows } = await sql<KeyRow>`select * from kms_keys where account_id = ${scope.accountId} and project_id = ${scope.projectId} and ${by}`.execute(this.db);
      return rows[0] ? deepFreeze(rows[0]) : undefined;
    });
  }

  async getKey(scope: KeyScope, ref: string): Promise<KeyRow> {
    const key = await this.findKey(scope, ref);
    if (!key) throw KmsError.notFound();
    return key;
  }

  async listKeys(scope: KeyScope, opts: { limit: number; offset: number; state?: KeyState | undefined; keySpec?: string | undefined }): Promise<{ keys: KeyRow[]; total: number; next: number | null }> {
    let q = this.db.selectFrom('kms_keys').where('account_id', '=', scope.accountId).where('project_id', '=', scope.projectId).where('state', '!=', 'destroyed');
    if (opts.state) q = q.where('state', '=', opts.state);
    if (opts.keySpec) q = q.where('key_spec', '=', opts.keySpec);
    const [{ n }] = (await q.select((eb) => eb.fn.countAll<number>().as('n')).execute()) as [{ n: number }];
    const keys = await q.selectAll().orderBy('created_at').orderBy('id').limit(opts.limit).offset(opts.offset).execute();
    const total = Number(n);
    return { keys, total, next: opts.offset + keys.length < total ? opts.offset + keys.length : null };
  }

  async listAliases(scope: KeyScope, keyId?: string): Promise<KeyRow[]> {
    let q = this.db.selectFrom('kms_keys').selectAll().where('account_id', '=', scope.accountId).where('project_id', '=', scope.projectId).where('alias', 'is not', null);
    if (keyId) q = q.where('id', '=', keyId);
    return q.orderBy('alias').execute();
  }

  private async update(key: KeyRow, patch: Partial<KeyRow>, expectState?: string[]): Promise<KeyRow> {
    let q = this.db.updateTable('kms_keys').set({ ...patch, updated_at: this.now() }).where('id', '=', key.id);
    if (expectState) q = q.where('state', 'in', expectState);
    const r = await q.executeTakeFirst();
    if (Number(r.numUpdatedRows) === 0) {
      const fresh = await this.db.selectFrom('kms_keys').selectAll().where('id', '=', key.id).executeTakeFirst();
      if (fresh) this.assertNotDestroyed(fresh);
      throw new KmsError(409, 'InvalidState', `key ${key.id} changed state meanwhile (now ${fresh?.state ?? 'gone'}); retry`);
    }
    await this.persisted();
    return { ...key, ...patch };
  }

  private async persisted(): Promise<void> {
    await this.opts.durable?.();
  }

  private assertNotDestroyed(key: KeyRow): void {
    if (key.state === 'destroyed') {
      throw new KmsError(400, 'KeyDestroyed', `key ${key.id} was destroyed on ${new Date(key.destroyed_at ?? 0).toISOString()}: its material is gone and nothing encrypted under it can be decrypted`);
    }
  }

  async enableKey(key: KeyRow): Promise<KeyRow> {
    this.assertNotDestroyed(key);
    if (key.state === 'enabled') return key;
    if (key.state !== 'disabled') throw this.stateError(key);
    return this.update(key, { state: 'enabled' }, ['disabled', 'enabled']);
  }

  async disableKey(key: KeyRow): Promise<KeyRow> {
    this.assertNotDestroyed(key);
    if (key.state === 'disabled') return key;
    if (key.state !== 'enabled') throw this.stateError(key);
    return this.update(key, { state: 'disabled' }, ['enabled', 'disabled']);
  }

  async scheduleDeletion(key: KeyRow, pendingDays: number): Promise<KeyRow> {
    this.assertNotDestroyed(key);
    if (!Number.isInteger(pendingDays) || pendingDays < MIN_PENDING_DAYS || pendingDays > MAX_PENDING_DAYS) {
      throw KmsError.invalid(`the waiting period must be ${MIN_PENDING_DAYS} to ${MAX_PENDING_DAYS} days`);
    }
    if (key.state === 'pending_deletion') throw this.stateError(key);
    return this.update(key, { state: 'pending_deletion', deletion_date: this.now() + pendingDays * DAY }, ['enabled', 'disabled', 'pending_import']);
  }

  /** A key whose deletion is cancelled comes back disabled (or still waiting for material), as in both clouds. */
  async cancelDeletion(key: KeyRow): Promise<KeyRow> {
    this.assertNotDestroyed(key);
    if (key.state !== 'pending_deletion') throw new KmsError(400, 'InvalidState', `key ${key.id} is not pending deletion`);
    // A key whose imported material was deleted (or never imported) goes back to waiting for it.
    const material = await this.db.selectFrom('kms_key_versions').select('version').where('key_id', '=', key.id).where('material_wrapped', 'is not', null).limit(1).executeTakeFirst();
    return this.update(key, { state: material ? 'disabled' : 'pending_import', deletion_date: null }, ['pending_deletion']);
  }

  async updateAlias(key: KeyRow, alias: string | null): Promise<KeyRow> {
    this.assertNotDestroyed(key);
    if (isManagedAlias(key.alias)) throw KmsError.invalid(`key ${key.id} is managed by a Custos service (${key.alias}): its alias does not change`);
    assertCustomerAlias(alias);
    try {
      return await this.update(key, { alias, alias_created_at: alias ? this.now() : null });
    } catch (e) {
      if (isUniqueViolation(e)) throw new KmsError(409, 'AlreadyExists', `the alias ${alias} is already in use in this project`);
      throw e;
    }
  }

  async updateDescription(key: KeyRow, description: string): Promise<KeyRow> {
    this.assertNotDestroyed(key);
    return this.update(key, { description });
  }

  tagsOf(key: KeyRow): Record<string, string> {
    return JSON.parse(key.tags_json) as Record<string, string>;
  }

  async setTags(key: KeyRow, add: Record<string, string>, remove: string[]): Promise<Record<string, string>> {
    this.assertNotDestroyed(key);
    const tags = this.tagsOf(key);
    for (const k of remove) delete tags[k];
    Object.assign(tags, add);
    checkTags(tags);
    await this.update(key, { tags_json: JSON.stringify(tags) });
    return tags;
  }

  // ------------------------------------------------------------------ rotation

  async setRotation(key: KeyRow, enabled: boolean, intervalDays?: number): Promise<KeyRow> {
    this.assertNotDestroyed(key);
    if (!isSymmetric(key.key_spec) || key.origin !== 'kms') {
      throw new KmsError(400, 'Unsupported', 'automatic rotation is available for symmetric keys whose material KMS generated');
    }
    if (key.state === 'pending_deletion') throw this.stateError(key);
    const days = intervalDays ?? key.rotation_interval_days;
    if (!Number.isInteger(days) || days < MIN_ROTATION_DAYS || days > MAX_ROTATION_DAYS) {
      throw KmsError.invalid(`the rotation interval must be ${MIN_ROTATION_DAYS} to ${MAX_ROTATION_DAYS} days`);
    }
    const base = key.last_rotated_at ?? key.created_at;
    return this.update(key, {
      rotation_enabled: enabled ? 1 : 0,
      rotation_interval_days: days,
      next_rotation_at: enabled ? Math.max(base + days * DAY, this.now()) : null,
    });
  }

  /**
   * Makes version `from + 1` the key's current version. Any number of nodes may try at once: the
   * version's primary key lets exactly one of them insert it; the others get false.
   */
  async rotate(key: KeyRow): Promise<boolean> {
    this.assertNotDestroyed(key);
    if (!isSymmetric(key.key_spec) || key.origin !== 'kms') throw new KmsError(400, 'Unsupported', 'only symmetric keys whose material KMS generated can be rotated');
    if (key.state !== 'enabled' && key.state !== 'disabled') throw this.stateError(key);
    const next = key.current_version + 1;
    const version = await this.newVersion(key, next);
    const now = this.now();
    try {
      const won = await this.db.transaction().execute(async (tx) => {
        await tx.insertInto('kms_key_versions').values(version).execute();
        const r = await tx
          .updateTable('kms_keys')
          .set({
            current_version: next, last_rotated_at: now, updated_at: now,
            next_rotation_at: key.rotation_enabled ? now + key.rotation_interval_days * DAY : null,
          })
          .where('id', '=', key.id)
          .where('current_version', '=', key.current_version)
          .where('state', 'in', ['enabled', 'disabled'])
          .executeTakeFirst();
        if (Number(r.numUpdatedRows) !== 1) throw new LostRace();
        return true;
      });
      await this.persisted();
      this.stats.rotations++;
      return won;
    } catch (e) {
      if (e instanceof LostRace || isUniqueViolation(e)) return false;
      throw e;
    }
  }

  // ------------------------------------------------------------------ deletion and background work

  /**
   * The background work any node may run at any time; every step is a conditional update, so nodes
   * running it together do each piece once: destroy keys whose waiting period is over, drop imported
   * material that expired, rotate keys that are due.
   */
  async runDueJobs(): Promise<{ destroyed: number; expired: number; rotated: number }> {
    const now = this.now();
    let destroyed = 0;
    let expired = 0;
    let rotated = 0;
    const due = await this.db.selectFrom('kms_keys').select('id').where('state', '=', 'pending_deletion').where('deletion_date', '<=', now).limit(500).execute();
    for (const { id } of due) if (await this.destroy(id, now)) destroyed++;

    const lapsed = await this.db.selectFrom('kms_keys').selectAll().where('material_expires_at', '<=', now).where('state', 'in', ['enabled', 'disabled']).limit(500).execute();
    for (const key of lapsed) if (await this.expireMaterial(key.id, now)) expired++;

    const rotations = await this.db.selectFrom('kms_keys').selectAll().where('rotation_enabled', '=', 1).where('next_rotation_at', '<=', now).where('state', '=', 'enabled').limit(500).execute();
    for (const key of rotations) if (await this.rotate(key)) rotated++;
    this.cache.sweep();
    return { destroyed, expired, rotated };
  }

  /** Imported material whose expiry passed is dropped: the key waits for new material. */
  private async expireMaterial(keyId: string, now: number): Promise<boolean> {
    const done = await this.db.transaction().execute(async (tx) => {
      const r = await tx.updateTable('kms_keys').set({ state: 'pending_import', material_expires_at: null, updated_at: now })
        .where('id', '=', keyId).where('material_expires_at', '<=', now).where('state', 'in', ['enabled', 'disabled']).executeTakeFirst();
      if (Number(r.numUpdatedRows) !== 1) return false;
      await tx.updateTable('kms_key_versions').set({ material_wrapped: null }).where('key_id', '=', keyId).execute();
      return true;
    });
    this.cache.dropKey(keyId);
    if (done) await this.persisted();
    return done;
  }

  /** Crypto-shredding: every version's wrapped material is overwritten; the key row stays to say so. */
  private async destroy(keyId: string, now: number): Promise<boolean> {
    const done = await this.db.transaction().execute(async (tx) => {
      const r = await tx
        .updateTable('kms_keys')
        .set({ state: 'destroyed', destroyed_at: now, updated_at: now, alias: null, rotation_enabled: 0, next_rotation_at: null, import_token_hash: null, import_wrapping_key: null, import_expires_at: null })
        .where('id', '=', keyId).where('state', '=', 'pending_deletion').where('deletion_date', '<=', now)
        .executeTakeFirst();
      if (Number(r.numUpdatedRows) !== 1) return false;
      await tx.updateTable('kms_key_versions').set({ material_wrapped: null }).where('key_id', '=', keyId).execute();
      await tx.deleteFrom('kms_grants').where('key_id', '=', keyId).execute();
      return true;
    });
    this.cache.dropKey(keyId);
    if (done) {
      await this.persisted();
      this.stats.destroyed++;
    }
    return done;
  }

  /**
   * Account destruction: every key of the account is destroyed at once, whatever its state or
   * waiting period (crypto-shredding of everything encrypted under it), its grants removed.
   */
  async destroyAccountKeys(accountId: string): Promise<string[]> {
    const now = this.now();
    const keys = await this.db.selectFrom('kms_keys').select('id').where('account_id', '=', accountId).where('state', '!=', 'destroyed').execute();
    const ids = keys.map((k) => k.id);
    for (const id of ids) {
      await this.db.transaction().execute(async (tx) => {
        await tx.updateTable('kms_keys')
          .set({ state: 'destroyed', destroyed_at: now, updated_at: now, alias: null, rotation_enabled: 0, next_rotation_at: null, import_token_hash: null, import_wrapping_key: null, import_expires_at: null, tags_json: '{}', description: '' })
          .where('id', '=', id).execute();
        await tx.updateTable('kms_key_versions').set({ material_wrapped: null }).where('key_id', '=', id).execute();
        await tx.deleteFrom('kms_grants').where('key_id', '=', id).execute();
      });
      this.cache.dropKey(id);
      this.stats.destroyed++;
    }
    if (ids.length) await this.persisted();
    return ids;
  }

  // ------------------------------------------------------------------ crypto

  private stateError(key: KeyRow): KmsError {
    switch (key.state) {
      case 'destroyed':
        this.assertNotDestroyed(key);
        break;
      case 'disabled':
        return new KmsError(400, 'Disabled', `key ${key.id} is disabled`);
      case 'pending_deletion':
        return new KmsError(400, 'InvalidState', `key ${key.id} is pending deletion (scheduled for ${new Date(key.deletion_date ?? 0).toISOString()}); cancel the deletion to use it`);
      case 'pending_import':
        return new KmsError(400, 'InvalidState', `key ${key.id} has no key material; import it first`);
    }
    return new KmsError(400, 'InvalidState', `key ${key.id} is ${key.state}`);
  }

  /** The key may do `usage` now. */
  assertUsable(key: KeyRow, usage: KeyUsage): void {
    if (key.state !== 'enabled') throw this.stateError(key);
    if (key.material_expires_at !== null && key.material_expires_at <= this.now()) {
      throw new KmsError(400, 'InvalidState', `the imported material of key ${key.id} has expired; import it again`);
    }
    if (key.key_usage !== usage) throw new KmsError(400, 'InvalidKeyUsage', `key ${key.id} is for ${key.key_usage}, not ${usage}`);
  }

  private async material(key: KeyRow, version: number): Promise<Buffer | KeyObject> {
    const id = `${key.id}/${version}`;
    const hit = this.cache.get(id);
    if (hit) {
      this.stats.materialCacheHits++;
      return hit;
    }
    let pending = this.unwrapping.get(id);
    if (!pending) {
      pending = (async () => {
        const row = await this.db.selectFrom('kms_key_versions').select(['material_wrapped']).where('key_id', '=', key.id).where('version', '=', version).executeTakeFirst();
        if (!row) throw new KmsError(400, 'InvalidCiphertext', 'the ciphertext names a key version that does not exist');
        if (row.material_wrapped === null) throw new KmsError(400, 'KeyDestroyed', `the material of key ${key.id} was destroyed: nothing encrypted under it can be decrypted`);
        this.stats.materialUnwraps++;
        const raw = await this.root.unwrap(Buffer.from(row.material_wrapped, 'base64'), versionAad(key, version));
        let value: Buffer | KeyObject = raw;
        if (!isSymmetric(key.key_spec)) {
          value = createPrivateKey({ key: raw, format: 'der', type: 'pkcs8' });
          raw.fill(0);
        }
        this.cache.set(id, value);
        return value;
      })().finally(() => this.unwrapping.delete(id));
      this.unwrapping.set(id, pending);
    }
    return pending;
  }

  async encrypt(key: KeyRow, plaintext: Buffer, ctx: EncryptionContext | undefined, algorithm: EncryptionAlgorithm = 'SYMMETRIC_DEFAULT'): Promise<Buffer> {
    key = await this.usable(key, 'ENCRYPT_DECRYPT');
    if (plaintext.length === 0 || plaintext.length > MAX_PLAINTEXT_BYTES) throw KmsError.invalid(`the plaintext must be 1 to ${MAX_PLAINTEXT_BYTES} bytes`);
    if (isSymmetric(key.key_spec)) {
      if (algorithm !== 'SYMMETRIC_DEFAULT') throw KmsError.invalid(`a symmetric key encrypts with SYMMETRIC_DEFAULT, not ${algorithm}`);
      const material = (await this.material(key, key.current_version)) as Buffer;
      return sealWithKey(material, key.id, key.current_version, key.account_id, ctx, plaintext);
    }
    if (!ASYMMETRIC_ENCRYPTION.includes(algorithm as (typeof ASYMMETRIC_ENCRYPTION)[number])) {
      throw KmsError.invalid(`an RSA key encrypts with ${ASYMMETRIC_ENCRYPTION.join(' or ')}`);
    }
    const pub = await this.publicKeyObject(key);
    try {
      return publicEncrypt({ key: pub, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: algorithm === 'RSAES_OAEP_SHA_1' ? 'sha1' : 'sha256' }, plaintext);
    } catch {
      throw KmsError.invalid(`the plaintext is too long for ${key.key_spec} with ${algorithm}`);
    }
  }

  /** The key a symmetric ciphertext names, for routes that authorize before decrypting. */
  keyIdOf(ciphertext: Buffer): string {
    return parseHeader(ciphertext).keyId;
  }

  async decrypt(key: KeyRow, ciphertext: Buffer, ctx: EncryptionContext | undefined, algorithm: EncryptionAlgorithm = 'SYMMETRIC_DEFAULT'): Promise<Buffer> {
    if (isSymmetric(key.key_spec)) {
      const header = parseHeader(ciphertext);
      if (header.keyId !== key.id) throw new KmsError(400, 'IncorrectKey', 'the ciphertext was not encrypted under this key');
      key = await this.usable(key, 'ENCRYPT_DECRYPT', header.version);
      const material = (await this.material(key, header.version)) as Buffer;
      return openWithKey(material, key.account_id, ctx, ciphertext);
    }
    key = await this.usable(key, 'ENCRYPT_DECRYPT');
    if (!ASYMMETRIC_ENCRYPTION.includes(algorithm as (typeof ASYMMETRIC_ENCRYPTION)[number])) {
      throw KmsError.invalid(`an RSA key decrypts with ${ASYMMETRIC_ENCRYPTION.join(' or ')}`);
    }
    const priv = (await this.material(key, key.current_version)) as KeyObject;
    try {
      return privateDecrypt({ key: priv, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: algorithm === 'RSAES_OAEP_SHA_1' ? 'sha1' : 'sha256' }, ciphertext);
    } catch {
      throw new KmsError(400, 'InvalidCiphertext', 'the ciphertext could not be decrypted with this key and algorithm');
    }
  }

  async generateDataKey(key: KeyRow, bytes: number, ctx: EncryptionContext | undefined): Promise<{ plaintext: Buffer; ciphertext: Buffer }> {
    if (!Number.isInteger(bytes) || bytes < 1 || bytes > 1024) throw KmsError.invalid('a data key is 1 to 1024 bytes');
    if (!isSymmetric(key.key_spec)) throw new KmsError(400, 'InvalidKeyUsage', 'data keys are generated under symmetric keys');
    const plaintext = randomBytes(bytes);
    return { plaintext, ciphertext: await this.encrypt(key, plaintext, ctx) };
  }

  generateRandom(bytes: number): Buffer {
    if (!Number.isInteger(bytes) || bytes < 1 || bytes > 1024) throw KmsError.invalid('1 to 1024 random bytes may be asked for');
    return randomBytes(bytes);
  }

  private async publicKeyObject(key: KeyRow): Promise<KeyObject> {
    const row = await this.db.selectFrom('kms_key_versions').select('public_key').where('key_id', '=', key.id).where('version', '=', key.current_version).executeTakeFirst();
    if (!row?.public_key) throw new KmsError(400, 'Unsupported', `key ${key.id} has no public key`);
    return createPublicKey({ key: Buffer.from(row.public_key, 'base64'), format: 'der', type: 'spki' });
  }

  async publicKey(key: KeyRow): Promise<Buffer> {
    this.assertNotDestroyed(key);
    if (isSymmetric(key.key_spec)) throw new KmsError(400, 'Unsupported', 'a symmetric key has no public key');
    if (key.state === 'disabled' || key.state === 'pending_deletion') throw this.stateError(key);
    return (await this.publicKeyObject(key)).export({ type: 'spki', format: 'der' });
  }

  private signingParams(key: KeyRow, algorithm: string, messageType: 'RAW' | 'DIGEST', message: Buffer) {
    if (!signingAlgorithmsFor(key.key_spec).includes(algorithm as SigningAlgorithm)) {
      throw KmsError.invalid(`${key.key_spec} keys sign with ${signingAlgorithmsFor(key.key_spec).join(', ')}`);
    }
    const alg = algorithm as SigningAlgorithm;
    const hash = HASH_OF[alg];
    if (message.length === 0 || message.length > MAX_PLAINTEXT_BYTES) throw KmsError.invalid(`the message must be 1 to ${MAX_PLAINTEXT_BYTES} bytes`);
    if (messageType === 'DIGEST') {
      if (message.length !== DIGEST_BYTES[hash]) throw KmsError.invalid(`a ${hash.toUpperCase()} digest is ${DIGEST_BYTES[hash]} bytes`);
      if (!alg.startsWith('RSASSA_PKCS1_V1_5')) {
        throw new KmsError(400, 'Unsupported', `message_type DIGEST is supported for RSASSA_PKCS1_V1_5_* only; send the RAW message for ${alg}`);
      }
    }
    const pss = alg.startsWith('RSASSA_PSS');
    return { alg, hash, options: pss ? { padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: DIGEST_BYTES[hash] } : alg.startsWith('ECDSA') ? { dsaEncoding: 'der' as const } : {} };
  }

  async sign(key: KeyRow, message: Buffer, messageType: 'RAW' | 'DIGEST', algorithm: string): Promise<Buffer> {
    key = await this.usable(key, 'SIGN_VERIFY');
    const { hash, options } = this.signingParams(key, algorithm, messageType, message);
    const priv = (await this.material(key, key.current_version)) as KeyObject;
    if (messageType === 'DIGEST') return privateEncrypt({ key: priv, padding: constants.RSA_PKCS1_PADDING }, Buffer.concat([DIGEST_INFO[hash], message]));
    return cryptoSign(hash, message, { key: priv, ...options });
  }

  async verify(key: KeyRow, message: Buffer, messageType: 'RAW' | 'DIGEST', signature: Buffer, algorithm: string): Promise<boolean> {
    key = await this.usable(key, 'SIGN_VERIFY');
    const { hash, options } = this.signingParams(key, algorithm, messageType, message);
    const pub = await this.publicKeyObject(key);
    try {
      if (messageType === 'DIGEST') {
        const expected = Buffer.concat([DIGEST_INFO[hash], message]);
        const got = publicDecrypt({ key: pub, padding: constants.RSA_PKCS1_PADDING }, signature);
        return got.length === expected.length && timingSafeEqual(got, expected);
      }
      return cryptoVerify(hash, message, { key: pub, ...options }, signature);
    } catch {
      return false;
    }
  }

  // ------------------------------------------------------------------ bring your own key

  async importParameters(key: KeyRow, wrappingAlgorithm: string, wrappingKeySpec = 'RSA_2048'): Promise<ImportParameters> {
    this.assertNotDestroyed(key);
    if (key.origin !== 'external') throw new KmsError(400, 'Unsupported', `key ${key.id} was created with KMS-generated material; only keys of origin external take imported material`);
    if (key.state !== 'pending_import') throw new KmsError(400, 'InvalidState', `key ${key.id} already has material; delete it first to import other material`);
    if (wrappingAlgorithm !== 'RSAES_OAEP_SHA_256' && wrappingAlgorithm !== 'RSAES_OAEP_SHA_1') {
      throw new KmsError(400, 'Unsupported', 'the wrapping algorithm must be RSAES_OAEP_SHA_256 or RSAES_OAEP_SHA_1');
    }
    const bits = { RSA_2048: 2048, RSA_3072: 3072, RSA_4096: 4096 }[wrappingKeySpec];
    if (!bits) throw KmsError.invalid('the wrapping key spec must be RSA_2048, RSA_3072 or RSA_4096');
    const pair = await generateKeyPairAsync('rsa', { modulusLength: bits });
    const priv = pair.privateKey.export({ type: 'pkcs8', format: 'der' });
    const wrapped = await this.root.wrap(priv, importAad(key));
    priv.fill(0);
    const token = randomBytes(32).toString('base64');
    const expiresAt = this.now() + IMPORT_PARAMETERS_TTL_MS;
    await this.update(key, {
      import_token_hash: sha256(token), import_wrapping_key: wrapped.toString('base64'),
      import_wrapping_algorithm: wrappingAlgorithm, import_expires_at: expiresAt,
    }, ['pending_import']);
    return { keyId: key.id, importToken: token, publicKey: pair.publicKey.export({ type: 'spki', format: 'der' }), expiresAt };
  }

  async importMaterial(key: KeyRow, importToken: string, encrypted: Buffer, materialExpiresAt: number | null): Promise<KeyRow> {
    this.assertNotDestroyed(key);
    if (key.state !== 'pending_import') throw new KmsError(400, 'InvalidState', `key ${key.id} is not waiting for key material`);
    if (!key.import_token_hash || !key.import_wrapping_key) throw new KmsError(400, 'InvalidImportToken', 'get the import parameters first');
    const given = Buffer.from(sha256(importToken), 'hex');
    if (!timingSafeEqual(given, Buffer.from(key.import_token_hash, 'hex'))) throw new KmsError(400, 'InvalidImportToken', 'the import token does not belong to this key');
    if ((key.import_expires_at ?? 0) <= this.now()) throw new KmsError(400, 'ExpiredImportToken', 'the import token has expired; get new import parameters');
    if (materialExpiresAt !== null && materialExpiresAt <= this.now()) throw KmsError.invalid('the material expiration time is in the past');
    const privDer = await this.root.unwrap(Buffer.from(key.import_wrapping_key, 'base64'), importAad(key));
    let material: Buffer;
    try {
      const priv = createPrivateKey({ key: privDer, format: 'der', type: 'pkcs8' });
      material = privateDecrypt({ key: priv, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: key.import_wrapping_algorithm === 'RSAES_OAEP_SHA_1' ? 'sha1' : 'sha256' }, encrypted);
    } catch {
      throw new KmsError(400, 'IncorrectKeyMaterial', 'the key material could not be unwrapped with this import token\'s wrapping key and algorithm');
    } finally {
      privDer.fill(0);
    }
    try {
      if (material.length !== 32) throw new KmsError(400, 'IncorrectKeyMaterial', `an AES_256 key's material is 32 bytes, not ${material.length}`);
      // Re-imported material must be the material first imported (as AWS KMS requires): other material
      // would leave what the key encrypted undecryptable.
      const fingerprint = materialFingerprint(key.id, material);
      if (key.material_fingerprint !== null && !timingSafeEqual(Buffer.from(fingerprint, 'hex'), Buffer.from(key.material_fingerprint, 'hex'))) {
        throw new KmsError(400, 'IncorrectKeyMaterial', `key ${key.id} was imported with other key material: import that same material again`);
      }
      const wrapped = (await this.root.wrap(material, versionAad(key, 1))).toString('base64');
      const now = this.now();
      await this.db.transaction().execute(async (tx) => {
        await tx.deleteFrom('kms_key_versions').where('key_id', '=', key.id).execute();
        await tx.insertInto('kms_key_versions').values({ key_id: key.id, version: 1, material_wrapped: wrapped, public_key: null, created_at: now }).execute();
        const r = await tx.updateTable('kms_keys').set({
          state: 'enabled', current_version: 1, material_expires_at: materialExpiresAt, updated_at: now, material_fingerprint: fingerprint,
          import_token_hash: null, import_wrapping_key: null, import_wrapping_algorithm: null, import_expires_at: null,
        }).where('id', '=', key.id).where('state', '=', 'pending_import').executeTakeFirst();
        if (Number(r.numUpdatedRows) !== 1) throw new KmsError(409, 'InvalidState', `key ${key.id} changed state meanwhile; retry`);
      });
      this.cache.dropKey(key.id);
      await this.persisted();
      return { ...key, state: 'enabled', current_version: 1, material_expires_at: materialExpiresAt, material_fingerprint: fingerprint };
    } finally {
      material.fill(0);
    }
  }

  async deleteImportedMaterial(key: KeyRow): Promise<KeyRow> {
    this.assertNotDestroyed(key);
    if (key.origin !== 'external') throw new KmsError(400, 'Unsupported', `key ${key.id} has no imported material`);
    if (key.state !== 'enabled' && key.state !== 'disabled') throw this.stateError(key);
    await this.db.transaction().execute(async (tx) => {
      await tx.updateTable('kms_key_versions').set({ material_wrapped: null }).where('key_id', '=', key.id).execute();
      await tx.updateTable('kms_keys').set({ state: 'pending_import', material_expires_at: null, updated_at: this.now() }).where('id', '=', key.id).execute();
    });
    this.cache.dropKey(key.id);
    await this.persisted();
    return { ...key, state: 'pending_import' };
  }

  // ------------------------------------------------------------------ grants

  async createGrant(key: KeyRow, issuer: string, input: { grantee: string; operations: GrantOperation[]; name?: string | undefined; retiring?: string | undefined }): Promise<GrantRow> {
    this.assertNotDestroyed(key);
    if (input.operations.length === 0) throw KmsError.invalid('a grant needs at least one operation');
    const usage = key.key_usage;
    for (const op of input.operations) {
      const forCrypto = ['Encrypt', 'Decrypt', 'GenerateDataKey', 'GenerateDataKeyWithoutPlaintext', 'ReEncryptFrom', 'ReEncryptTo'].includes(op);
      if ((forCrypto && usage !== 'ENCRYPT_DECRYPT') || ((op === 'Sign' || op === 'Verify') && usage !== 'SIGN_VERIFY')) {
        throw KmsError.invalid(`operation ${op} does not apply to a ${usage} key`);
      }
    }
    const count = await this.db.selectFrom('kms_grants').select((eb) => eb.fn.countAll<number>().as('n')).where('key_id', '=', key.id).executeTakeFirstOrThrow();
    if (Number(count.n) >= 100) throw new KmsError(400, 'LimitExceeded', 'a key has at most 100 grants');
    const row: GrantRow = {
      id: randomBytes(32).toString('hex'), key_id: key.id, account_id: key.account_id, name: input.name ?? '',
      grantee: input.grantee, retiring: input.retiring ?? null, operations_json: JSON.stringify([...new Set(input.operations)]),
      issuer, created_at: this.now(),
    };
    await this.db.insertInto('kms_grants').values(row).execute();
    await this.persisted();
    return row;
  }

  async listGrants(key: KeyRow, limit: number, offset: number): Promise<{ grants: GrantRow[]; total: number; next: number | null }> {
    const q = this.db.selectFrom('kms_grants').where('key_id', '=', key.id);
    const { n } = await q.select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow();
    const grants = await q.selectAll().orderBy('created_at').orderBy('id').limit(limit).offset(offset).execute();
    const total = Number(n);
    return { grants, total, next: offset + grants.length < total ? offset + grants.length : null };
  }

  async revokeGrant(key: KeyRow, grantId: string): Promise<void> {
    const r = await this.db.deleteFrom('kms_grants').where('key_id', '=', key.id).where('id', '=', grantId).executeTakeFirst();
    if (Number(r.numDeletedRows) === 0) throw new KmsError(404, 'InvalidGrantId', 'no such grant on this key');
    await this.persisted();
  }

  /** The grant's retiring principal or its grantee may retire it without any policy. */
  async retireGrant(key: KeyRow, grantId: string, caller: string): Promise<void> {
    const g = await this.db.selectFrom('kms_grants').selectAll().where('key_id', '=', key.id).where('id', '=', grantId).executeTakeFirst();
    if (!g) throw new KmsError(404, 'InvalidGrantId', 'no such grant on this key');
    if (g.retiring !== caller && g.grantee !== caller) throw new KmsError(403, 'AccessDenied', 'only the grant\'s retiring principal or grantee may retire it');
    await this.db.deleteFrom('kms_grants').where('id', '=', grantId).execute();
    await this.persisted();
  }

  /** Whether a grant lets `userId` perform `op` with the key (checked when no policy allows it). */
  async grantAllows(keyId: string, userId: string, op: GrantOperation): Promise<boolean> {
    const rows = await this.db.selectFrom('kms_grants').select('operations_json').where('key_id', '=', keyId).where('grantee', '=', userId).execute();
    return rows.some((r) => (JSON.parse(r.operations_json) as string[]).includes(op));
  }
}

class LostRace extends Error {}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
export function isKeyId(s: string): boolean {
  return UUID.test(s);
}

function versionAad(key: Pick<KeyRow, 'id' | 'account_id'>, version: number): Buffer {
  return Buffer.from(`custos kms key ${key.account_id}/${key.id} version ${version}`);
}
function importAad(key: Pick<KeyRow, 'id' | 'account_id'>): Buffer {
  return Buffer.from(`custos kms import wrapping key ${key.account_id}/${key.id}`);
}
function sha256(s: string): string {
  return createHash('sha256').update(s).digest('hex');
}

function checkTags(tags: Record<string, string>): void {
  const keys = Object.keys(tags);
  if (keys.length > 50) throw KmsError.invalid('a key has at most 50 tags');
  for (const k of keys) {
    if (k.length < 1 || k.length > 128 || tags[k]!.length > 256) throw KmsError.invalid('a tag key is 1 to 128 characters and its value at most 256');
  }
}
