/**
 * Object storage: buckets named per account and bound to a region (project), objects whose content is
 * stored only as ciphertext. Every object has its own data key from KMS (one KMS call per PUT and
 * per GET), and its content is encrypted in authenticated 64 KiB packages (src/crypto/stream.ts), so
 * a range read decrypts only what it returns.
 */
import { createHash, createHmac } from 'node:crypto';
import { randomBytes } from '../crypto/random.js';
import { Readable, Transform } from 'node:stream';
import { openAesGcm, sealAesGcm } from '../crypto/aead.js';
import { decryptRange, encryptedSize, encryptStream } from '../crypto/stream.js';
import { ServiceError } from '../errors.js';
import type { KeyScope, KmsService } from '../kms/kms.js';
import type { KeyRow } from '../kms/store.js';
import { ruleSelects, type LifecycleRule } from './lifecycle.js';
import { checksummer, combineCrcs, compositeChecksum, type ChecksumAlgorithm, type UploadChecksum } from './checksums.js';
import type { BlobStore } from '../store/blobs.js';
import { sql } from 'kysely';
import { isUniqueViolation } from '../store/db.js';
import type { BucketRow, ObjectRow, ObsDb, UploadPartRow, UploadRow } from './store.js';

export class ObsError extends ServiceError {
  constructor(status: number, code: string, message: string, details: Record<string, string> = {}) {
    super('OBS', status, code, message, details);
  }
}

const BUCKET_NAME = /^(?!xn--)(?!.*-s3alias$)(?!\d+\.\d+\.\d+\.\d+$)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
/** The tenant's default object key in a project, made on first use. */
export const DEFAULT_KEY_ALIAS = 'obs/default';
export const NULL_VERSION = 'null';
/** The object tag that ties an object to a data subject (data-subject requests find objects by it). */
export const SUBJECT_TAG = 'custos:subject';
/** The data subject an object is tagged with (indexed as obs_objects.subject_id). */
function subjectOf(tags: Record<string, string> | null | undefined): string | null {
  const s = tags?.[SUBJECT_TAG];
  return typeof s === 'string' && s ? s : null;
}
/** `column` begins with `prefix`, in SQL on both databases (characters, not bytes; no LIKE escaping). */
function keyStartsWith(column: string, prefix: string) {
  return sql<boolean>`substr(${sql.ref(column)}, 1, ${[...prefix].length}) = ${prefix}`;
}
/** kms_key_id of a version whose data key is sealed under a customer-provided key (SSE-C). */
const SSE_C = 'SSE-C';
export type Versioning = '' | 'Enabled' | 'Suspended';

/** Version ids sort by creation time (then randomly within a millisecond). */
function newVersionId(now: number): string {
  return now.toString(16).padStart(12, '0') + randomBytes(10).toString('hex');
}
const RETRIES = 3;
/** Another writer made a version current between a conditional write's decision and its commit. */
class WriteConflict extends Error {}

export function validBucketName(name: string): boolean {
  return BUCKET_NAME.test(name) && !name.includes('..') && !name.includes('.-') && !name.includes('-.');
}
export function validObjectKey(key: string): boolean {
  return key.length > 0 && Buffer.byteLength(key) <= 1024 && !key.includes('\u0000');
}

/** Where a multipart object's parts are: blob, plaintext size, ciphertext size. */
interface StoredPart {
  blob: string;
  size: number;
  cipher: number;
}
const MAX_PARTS = 10_000;
const MIN_PART_BYTES = 5 * 1024 * 1024;
const MAX_PART_BYTES = 5 * 1024 ** 3;

export type { LifecycleRule } from './lifecycle.js';
const DAY = 86_400_000;

export type LockMode = 'GOVERNANCE' | 'COMPLIANCE';

export interface ObjectMeta {
  contentType: string;
  metadata: Record<string, string>;
  /** Object lock retention requested for the new version (x-amz-object-lock-mode / -retain-until-date). */
  lock?: { mode: LockMode; until: number } | undefined;
  legalHold?: boolean | undefined;
  /** SSE-C: the customer's 256-bit key, checked against its MD5 by the edge; never stored. */
  customerKey?: Buffer | undefined;
  /** x-amz-tagging: the new version's tags. */
  tags?: Record<string, string> | undefined;
  /** x-amz-server-side-encryption-aws-kms-key-id: the key to encrypt under instead of the bucket's. */
  kmsKey?: string | undefined;
}

/**
 * Checks an upload after its last byte (declared length, digests, checksums): throws to refuse it, or
 * may name the verified full-object checksum (`<algorithm>:<base64>`) to keep with the object. The
 * SHA-256 is computed only for a check that says it needs one (`needsSha256`: a declared payload hash
 * or a SHA-256 checksum); it is null otherwise.
 */
export type VerifyUpload = ((digests: { md5: Buffer; sha256: Buffer | null; size: number }) => { checksum?: string } | void) & { needsSha256?: boolean };

export interface PutResult {
  etag: string;
  size: number;
  versionId: string;
}

/**
 * A conditional write: `If-None-Match: *` (only if the key has no current object) or `If-Match: <etag>`
 * (only if the current object has that ETag). Decided in the transaction that makes the new version
 * current, so two writers racing on one key cannot both pass.
 */
export interface WriteCondition {
  ifNoneMatch?: boolean;
  ifMatch?: string;
}

/** Whether an If-Match / If-None-Match header value (a list of ETags, or `*`) names the ETag. */
export function etagMatches(header: string, etag: string): boolean {
  return header.split(',').some((t) => {
    const v = t.trim();
    return v === '*' || v.replace(/^W\//, '').replace(/"/g, '') === etag;
  });
}

function checkWriteCondition(current: Pick<ObjectRow, 'etag' | 'delete_marker'> | undefined, cond: WriteCondition, where: string): void {
  const exists = current !== undefined && !current.delete_marker;
  if (cond.ifNoneMatch && exists) throw new ObsError(412, 'PreconditionFailed', 'At least one of the pre-conditions you specified did not hold (If-None-Match: the key exists)', { condition: 'If-None-Match' });
  if (cond.ifMatch !== undefined) {
    if (!exists) throw new ObsError(404, 'NoSuchKey', 'the specified key does not exist (If-Match needs a current object)', { resource: where });
    if (!etagMatches(cond.ifMatch, current.etag)) throw new ObsError(412, 'PreconditionFailed', 'At least one of the pre-conditions you specified did not hold (If-Match)', { condition: 'If-Match' });
  }
}

export interface ObsOptions {
  now?: () => number;
  maxObjectBytes: number;
  /**
   * Store content in the clear, without data keys. Only for bench/obs's baseline (the same server and
   * path without encryption); deliberately not reachable from configuration or the CLI.
   */
  plaintextBaselineForBenchmarks?: boolean;
  /** On PostgreSQL, writers of one key are serialised with a transaction-scoped advisory lock. */
  dialect?: 'sqlite' | 'postgres';
  /** Resolves once committed changes survive a power loss (Store.durable); awaited before a write is acknowledged. */
  durable?: () => Promise<void>;
}

export class ObsService {
  private readonly now: () => number;

  constructor(
    private readonly db: ObsDb,
    private readonly kms: KmsService,
    private readonly blobs: BlobStore,
    private readonly opts: ObsOptions,
  ) {
    this.now = opts.now ?? Date.now;
  }

  // ------------------------------------------------------------------ buckets

  async createBucket(scope: KeyScope, name: string, opts: { objectLock?: boolean } = {}): Promise<BucketRow> {
    if (!validBucketName(name)) throw new ObsError(400, 'InvalidBucketName', 'bucket names are 3 to 63 lower-case letters, digits, dots and hyphens, starting and ending with a letter or digit');
    const row: BucketRow = { id: randomBytes(16).toString('hex'), account_id: scope.accountId, name, project_id: scope.projectId, region: scope.region, kms_key_id: null, created_at: this.now(), versioning: opts.objectLock ? 'Enabled' : '', lifecycle_json: null,
      object_lock: opts.objectLock ? 1 : 0, lock_default_mode: null, lock_default_days: null, tags_json: null, policy_json: null, policy_compiled_json: null, cors_json: null,
      public_access_block: null, public_name: null,
    };
    try {
      await this.db.insertInto('obs_buckets').values(row).execute();
    } catch (e) {
      // Names are per account: this can only collide with the caller's own bucket.
      if (isUniqueViolation(e)) throw new ObsError(409, 'BucketAlreadyOwnedByYou', `you already own a bucket named ${name}`, { resource: `/${name}` });
      throw e;
    }
    return row;
  }

  async findBucket(accountId: string, name: string): Promise<BucketRow | undefined> {
    return this.db.selectFrom('obs_buckets').selectAll().where('account_id', '=', accountId).where('name', '=', name).executeTakeFirst();
  }

  async listBuckets(accountId: string): Promise<BucketRow[]> {
    return this.db.selectFrom('obs_buckets').selectAll().where('account_id', '=', accountId).orderBy('name').execute();
  }

  async deleteBucket(bucket: BucketRow): Promise<void> {
    const any = await this.db.selectFrom('obs_objects').select('key').where('bucket_id', '=', bucket.id).limit(1).executeTakeFirst();
    if (any) throw new ObsError(409, 'BucketNotEmpty', 'the bucket you tried to delete is not empty', { resource: `/${bucket.name}` });
    await this.db.deleteFrom('obs_buckets').where('id', '=', bucket.id).execute();
  }

  /** Versioning can be turned on, then suspended and resumed; never turned off again (as in S3). */
  async setVersioning(bucket: BucketRow, status: 'Enabled' | 'Suspended'): Promise<void> {
    if (bucket.object_lock && status !== 'Enabled') throw new ObsError(409, 'InvalidBucketState', 'versioning cannot be suspended on a bucket with object lock');
    await this.db.updateTable('obs_buckets').set({ versioning: status }).where('id', '=', bucket.id).execute();
  }

  // ------------------------------------------------------------------ default encryption

  /**
   * The bucket's default key for new objects (a KMS key of the bucket's project, by id, alias or ARN),
   * or null for the tenant's obs/default key. Encryption itself cannot be turned off.
   */
  async setDefaultKey(bucket: BucketRow, keyRef: string | null): Promise<string | null> {
    const id = keyRef === null ? null : (await this.objectKey(bucket, keyRef)).id;
    await this.db.updateTable('obs_buckets').set({ kms_key_id: id }).where('id', '=', bucket.id).execute();
    return id;
  }

  // ------------------------------------------------------------------ tagging

  /**
   * Sets (or with null, deletes) the bucket policy: the owner's document and its compiled statements.
   * A policy that lets anyone in (an Allow for Principal "*") is refused while the bucket's
   * BlockPublicPolicy is on; otherwise, unless RestrictPublicBuckets is on, the bucket becomes public.
   */
  async setBucketPolicy(bucket: BucketRow, policy: { source: string; compiled: CompiledStatements } | null): Promise<void> {
    const block = publicAccessBlockOf(bucket);
    const isPublic = policy !== null && compiledPolicyIsPublic(policy.compiled);
    if (isPublic && block.BlockPublicPolicy) {
      throw new ObsError(403, 'AccessDenied', 'Access Denied: the bucket policy grants public access and the bucket\'s BlockPublicPolicy setting is on (DeletePublicAccessBlock or PutPublicAccessBlock to change it)');
    }
    const publicName = isPublic && !block.RestrictPublicBuckets ? bucket.name : null;
    await this.updatePublicState(bucket, { policy_json: policy?.source ?? null, policy_compiled_json: policy ? JSON.stringify(policy.compiled) : null, public_name: publicName });
  }

  /** Block Public Access: the four flags, or null to delete the configuration (every flag off). */
  async setPublicAccessBlock(bucket: BucketRow, flags: PublicAccessBlock | null): Promise<void> {
    const publicName = bucketPolicyIsPublic(bucket) && !(flags?.RestrictPublicBuckets ?? false) ? bucket.name : null;
    await this.updatePublicState(bucket, { public_access_block: flags ? JSON.stringify(flags) : NO_PUBLIC_ACCESS_BLOCK, public_name: publicName });
  }

  /**
   * The bucket that anyone may reach by this name without credentials, if there is one. `public_name`
   * only finds it: the row read here must itself be public (its policy lets anyone in and
   * RestrictPublicBuckets is off), so two changes racing each other can never leave a bucket open.
   */
  async findPublicBucket(name: string): Promise<BucketRow | undefined> {
    const b = await this.db.selectFrom('obs_buckets').selectAll().where('public_name', '=', name).executeTakeFirst();
    return b && isPublicBucket(b) ? b : undefined;
  }

  /**
   * Writes what decides whether the bucket is public in one statement. Public names are unique across
   * accounts: a second account's bucket of the same name cannot become public too. Durable before the
   * caller hears of it: a bucket made private must not turn public again after a power loss.
   */
  private async updatePublicState(bucket: BucketRow, set: { policy_json?: string | null; policy_compiled_json?: string | null; public_access_block?: string | null; public_name: string | null }): Promise<void> {
    let updated: bigint;
    try {
      // Only if neither the policy nor the settings changed since they were read and checked: two
      // changes racing each other must not leave a public policy stored under BlockPublicPolicy.
      const r = await this.db.updateTable('obs_buckets').set(set).where('id', '=', bucket.id)
        .where('policy_compiled_json', 'is not distinct from', bucket.policy_compiled_json)
        .where('public_access_block', 'is not distinct from', bucket.public_access_block)
        .executeTakeFirst();
      updated = r.numUpdatedRows;
    } catch (e) {
      if (isUniqueViolation(e)) {
        throw new ObsError(409, 'OperationAborted', `another account's public bucket is already named ${bucket.name}: bucket names are per account, but a public bucket's name must be unique, since a request without credentials names no account`);
      }
      throw e;
    }
    if (updated === 0n) throw conflictingChange();
    await this.opts.durable?.();
  }

  /** Sets (or with null, deletes) the bucket's CORS rules (validated by the caller, src/obs/cors.ts). */
  async setBucketCors(bucket: BucketRow, rules: unknown[] | null): Promise<void> {
    await this.db.updateTable('obs_buckets').set({ cors_json: rules ? JSON.stringify(rules) : null }).where('id', '=', bucket.id).execute();
  }

  async setBucketTags(bucket: BucketRow, tags: Record<string, string> | null): Promise<void> {
    if (tags) checkTags(tags, 50);
    await this.db.updateTable('obs_buckets').set({ tags_json: tags ? JSON.stringify(tags) : null }).where('id', '=', bucket.id).execute();
  }

  async setObjectTags(bucket: BucketRow, key: string, versionId: string | undefined, tags: Record<string, string> | null): Promise<string> {
    if (tags) checkTags(tags, 10);
    const row = await this.headObject(bucket, key, versionId);
    await this.db.updateTable('obs_objects').set({ tags_json: tags ? JSON.stringify(tags) : null, subject_id: subjectOf(tags) }).where('bucket_id', '=', bucket.id).where('key', '=', key).where('version_id', '=', row.version_id).execute();
    return row.version_id;
  }

  // ------------------------------------------------------------------ object lock

  async setLockDefault(bucket: BucketRow, mode: LockMode | null, days: number | null): Promise<void> {
    if (!bucket.object_lock) throw new ObsError(409, 'InvalidBucketState', 'object lock can only be configured on a bucket created with object lock enabled');
    await this.db.updateTable('obs_buckets').set({ lock_default_mode: mode, lock_default_days: days }).where('id', '=', bucket.id).execute();
  }

  /** The lock a new version gets: the request's, else the bucket's default retention. */
  private lockFor(bucket: BucketRow, meta: ObjectMeta): Pick<ObjectRow, 'lock_mode' | 'lock_until' | 'legal_hold'> {
    if (!bucket.object_lock) {
      if (meta.lock || meta.legalHold) throw new ObsError(400, 'InvalidRequest', 'the bucket does not have object lock enabled');
      return { lock_mode: null, lock_until: null, legal_hold: 0 };
    }
    const lock = meta.lock ?? (bucket.lock_default_mode && bucket.lock_default_days ? { mode: bucket.lock_default_mode as LockMode, until: this.now() + bucket.lock_default_days * DAY } : null);
    if (lock && lock.until <= this.now()) throw new ObsError(400, 'InvalidArgument', 'the retain-until date must be in the future');
    return { lock_mode: lock?.mode ?? null, lock_until: lock?.until ?? null, legal_hold: meta.legalHold ? 1 : 0 };
  }

  /**
   * Sets a version's retention. COMPLIANCE can be neither shortened nor removed; GOVERNANCE only with
   * `bypass` (which the caller has authorized as obs:object:BypassGovernanceRetention).
   */
  async setRetention(bucket: BucketRow, key: string, versionId: string | undefined, lock: { mode: LockMode; until: number } | null, bypass: boolean): Promise<void> {
    if (!bucket.object_lock) throw new ObsError(400, 'InvalidRequest', 'the bucket does not have object lock enabled');
    const row = await this.headObject(bucket, key, versionId);
    const active = row.lock_until !== null && row.lock_until > this.now();
    const weakens = !lock || lock.until < (row.lock_until ?? 0) || (row.lock_mode === 'COMPLIANCE' && lock.mode !== 'COMPLIANCE');
    if (active && weakens && (row.lock_mode === 'COMPLIANCE' || !bypass)) {
      throw new ObsError(403, 'AccessDenied', row.lock_mode === 'COMPLIANCE' ? 'a COMPLIANCE retention cannot be shortened or removed' : 'shortening a GOVERNANCE retention needs x-amz-bypass-governance-retention and the permission to bypass it');
    }
    if (lock && lock.until <= this.now()) throw new ObsError(400, 'InvalidArgument', 'the retain-until date must be in the future');
    // Only over the retention that was checked: a change made meanwhile (a COMPLIANCE retention set
    // by another request) is not overwritten by a decision taken on the older one.
    const r = await this.db.updateTable('obs_objects').set({ lock_mode: lock?.mode ?? null, lock_until: lock?.until ?? null })
      .where('bucket_id', '=', bucket.id).where('key', '=', key).where('version_id', '=', row.version_id)
      .where('lock_mode', 'is not distinct from', row.lock_mode).where('lock_until', 'is not distinct from', row.lock_until)
      .executeTakeFirst();
    if (Number(r.numUpdatedRows) === 0) throw conflictingChange();
    // A retention that was acknowledged must still protect the version after a power loss.
    await this.opts.durable?.();
  }

  async setLegalHold(bucket: BucketRow, key: string, versionId: string | undefined, on: boolean): Promise<void> {
    if (!bucket.object_lock) throw new ObsError(400, 'InvalidRequest', 'the bucket does not have object lock enabled');
    const row = await this.headObject(bucket, key, versionId);
    await this.db.updateTable('obs_objects').set({ legal_hold: on ? 1 : 0 }).where('bucket_id', '=', bucket.id).where('key', '=', key).where('version_id', '=', row.version_id).execute();
    await this.opts.durable?.();
  }

  // ------------------------------------------------------------------ lifecycle

  async setLifecycle(bucket: BucketRow, rules: LifecycleRule[] | null): Promise<void> {
    await this.db.updateTable('obs_buckets').set({ lifecycle_json: rules ? JSON.stringify(rules) : null }).where('id', '=', bucket.id).execute();
  }

  lifecycleOf(bucket: BucketRow): LifecycleRule[] | null {
    return bucket.lifecycle_json ? (JSON.parse(bucket.lifecycle_json) as LifecycleRule[]) : null;
  }

  /**
   * Applies every bucket's enabled lifecycle rules: expire current objects (a delete marker in a
   * versioned bucket), remove noncurrent versions some days after they stopped being current, abort
   * uploads left incomplete. One node at a time holds the lease for a run (a versioned expiry must
   * not be applied twice, or it would stack delete markers).
   */
  async runLifecycle(): Promise<{ expired: number; noncurrent: number; aborted: number; markers: number }> {
    const done = { expired: 0, noncurrent: 0, aborted: 0, markers: 0 };
    const now = this.now();
    if (!(await this.takeLease('obs.lifecycle.lease', now, 10 * 60_000))) return done;
    const buckets = await this.db.selectFrom('obs_buckets').selectAll().where('lifecycle_json', 'is not', null).execute();
    for (const bucket of buckets) {
      for (const rule of this.lifecycleOf(bucket) ?? []) {
        if (rule.status !== 'Enabled') continue;
        // The prefix and sizes are selected in SQL (so other keys cannot crowd a rule's keys out of a
        // run's batch); tags are checked on each row.
        const versions = (latest: 0 | 1) => {
          let q = this.db.selectFrom('obs_objects').where('bucket_id', '=', bucket.id).where('is_latest', '=', latest).where('delete_marker', '=', 0);
          if (rule.prefix) q = q.where(keyStartsWith('key', rule.prefix));
          if (rule.sizeGreaterThan !== undefined) q = q.where('size', '>', rule.sizeGreaterThan);
          if (rule.sizeLessThan !== undefined) q = q.where('size', '<', rule.sizeLessThan);
          return q;
        };
        const expiresAt = rule.expirationDays !== undefined ? now - rule.expirationDays * DAY : rule.expirationDate !== undefined && now >= rule.expirationDate ? now : null;
        if (expiresAt !== null) {
          const rows = await versions(1).select(['key', 'size', 'tags_json']).where('created_at', '<=', expiresAt).orderBy('created_at').limit(1000).execute();
          for (const r of rows.filter((x) => ruleSelects(rule, x))) {
            await this.deleteObject(bucket, r.key);
            done.expired++;
          }
        }
        if (rule.noncurrentDays !== undefined) {
          const cutoff = now - rule.noncurrentDays * DAY;
          const rows = await versions(0).select(['key', 'version_id', 'seq', 'size', 'tags_json']).orderBy('created_at').limit(1000).execute();
          for (const r of rows.filter((x) => ruleSelects(rule, x))) {
            // A version stops being current when the next one is written: count the days from then.
            const successor = await this.db.selectFrom('obs_objects').select((eb) => eb.fn.min('created_at').as('at')).where('bucket_id', '=', bucket.id).where('key', '=', r.key).where('seq', '>', r.seq).executeTakeFirst();
            if (successor?.at !== undefined && successor.at !== null && Number(successor.at) <= cutoff) {
              try {
                await this.deleteObject(bucket, r.key, r.version_id);
                done.noncurrent++;
              } catch (e) {
                // Locked versions stay until their retention ends (or their legal hold is lifted).
                if (!(e instanceof ObsError && e.status === 403)) throw e;
              }
            }
          }
        }
        if (rule.expiredObjectDeleteMarker) {
          // A delete marker with no other version of its key left hides nothing: it goes.
          let q = this.db.selectFrom('obs_objects as m').select(['m.key', 'm.version_id']).where('m.bucket_id', '=', bucket.id).where('m.is_latest', '=', 1).where('m.delete_marker', '=', 1)
            .where(({ not, exists, selectFrom }) => not(exists(selectFrom('obs_objects as o').select('o.key').whereRef('o.bucket_id', '=', 'm.bucket_id').whereRef('o.key', '=', 'm.key').whereRef('o.version_id', '!=', 'm.version_id'))));
          if (rule.prefix) q = q.where(keyStartsWith('m.key', rule.prefix));
          for (const m of await q.limit(1000).execute()) {
            await this.deleteObject(bucket, m.key, m.version_id);
            done.markers++;
          }
        }
        if (rule.abortIncompleteDays !== undefined) {
          const cutoff = now - rule.abortIncompleteDays * DAY;
          let q = this.db.selectFrom('obs_uploads').selectAll().where('bucket_id', '=', bucket.id).where('created_at', '<=', cutoff);
          if (rule.prefix) q = q.where(keyStartsWith('key', rule.prefix));
          for (const u of await q.limit(1000).execute()) {
            await this.abortUpload(u).catch(() => undefined);
            done.aborted++;
          }
        }
      }
    }
    return done;
  }

  /** A lease in the settings table: true when this node holds it until now + ttl. */
  private async takeLease(name: string, now: number, ttlMs: number): Promise<boolean> {
    await this.db.insertInto('settings').values({ name, value: '0' }).onConflict((oc) => oc.column('name').doNothing()).execute();
    const r = await this.db.updateTable('settings').set({ value: String(now + ttlMs) }).where('name', '=', name).where(sql<boolean>`cast(value as bigint) <= ${now}`).executeTakeFirst();
    return Number(r.numUpdatedRows) === 1;
  }

  /** Releases a lease early (tests, or a run that finished). */
  async releaseLifecycleLease(): Promise<void> {
    await this.db.updateTable('settings').set({ value: '0' }).where('name', '=', 'obs.lifecycle.lease').execute();
  }

  // ------------------------------------------------------------------ objects

  private scopeOf(bucket: BucketRow): KeyScope {
    return { accountId: bucket.account_id, projectId: bucket.project_id, region: bucket.region };
  }

  /** The bucket's key, or the tenant's default object key in the bucket's project (made on first use). */
  /** The KMS key a request names for the bucket (id, alias or ARN of a key in its project); 400 when none. */
  async namedKey(bucket: BucketRow, requested: string): Promise<KeyRow> {
    return this.objectKey(bucket, requested);
  }

  private async objectKey(bucket: BucketRow, requested?: string): Promise<KeyRow> {
    const scope = this.scopeOf(bucket);
    if (requested !== undefined) {
      // SSE-KMS with the request's key: a key id, alias, or ARN of a key in the bucket's project.
      const arn = /^arn:aws[a-z-]*:kms:([^:]*):([^:]*):(?:key|alias)\/(.+)$/.exec(requested);
      const ref = arn ? (arn[1] === scope.region && arn[2] === scope.accountId ? arn[3]! : '') : requested.replace(/^alias\//, '');
      const key = ref ? await this.kms.findKey(scope, ref) : undefined;
      if (!key) throw new ObsError(400, 'KMS.NotFoundException', `the KMS key ${requested} does not exist in the bucket's project (${scope.region})`);
      return key;
    }
    if (bucket.kms_key_id) return this.kms.getKey(scope, bucket.kms_key_id);
    return this.kms.defaultKey(scope, DEFAULT_KEY_ALIAS, 'default key of object storage');
  }

  /**
   * Encrypts a stream into a new durable blob under `dek`. `verify` runs after the last byte (declared
   * digests, lengths); if it or anything else fails, the blob is removed. The blob stays registered as
   * pending until the caller's commit removes that mark (or orphan collection removes the blob).
   */
  private async writeBlob(
    bucket: BucketRow, blobId: string, dek: Buffer, content: Readable, verify: VerifyUpload, alsoChecksum?: ChecksumAlgorithm,
  ): Promise<{ size: number; md5: Buffer; cipherSize: number; checksum: string | null; computed: string | null }> {
    const md5 = createHash('md5');
    const sha256 = verify.needsSha256 ? createHash('sha256') : null;
    const extra = alsoChecksum ? checksummer(alsoChecksum) : null;
    let size = 0;
    const max = this.opts.maxObjectBytes;
    const meter = new Transform({
      transform(chunk: Buffer, _e, done) {
        size += chunk.length;
        if (size > max) return done(new ObsError(400, 'EntityTooLarge', `your proposed upload exceeds the maximum allowed object size (${max} bytes)`));
        md5.update(chunk);
        sha256?.update(chunk);
        extra?.update(chunk);
        done(null, chunk);
      },
    });
    await this.db.insertInto('obs_pending_blobs').values({ blob_id: blobId, created_at: this.now() }).execute();
    try {
      const plain = this.opts.plaintextBaselineForBenchmarks === true;
      const encrypted = plain ? content.pipe(meter) : content.pipe(meter).pipe(encryptStream(dek, streamContext(bucket, blobId)));
      content.on('error', (e) => encrypted.destroy(e));
      meter.on('error', (e) => encrypted.destroy(e));
      // The blob store reads `encrypted` only after its own awaits (a file to open, an upload to
      // start), and a failure can come first: it stays on the stream for the store's read to throw,
      // instead of being an uncaught 'error' event. A small body is read ahead while the data key is
      // made, so it may have failed already (a bad chunk signature, a truncated aws-chunked body).
      encrypted.on('error', () => undefined);
      if (content.errored) encrypted.destroy(content.errored);
      const { bytes } = await this.blobs.write(blobId, encrypted);
      if (bytes !== (plain ? size : encryptedSize(size))) throw new Error('the encrypted blob has an unexpected size');
      const digest = md5.digest();
      const verified = verify({ md5: digest, sha256: sha256?.digest() ?? null, size });
      const computed = extra ? `${alsoChecksum}:${(await extra.digest()).toString('base64')}` : null;
      return { size, md5: digest, cipherSize: bytes, checksum: verified?.checksum ?? null, computed };
    } catch (e) {
      await this.dropBlobs([blobId]);
      throw e;
    }
  }

  /** Deletes blobs and their pending marks (best effort: orphan collection retries what fails). */
  private async dropBlobs(ids: string[]): Promise<void> {
    for (const id of ids) {
      if (!id) continue;
      await this.blobs.delete(id).catch(() => undefined);
      await this.db.deleteFrom('obs_pending_blobs').where('blob_id', '=', id).execute().catch(() => undefined);
    }
  }

  /** The blobs holding an object version's content: one, or one per multipart part. */
  private blobsOfRow(row: Pick<ObjectRow, 'blob_id' | 'parts_json' | 'delete_marker'>): string[] {
    if (row.delete_marker) return [];
    if (row.parts_json) return (JSON.parse(row.parts_json) as StoredPart[]).map((p) => p.blob);
    return [row.blob_id];
  }

  /**
   * Stores an object from a stream of its content. The content is encrypted as it arrives; the object
   * becomes visible only once its blob is durable and its row committed.
   */
  async putObject(
    bucket: BucketRow, key: string, content: Readable, meta: ObjectMeta, verify: VerifyUpload,
    opts: { condition?: WriteCondition | undefined; computeChecksum?: ChecksumAlgorithm | undefined } = {},
  ): Promise<PutResult & { checksum: string | null }> {
    if (!validObjectKey(key)) throw new ObsError(400, 'KeyTooLongError', 'object keys are 1 to 1024 bytes of UTF-8 without NUL');
    this.lockFor(bucket, meta);
    // Refuse early what would be refused anyway; the decision that counts is made again when committing.
    if (opts.condition) await this.precheckWrite(bucket, key, opts.condition);
    const blobId = randomBytes(16).toString('hex');
    // SSE-C: the object's data key is sealed under the customer's key, which is never stored; KMS is not involved.
    const cmk = meta.customerKey ? null : await this.objectKey(bucket, meta.kmsKey);
    let dk: { plaintext: Buffer; ciphertext: Buffer };
    try {
      if (meta.customerKey) {
        dk = sealForCustomer(bucket, blobId, meta.customerKey);
      } else {
        dk = this.opts.plaintextBaselineForBenchmarks ? { plaintext: Buffer.alloc(32), ciphertext: Buffer.alloc(0) } : await this.kms.generateDataKey(cmk!, 32, { 'obs:bucket': bucket.id, 'obs:blob': blobId });
      }
    } catch (e) {
      throw kmsFailure(e);
    }
    try {
      // A copy has no checksum declared by a client: the one it keeps is computed as it is written.
      const compute = opts.computeChecksum;
      const w = await this.writeBlob(bucket, blobId, dk.plaintext, content, verify, compute);
      const checksum = w.checksum ?? w.computed;
      const versionId = bucket.versioning === 'Enabled' ? newVersionId(this.now()) : NULL_VERSION;
      const row: ObjectRow = {
        bucket_id: bucket.id, key, version_id: versionId, size: w.size, etag: etagOf(w.md5, meta.customerKey, cmk && isCustomerKey(cmk) ? { dataKey: dk.plaintext, blobId } : undefined), content_type: meta.contentType,
        metadata_json: JSON.stringify(meta.metadata), blob_id: blobId, cipher_size: w.cipherSize, kms_key_id: cmk ? cmk.id : SSE_C,
        data_key: dk.ciphertext.toString('base64'), created_at: this.now(), is_latest: 1, delete_marker: 0, seq: 0, parts_json: null,
        ...this.lockFor(bucket, meta), tags_json: meta.tags ? JSON.stringify(meta.tags) : null, checksum, subject_id: subjectOf(meta.tags),
      };
      try {
        const replaced = await this.makeCurrent(row, [blobId], { condition: opts.condition });
        await this.dropBlobs(replaced);
      } catch (e) {
        await this.dropBlobs([blobId]);
        throw e;
      }
      return { etag: row.etag, size: w.size, versionId, checksum };
    } finally {
      dk.plaintext.fill(0);
    }
  }

  private async precheckWrite(bucket: BucketRow, key: string, condition: WriteCondition): Promise<void> {
    const current = await this.db.selectFrom('obs_objects').select(['etag', 'delete_marker']).where('bucket_id', '=', bucket.id).where('key', '=', key).where('is_latest', '=', 1).executeTakeFirst();
    checkWriteCondition(current, condition, `/${bucket.name}/${key}`);
  }

  /**
   * Inserts a version (or delete marker) as the key's current one. A 'null' version replaces the
   * previous 'null' version, whose blob id is returned for deletion once committed. Concurrent writers
   * of one key are serialised by the unique current-version index (and the primary key of a 'null'
   * version): the loser retries, and a conditional write's retry sees the winner's version. A multipart
   * completion claims its upload in the same transaction, so a failed condition leaves the upload.
   */
  private async makeCurrent(row: ObjectRow, newBlobs: string[], opts: { condition?: WriteCondition | undefined; claimUpload?: string } = {}): Promise<string[]> {
    for (let attempt = 1; ; attempt++) {
      try {
        const replaced = await this.db.transaction().execute(async (tx) => {
          // Writers of one key take turns (SQLite has one writer anyway): under READ COMMITTED the
          // check-then-write below could otherwise interleave with another writer's and both win a
          // conditional race (seen with eight concurrent If-Match PUTs on a loaded machine).
          if (this.opts.dialect === 'postgres') await sql`select pg_advisory_xact_lock(hashtextextended(${`${row.bucket_id}/${row.key}`}, 7243002))`.execute(tx);
          // A conditional write remembers which version it decided on (its seq; null: none), and commits
          // only if that is the version it displaces. Under PostgreSQL's READ COMMITTED a writer that
          // committed in between would otherwise be displaced unseen.
          let decidedOn: number | null | undefined;
          if (opts.condition) {
            const current = await tx.selectFrom('obs_objects').select(['etag', 'delete_marker', 'seq']).where('bucket_id', '=', row.bucket_id).where('key', '=', row.key).where('is_latest', '=', 1).executeTakeFirst();
            checkWriteCondition(current, opts.condition, `/${row.key}`);
            decidedOn = current ? Number(current.seq) : null;
          }
          if (opts.claimUpload !== undefined) {
            // Claimed here, so a concurrent completion or abort of the same upload cannot also use its parts.
            const claimed = await tx.deleteFrom('obs_uploads').where('id', '=', opts.claimUpload).executeTakeFirst();
            if (Number(claimed.numDeletedRows) !== 1) throw new ObsError(404, 'NoSuchUpload', 'the specified multipart upload does not exist: it may have been aborted or completed');
          }
          let replaced: string[] = [];
          const displaced: number[] = [];
          if (row.version_id === NULL_VERSION) {
            const old = await tx.deleteFrom('obs_objects').where('bucket_id', '=', row.bucket_id).where('key', '=', row.key).where('version_id', '=', NULL_VERSION)
              .returning(['blob_id', 'parts_json', 'delete_marker', 'is_latest', 'seq']).executeTakeFirst();
            if (old) {
              replaced = this.blobsOfRow(old);
              if (old.is_latest) displaced.push(Number(old.seq));
            }
          }
          const top = await tx.selectFrom('obs_objects').select((eb) => eb.fn.max('seq').as('seq')).where('bucket_id', '=', row.bucket_id).where('key', '=', row.key).executeTakeFirst();
          const demoted = await tx.updateTable('obs_objects').set({ is_latest: 0 }).where('bucket_id', '=', row.bucket_id).where('key', '=', row.key).where('is_latest', '=', 1).returning('seq').execute();
          displaced.push(...demoted.map((d) => Number(d.seq)));
          if (decidedOn !== undefined && (displaced.length !== (decidedOn === null ? 0 : 1) || (decidedOn !== null && displaced[0] !== decidedOn))) throw new WriteConflict();
          await tx.insertInto('obs_objects').values({ ...row, seq: Number(top?.seq ?? 0) + 1 }).execute();
          if (newBlobs.length) await tx.deleteFrom('obs_pending_blobs').where('blob_id', 'in', newBlobs).execute();
          return replaced;
        });
        // Acknowledged only once the row survives a power loss too, like its blob.
        await this.opts.durable?.();
        return replaced;
      } catch (e) {
        // The loser of a race retries: a plain write then wins after the other, a conditional one decides again.
        if (attempt < RETRIES && (isUniqueViolation(e) || e instanceof WriteConflict)) continue;
        if (e instanceof WriteConflict) throw new ObsError(409, 'ConditionalRequestConflict', 'A conflicting conditional operation is currently in progress against this resource. Please try again.');
        throw e;
      }
    }
  }

  /** The key's current version, or a given version. A delete marker as the current version is "no such key". */
  async headObject(bucket: BucketRow, key: string, versionId?: string): Promise<ObjectRow> {
    let q = this.db.selectFrom('obs_objects').selectAll().where('bucket_id', '=', bucket.id).where('key', '=', key);
    q = versionId === undefined ? q.where('is_latest', '=', 1) : q.where('version_id', '=', versionId);
    const row = await q.executeTakeFirst();
    if (!row) {
      throw versionId === undefined
        ? new ObsError(404, 'NoSuchKey', 'the specified key does not exist', { resource: `/${bucket.name}/${key}` })
        : new ObsError(404, 'NoSuchVersion', 'the specified version does not exist', { resource: `/${bucket.name}/${key}` });
    }
    if (row.delete_marker) {
      throw versionId === undefined
        ? new ObsError(404, 'NoSuchKey', 'the specified key does not exist', { resource: `/${bucket.name}/${key}`, deleteMarker: 'true', versionId: row.version_id })
        : new ObsError(405, 'MethodNotAllowed', 'the specified version is a delete marker', { resource: `/${bucket.name}/${key}`, deleteMarker: 'true', versionId: row.version_id });
    }
    return row;
  }

  /** Opens the object for reading bytes [start, end]; one KMS call unwraps its data key. */
  async readObject(bucket: BucketRow, row: ObjectRow, start: number, end: number, customerKey?: Buffer, cmk?: KeyRow): Promise<Readable> {
    if (this.opts.plaintextBaselineForBenchmarks) return this.readPlain(row, start, end);
    const key = await this.dataKeyOf(bucket, row, customerKey, cmk);
    const blobs = this.blobs;
    const parts: StoredPart[] = row.parts_json ? (JSON.parse(row.parts_json) as StoredPart[]) : [{ blob: row.blob_id, size: row.size, cipher: row.cipher_size }];
    async function* content() {
      try {
        let offset = 0;
        for (const p of parts) {
          const from = Math.max(start, offset);
          const to = Math.min(end, offset + p.size - 1);
          if (from <= to || (p.size === 0 && parts.length === 1)) {
            yield* decryptRange(key, streamContext(bucket, p.blob), (o, l) => blobs.readAt(p.blob, o, l), p.cipher, from - offset, to - offset);
          }
          offset += p.size;
          if (offset > end) break;
        }
      } finally {
        key.fill(0);
      }
    }
    return Readable.from(content(), { objectMode: false });
  }

  /** bench/obs's unencrypted baseline only. */
  private readPlain(row: ObjectRow, start: number, end: number): Readable {
    const blobs = this.blobs;
    // Reads one piece ahead, as decryptRange does, so the baseline gets the same overlap of I/O and work.
    async function* content() {
      const piece = (o: number) => blobs.readAt(row.blob_id, o, Math.min(1 << 20, end - o + 1));
      let ahead: Promise<Buffer> | null = start <= end ? piece(start) : null;
      try {
        for (let o = start; o <= end; o += 1 << 20) {
          const got = await ahead!;
          ahead = o + (1 << 20) <= end ? piece(o + (1 << 20)) : null;
          yield got;
        }
      } finally {
        ahead?.catch(() => undefined);
      }
    }
    return Readable.from(content(), { objectMode: false });
  }

  /** Whether the version was stored with a customer-provided key (SSE-C). */
  isSseC(row: ObjectRow): boolean {
    return row.kms_key_id === SSE_C;
  }

  /**
   * The KMS key a version's data key is sealed under, and whether it is the tenant's service-managed
   * obs/default key; null for an SSE-C version (the request brings its key) or a key that is gone.
   * A read that looked it up hands it to readObject, which then does not look it up again.
   */
  async versionKey(bucket: BucketRow, row: ObjectRow): Promise<{ key: KeyRow; managed: boolean } | null> {
    // The benchmark's plaintext baseline reads with no key, so it looks none up either.
    if (this.isSseC(row) || this.opts.plaintextBaselineForBenchmarks) return null;
    return this.sealingKey(bucket, row.kms_key_id);
  }

  /** A KMS key content of the bucket is sealed under, and whether the service manages it; null when gone. */
  private async sealingKey(bucket: BucketRow, keyId: string): Promise<{ key: KeyRow; managed: boolean } | null> {
    const key = await this.kms.findKey(this.scopeOf(bucket), keyId);
    return key ? { key, managed: !isCustomerKey(key) } : null;
  }

  /**
   * Unwraps a version's data key: through KMS, or (SSE-C) with the key the request carries, which must
   * be the one it was stored with. Also used by HEAD to check an SSE-C key without reading content.
   * `cmk`: the version's KMS key when the caller already looked it up (versionKey).
   */
  async dataKeyOf(bucket: BucketRow, row: ObjectRow, customerKey?: Buffer, cmk?: KeyRow): Promise<Buffer> {
    if (this.isSseC(row)) {
      if (!customerKey) throw new ObsError(400, 'InvalidRequest', 'the object was stored with a customer-provided key (SSE-C): send the same key to read it');
      try {
        return openForCustomer(bucket, row.blob_id, row.data_key, customerKey);
      } catch {
        throw new ObsError(403, 'AccessDenied', 'the customer-provided key is not the one the object was stored with');
      }
    }
    if (customerKey) throw new ObsError(400, 'InvalidRequest', 'the object was not stored with a customer-provided key (SSE-C)');
    try {
      const key = cmk ?? (await this.kms.getKey(this.scopeOf(bucket), row.kms_key_id));
      return await this.kms.decrypt(key, Buffer.from(row.data_key, 'base64'), { 'obs:bucket': bucket.id, 'obs:blob': row.blob_id });
    } catch (e) {
      throw kmsFailure(e);
    }
  }

  // ------------------------------------------------------------------ multipart uploads

  /**
   * CreateMultipartUpload: one data key per upload (one KMS call), each part its own encrypted blob.
   * With a checksum (x-amz-checksum-algorithm and -type), every part's checksum under it is kept (the
   * client's, verified, or computed here), and completion gives the object S3's COMPOSITE or
   * FULL_OBJECT checksum.
   */
  async createUpload(bucket: BucketRow, key: string, meta: ObjectMeta, opts: { checksum?: UploadChecksum | undefined } = {}): Promise<string> {
    if (!validObjectKey(key)) throw new ObsError(400, 'KeyTooLongError', 'object keys are 1 to 1024 bytes of UTF-8 without NUL');
    if (meta.lock || meta.legalHold) throw new ObsError(501, 'NotImplemented', 'object lock headers on multipart uploads are not implemented; the bucket\'s default retention applies');
    const id = randomBytes(16).toString('hex');
    // SSE-C: the upload's data key is sealed under the customer's key, bound to the upload id (which the
    // completed object keeps as its blob id), so every part and every read must bring the same key.
    const cmk = meta.customerKey ? null : await this.objectKey(bucket, meta.kmsKey);
    let dk: { plaintext: Buffer; ciphertext: Buffer };
    try {
      dk = meta.customerKey ? sealForCustomer(bucket, id, meta.customerKey) : await this.kms.generateDataKey(cmk!, 32, { 'obs:bucket': bucket.id, 'obs:blob': id });
    } catch (e) {
      throw kmsFailure(e);
    }
    dk.plaintext.fill(0);
    await this.db.insertInto('obs_uploads').values({
      id, bucket_id: bucket.id, key, kms_key_id: cmk ? cmk.id : SSE_C, data_key: dk.ciphertext.toString('base64'),
      content_type: meta.contentType, metadata_json: JSON.stringify(meta.metadata), created_at: this.now(),
      checksum_algorithm: opts.checksum?.algorithm ?? null, checksum_type: opts.checksum?.type ?? null,
    }).execute();
    return id;
  }

  async getUpload(bucket: BucketRow, key: string, uploadId: string): Promise<UploadRow> {
    const u = await this.db.selectFrom('obs_uploads').selectAll().where('id', '=', uploadId).where('bucket_id', '=', bucket.id).where('key', '=', key).executeTakeFirst();
    if (!u) throw new ObsError(404, 'NoSuchUpload', 'the specified multipart upload does not exist: it may have been aborted or completed');
    return u;
  }

  /** Whether the upload was created with a customer-provided key (SSE-C). */
  isSseCUpload(u: UploadRow): boolean {
    return u.kms_key_id === SSE_C;
  }

  /** An upload's KMS key, and whether the service manages it (obs/default); null for SSE-C. */
  async uploadKmsKey(bucket: BucketRow, u: UploadRow): Promise<{ key: KeyRow; managed: boolean } | null> {
    return this.isSseCUpload(u) ? null : this.sealingKey(bucket, u.kms_key_id);
  }

  /** SSE-C: checks that `customerKey` is the one the upload was created with (400 otherwise). */
  async checkUploadCustomerKey(bucket: BucketRow, u: UploadRow, customerKey: Buffer | undefined): Promise<void> {
    (await this.uploadKey(bucket, u, customerKey)).dek.fill(0);
  }

  /** The upload's data key: through KMS, or (SSE-C) opened with the key the part request carries; `customerCmk`: under a customer's KMS key. */
  private async uploadKey(bucket: BucketRow, u: UploadRow, customerKey?: Buffer): Promise<{ dek: Buffer; customerCmk: boolean }> {
    if (this.isSseCUpload(u)) {
      if (!customerKey) throw new ObsError(400, 'InvalidRequest', 'the multipart upload was created with a customer-provided key (SSE-C): every part must carry the same key');
      try {
        return { dek: openForCustomer(bucket, u.id, u.data_key, customerKey), customerCmk: false };
      } catch {
        throw new ObsError(400, 'InvalidArgument', 'the customer-provided key does not match the one the multipart upload was created with');
      }
    }
    if (customerKey) throw new ObsError(400, 'InvalidArgument', 'the multipart upload was not created with a customer-provided key (SSE-C)');
    try {
      const cmk = await this.kms.getKey(this.scopeOf(bucket), u.kms_key_id);
      return { dek: await this.kms.decrypt(cmk, Buffer.from(u.data_key, 'base64'), { 'obs:bucket': bucket.id, 'obs:blob': u.id }), customerCmk: isCustomerKey(cmk) };
    } catch (e) {
      throw kmsFailure(e);
    }
  }

  /**
   * UploadPart. For an upload with a checksum algorithm the part's checksum is kept: the one the client
   * declared (`declared`, verified by `verify`), or computed here.
   */
  async uploadPart(bucket: BucketRow, u: UploadRow, partNumber: number, content: Readable, verify: VerifyUpload, customerKey?: Buffer, declared?: ChecksumAlgorithm): Promise<string> {
    if (!Number.isInteger(partNumber) || partNumber < 1 || partNumber > MAX_PARTS) throw new ObsError(400, 'InvalidArgument', `part numbers are 1 to ${MAX_PARTS}`);
    const { dek, customerCmk } = await this.uploadKey(bucket, u, customerKey);
    const blobId = randomBytes(16).toString('hex');
    try {
      const alg = u.checksum_algorithm as ChecksumAlgorithm | null;
      const w = await this.writeBlob(bucket, blobId, dek, content, verify, alg && alg !== declared ? alg : undefined);
      const partChecksum = !alg ? null : alg === declared ? w.checksum : w.computed;
      if (w.size > MAX_PART_BYTES) {
        await this.dropBlobs([blobId]);
        throw new ObsError(400, 'EntityTooLarge', `a part is at most ${MAX_PART_BYTES} bytes`);
      }
      const etag = etagOf(w.md5, customerKey, customerCmk ? { dataKey: dek, blobId } : undefined);
      const previous = await this.db.transaction().execute(async (tx) => {
        const old = await tx.selectFrom('obs_upload_parts').select('blob_id').where('upload_id', '=', u.id).where('part_number', '=', partNumber).executeTakeFirst();
        if (old) await tx.deleteFrom('obs_upload_parts').where('upload_id', '=', u.id).where('part_number', '=', partNumber).execute();
        await tx.insertInto('obs_upload_parts').values({ upload_id: u.id, part_number: partNumber, blob_id: blobId, size: w.size, cipher_size: w.cipherSize, etag, created_at: this.now(), checksum: partChecksum }).execute();
        await tx.deleteFrom('obs_pending_blobs').where('blob_id', '=', blobId).execute();
        return old?.blob_id ?? null;
      });
      if (previous) await this.dropBlobs([previous]);
      return etag;
    } finally {
      dek.fill(0);
    }
  }

  /**
   * UploadPartCopy: bytes [start, end] of a source version (decrypted with its own data key, or the
   * customer's key for an SSE-C source) become a part of the upload, encrypted under the upload's key.
   */
  async uploadPartCopy(bucket: BucketRow, u: UploadRow, partNumber: number, source: { bucket: BucketRow; row: ObjectRow; start: number; end: number; customerKey?: Buffer | undefined; cmk?: KeyRow | undefined }, customerKey?: Buffer): Promise<{ etag: string; lastModified: number }> {
    if (!Number.isInteger(partNumber) || partNumber < 1 || partNumber > MAX_PARTS) throw new ObsError(400, 'InvalidArgument', `part numbers are 1 to ${MAX_PARTS}`);
    const length = source.end - source.start + 1;
    if (length > MAX_PART_BYTES) throw new ObsError(400, 'InvalidRequest', `a copied part is at most ${MAX_PART_BYTES} bytes: give x-amz-copy-source-range`);
    // Check the destination's key before reading (and unwrapping) the source.
    if (this.isSseCUpload(u) || customerKey) (await this.uploadKey(bucket, u, customerKey)).dek.fill(0);
    const content = await this.readObject(source.bucket, source.row, source.start, source.end, source.customerKey, source.cmk);
    try {
      const etag = await this.uploadPart(bucket, u, partNumber, content, ({ size }) => {
        if (size !== length) throw new ObsError(500, 'InternalError', 'the copy read a different number of bytes than the range has');
      }, customerKey);
      return { etag, lastModified: this.now() };
    } finally {
      // Ends the reader (and wipes the source's data key) if the part was refused before reading it all.
      content.destroy();
    }
  }

  async listParts(u: UploadRow): Promise<UploadPartRow[]> {
    return this.db.selectFrom('obs_upload_parts').selectAll().where('upload_id', '=', u.id).orderBy('part_number').execute();
  }

  async listUploads(bucket: BucketRow, prefix: string): Promise<UploadRow[]> {
    return (await this.db.selectFrom('obs_uploads').selectAll().where('bucket_id', '=', bucket.id).orderBy('key').orderBy('created_at').limit(1000).execute()).filter((u) => u.key.startsWith(prefix));
  }

  /** CompleteMultipartUpload: the listed parts, in ascending order, with their ETags, become the object. */
  async completeUpload(bucket: BucketRow, u: UploadRow, listed: { partNumber: number; etag: string; checksum?: string | undefined }[], opts: { condition?: WriteCondition | undefined; expectChecksum?: string | undefined; expectSize?: number | undefined } = {}): Promise<PutResult & { checksum: string | null }> {
    if (listed.length === 0) throw new ObsError(400, 'MalformedXML', 'the upload lists no parts');
    if (opts.condition) await this.precheckWrite(bucket, u.key, opts.condition);
    const stored = new Map((await this.listParts(u)).map((p) => [p.part_number, p]));
    const chosen: UploadPartRow[] = [];
    let last = 0;
    for (const l of listed) {
      if (l.partNumber <= last) throw new ObsError(400, 'InvalidPartOrder', 'the list of parts was not in ascending order');
      last = l.partNumber;
      const p = stored.get(l.partNumber);
      if (!p || p.etag !== l.etag.replace(/"/g, '')) throw new ObsError(400, 'InvalidPart', `part ${l.partNumber} was not uploaded or its ETag does not match`);
      // A part's checksum named in the completion must be the one its upload was verified with.
      if (l.checksum !== undefined && (!p.checksum || p.checksum.slice(p.checksum.indexOf(':') + 1) !== l.checksum)) {
        throw new ObsError(400, 'InvalidPart', `the checksum given for part ${l.partNumber} does not match the part's`);
      }
      chosen.push(p);
    }
    let checksum: string | null = null;
    if (u.checksum_algorithm) {
      const alg = u.checksum_algorithm as ChecksumAlgorithm;
      const values = chosen.map((p) => (p.checksum?.startsWith(`${alg}:`) ? p.checksum.slice(alg.length + 1) : null));
      if (values.some((v) => v === null)) throw new ObsError(400, 'InvalidPart', `a part has no ${alg.toUpperCase()} checksum`);
      // FULL_OBJECT: the CRC of the whole content, combined from the parts' CRCs and sizes (stored
      // without the `-<parts>` suffix that marks a composite checksum).
      checksum = u.checksum_type === 'FULL_OBJECT'
        ? `${alg}:${combineCrcs(alg, chosen.map((p, i) => ({ checksum: Buffer.from(values[i]!, 'base64'), size: p.size }))).toString('base64')}`
        : `${alg}:${await compositeChecksum(alg, values as string[])}`;
      if (opts.expectChecksum !== undefined && opts.expectChecksum !== checksum.slice(alg.length + 1)) {
        throw new ObsError(400, 'BadDigest', `The ${alg.toUpperCase()} you specified for the multipart upload did not match the calculated checksum.`);
      }
    }
    for (const p of chosen.slice(0, -1)) {
      if (p.size < MIN_PART_BYTES) throw new ObsError(400, 'EntityTooSmall', `part ${p.part_number} is smaller than the minimum of ${MIN_PART_BYTES} bytes (only the last part may be)`);
    }
    const size = chosen.reduce((n, p) => n + p.size, 0);
    if (size > this.opts.maxObjectBytes) throw new ObsError(400, 'EntityTooLarge', 'the completed object exceeds the maximum object size');
    if (opts.expectSize !== undefined && opts.expectSize !== size) {
      throw new ObsError(400, 'InvalidRequest', `x-amz-mp-object-size is ${opts.expectSize}, but the parts listed add up to ${size} bytes`);
    }
    const etag = `${createHash('md5').update(Buffer.concat(chosen.map((p) => Buffer.from(p.etag, 'hex')))).digest('hex')}-${chosen.length}`;
    const versionId = bucket.versioning === 'Enabled' ? newVersionId(this.now()) : NULL_VERSION;
    const row: ObjectRow = {
      bucket_id: bucket.id, key: u.key, version_id: versionId, size, etag, content_type: u.content_type, metadata_json: u.metadata_json,
      // The data key is bound to the upload id, which stands in for the blob in its context.
      blob_id: u.id, cipher_size: chosen.reduce((n, p) => n + p.cipher_size, 0), kms_key_id: u.kms_key_id, data_key: u.data_key,
      created_at: this.now(), is_latest: 1, delete_marker: 0, seq: 0,
      parts_json: JSON.stringify(chosen.map((p): StoredPart => ({ blob: p.blob_id, size: p.size, cipher: p.cipher_size }))),
      ...this.lockFor(bucket, { contentType: u.content_type, metadata: {} }), tags_json: null, checksum, subject_id: null,
    };
    const unused = [...stored.values()].filter((p) => !chosen.includes(p)).map((p) => p.blob_id);
    const replaced = await this.makeCurrent(row, [], { condition: opts.condition, claimUpload: u.id });
    await this.db.deleteFrom('obs_upload_parts').where('upload_id', '=', u.id).execute();
    await this.dropBlobs([...replaced, ...unused]);
    return { etag, size, versionId, checksum };
  }

  async abortUpload(u: UploadRow): Promise<void> {
    const claimed = await this.db.deleteFrom('obs_uploads').where('id', '=', u.id).executeTakeFirst();
    if (Number(claimed.numDeletedRows) !== 1) throw new ObsError(404, 'NoSuchUpload', 'the specified multipart upload does not exist');
    const parts = await this.listParts(u);
    await this.db.deleteFrom('obs_upload_parts').where('upload_id', '=', u.id).execute();
    await this.dropBlobs(parts.map((p) => p.blob_id));
  }

  /**
   * Removes blobs whose writer died before committing them (a crash mid-upload), once they are older
   * than `olderThanMs`; any node may run it.
   */
  async collectOrphans(olderThanMs = 3_600_000): Promise<number> {
    const cutoff = this.now() - olderThanMs;
    const stale = await this.db.selectFrom('obs_pending_blobs').select('blob_id').where('created_at', '<', cutoff).limit(1000).execute();
    for (const { blob_id } of stale) {
      await this.blobs.delete(blob_id);
      await this.db.deleteFrom('obs_pending_blobs').where('blob_id', '=', blob_id).execute();
    }
    return stale.length;
  }

  /**
   * DeleteObject. With a version id the version is removed for good (and the newest remaining one
   * becomes current); without one, a versioned bucket gets a delete marker and an unversioned bucket
   * loses the object.
   */
  async deleteObject(bucket: BucketRow, key: string, versionId?: string, opts: { bypassGovernance?: boolean } = {}): Promise<{ versionId?: string; deleteMarker?: boolean }> {
    if (versionId !== undefined) {
      const removed = await this.db.transaction().execute(async (tx) => {
        const row = await tx.selectFrom('obs_objects').selectAll().where('bucket_id', '=', bucket.id).where('key', '=', key).where('version_id', '=', versionId).executeTakeFirst();
        if (!row) return null;
        // Object lock: a version under legal hold or unexpired retention stays (GOVERNANCE yields to a bypass).
        if (row.legal_hold) throw new ObsError(403, 'AccessDenied', 'the object version is under a legal hold');
        if (row.lock_until !== null && row.lock_until > this.now() && (row.lock_mode === 'COMPLIANCE' || !opts.bypassGovernance)) {
          throw new ObsError(403, 'AccessDenied', `the object version is locked (${row.lock_mode}) until ${new Date(row.lock_until).toISOString()}`);
        }
        // The same conditions again in the DELETE itself: on PostgreSQL a legal hold or retention set
        // since the row was read (another node, another request) is seen here, and the version stays.
        const t = this.now();
        const del = await tx.deleteFrom('obs_objects').where('bucket_id', '=', bucket.id).where('key', '=', key).where('version_id', '=', versionId)
          .where('legal_hold', '=', 0)
          .where((eb) => eb.or([eb('lock_until', 'is', null), eb('lock_until', '<=', t), ...(opts.bypassGovernance ? [eb('lock_mode', '=', 'GOVERNANCE')] : [])]))
          .executeTakeFirst();
        if (Number(del.numDeletedRows) === 0) throw new ObsError(403, 'AccessDenied', 'the object version was put under a legal hold or retention meanwhile');
        if (row.is_latest) {
          const next = await tx.selectFrom('obs_objects').select('version_id').where('bucket_id', '=', bucket.id).where('key', '=', key).orderBy('seq', 'desc').limit(1).executeTakeFirst();
          if (next) await tx.updateTable('obs_objects').set({ is_latest: 1 }).where('bucket_id', '=', bucket.id).where('key', '=', key).where('version_id', '=', next.version_id).execute();
        }
        return row;
      });
      if (removed) {
        // The row's removal must survive a power loss before its content goes: else the row could come
        // back pointing at nothing.
        await this.opts.durable?.();
        await this.dropBlobs(this.blobsOfRow(removed));
      }
      return removed ? { versionId, ...(removed.delete_marker ? { deleteMarker: true } : {}) } : { versionId };
    }
    if (bucket.versioning === '') {
      const old = await this.db.transaction().execute(async (tx) => {
        const row = await tx.selectFrom('obs_objects').select(['blob_id', 'parts_json', 'delete_marker']).where('bucket_id', '=', bucket.id).where('key', '=', key).where('version_id', '=', NULL_VERSION).executeTakeFirst();
        if (row) await tx.deleteFrom('obs_objects').where('bucket_id', '=', bucket.id).where('key', '=', key).where('version_id', '=', NULL_VERSION).execute();
        return row ? this.blobsOfRow(row) : [];
      });
      if (old.length) await this.opts.durable?.();
      await this.dropBlobs(old);
      return {};
    }
    const markerId = bucket.versioning === 'Enabled' ? newVersionId(this.now()) : NULL_VERSION;
    const marker: ObjectRow = {
      bucket_id: bucket.id, key, version_id: markerId, size: 0, etag: '', content_type: '', metadata_json: '{}', blob_id: '', cipher_size: 0,
      kms_key_id: '', data_key: '', created_at: this.now(), is_latest: 1, delete_marker: 1, seq: 0, parts_json: null,
      lock_mode: null, lock_until: null, legal_hold: 0, tags_json: null, checksum: null, subject_id: null,
    };
    await this.dropBlobs(await this.makeCurrent(marker, []));
    return { versionId: markerId, deleteMarker: true };
  }

  /**
   * Every object version (not delete markers) of the account tagged `custos:subject` = the subject:
   * what data-subject requests (access, portability, erasure) cover in object storage.
   */
  async subjectObjects(accountId: string, subjectId: string): Promise<{ bucket: BucketRow; row: ObjectRow }[]> {
    const buckets = new Map((await this.listBuckets(accountId)).map((b) => [b.id, b]));
    if (!buckets.size) return [];
    const rows = await this.db.selectFrom('obs_objects').selectAll().where('subject_id', '=', subjectId).where('bucket_id', 'in', [...buckets.keys()]).where('delete_marker', '=', 0).orderBy('bucket_id').orderBy('key').orderBy('seq', 'desc').execute();
    return rows.map((row) => ({ bucket: buckets.get(row.bucket_id)!, row }));
  }

  /** An object version's whole content (for archives; callers bound the size). */
  async readWhole(bucket: BucketRow, row: ObjectRow): Promise<Buffer> {
    const chunks: Buffer[] = [];
    if (row.size === 0) return Buffer.alloc(0);
    for await (const c of await this.readObject(bucket, row, 0, row.size - 1)) chunks.push(c as Buffer);
    return Buffer.concat(chunks);
  }

  /**
   * Account destruction: every bucket, object version, delete marker and unfinished upload of the
   * account, with their blobs — object lock included (the account's keys are destroyed with it, so
   * nothing locked could be read again anyway).
   */
  async destroyAccount(accountId: string): Promise<{ buckets: number; versions: number; uploads: number; blobs: number }> {
    const buckets = await this.listBuckets(accountId);
    let versions = 0;
    let uploads = 0;
    let blobs = 0;
    for (const b of buckets) {
      for (;;) {
        const rows = await this.db.selectFrom('obs_objects').select(['key', 'version_id', 'blob_id', 'parts_json', 'delete_marker']).where('bucket_id', '=', b.id).limit(500).execute();
        if (!rows.length) break;
        for (const r of rows) {
          const ids = this.blobsOfRow(r);
          await this.db.deleteFrom('obs_objects').where('bucket_id', '=', b.id).where('key', '=', r.key).where('version_id', '=', r.version_id).execute();
          await this.dropBlobs(ids);
          blobs += ids.length;
          versions++;
        }
      }
      const ups = await this.db.selectFrom('obs_uploads').select('id').where('bucket_id', '=', b.id).execute();
      for (const u of ups) {
        const parts = await this.db.selectFrom('obs_upload_parts').select('blob_id').where('upload_id', '=', u.id).execute();
        await this.db.deleteFrom('obs_upload_parts').where('upload_id', '=', u.id).execute();
        await this.db.deleteFrom('obs_uploads').where('id', '=', u.id).execute();
        await this.dropBlobs(parts.map((x) => x.blob_id));
        blobs += parts.length;
        uploads++;
      }
      await this.db.deleteFrom('obs_buckets').where('id', '=', b.id).execute();
    }
    return { buckets: buckets.length, versions, uploads, blobs };
  }

  /** ListObjectVersions: every version and delete marker, by key, newest first within a key; pages end at a key. */
  async listVersions(bucket: BucketRow, opts: { prefix: string; keyMarker: string; maxKeys: number }): Promise<{ versions: ObjectRow[]; truncated: boolean; nextKeyMarker: string | null }> {
    let q = this.db.selectFrom('obs_objects').selectAll().where('bucket_id', '=', bucket.id).where('key', '>', opts.keyMarker);
    if (opts.prefix) q = q.where('key', '>=', opts.prefix);
    const rows = (await q.orderBy('key').orderBy('seq', 'desc').limit(opts.maxKeys + 1).execute()).filter((r) => r.key.startsWith(opts.prefix));
    if (rows.length <= opts.maxKeys) return { versions: rows, truncated: false, nextKeyMarker: null };
    // Cut before the key the page would split, unless that key alone fills the page.
    const lastKey = rows[opts.maxKeys]!.key;
    let cut = rows.findIndex((r) => r.key === lastKey);
    if (cut === 0) cut = opts.maxKeys;
    const versions = rows.slice(0, cut);
    return { versions, truncated: true, nextKeyMarker: versions[versions.length - 1]!.key };
  }

  /** ListObjects(V2): keys after `startAfter` under `prefix`, rolled up at `delimiter`. */
  async listObjects(bucket: BucketRow, opts: { prefix: string; delimiter: string; startAfter: string; maxKeys: number }): Promise<{ objects: ObjectRow[]; prefixes: string[]; truncated: boolean; next: string | null }> {
    const objects: ObjectRow[] = [];
    const prefixes: string[] = [];
    let after = opts.startAfter;
    let count = 0;
    for (;;) {
      let q = this.db.selectFrom('obs_objects').selectAll().where('bucket_id', '=', bucket.id).where('is_latest', '=', 1).where('delete_marker', '=', 0).where('key', '>', after);
      if (opts.prefix) q = q.where('key', '>=', opts.prefix);
      const rows = await q.orderBy('key').limit(1000).execute();
      if (rows.length === 0) return { objects, prefixes, truncated: false, next: null };
      for (const r of rows) {
        if (!r.key.startsWith(opts.prefix)) {
          // Past the prefix in UTF-8 byte order (the order the database sorts keys in): done.
          if (Buffer.compare(Buffer.from(r.key), Buffer.from(opts.prefix)) > 0) return { objects, prefixes, truncated: false, next: null };
          continue;
        }
        if (count >= opts.maxKeys) return { objects, prefixes, truncated: true, next: after };
        const rest = r.key.slice(opts.prefix.length);
        const cut = opts.delimiter ? rest.indexOf(opts.delimiter) : -1;
        if (cut >= 0) {
          const p = opts.prefix + rest.slice(0, cut + opts.delimiter.length);
          if (prefixes[prefixes.length - 1] !== p) {
            prefixes.push(p);
            count++;
          }
          // Skip every key under this common prefix.
          after = p + '\u{10FFFF}';
        } else {
          objects.push(r);
          count++;
          after = r.key;
        }
      }
      if (rows.length < 1000) return { objects, prefixes, truncated: false, next: null };
    }
  }
}

/** S3's tag limits: keys 1–128 characters, values up to 256, at most `max` tags. */
export function checkTags(tags: Record<string, string>, max: number): void {
  const keys = Object.keys(tags);
  if (keys.length > max) throw new ObsError(400, 'BadRequest', `at most ${max} tags`);
  for (const k of keys) if (k.length < 1 || k.length > 128 || tags[k]!.length > 256) throw new ObsError(400, 'InvalidTag', 'tag keys are 1 to 128 characters, values at most 256');
}

/**
 * The ETag of stored content: its MD5, as S3 gives for unencrypted and SSE-S3 objects (here: under the
 * service's default key). For SSE-C content, the MD5 keyed by the customer's key instead; for content
 * under a customer's KMS key, keyed by a key derived from its own data key (S3 too gives SSE-C and
 * SSE-KMS objects ETags that are not their MD5). A plain digest in the database, in every listing and
 * HEAD would let anyone who may list confirm a guess of content only holders of the key may read.
 */
function etagOf(md5: Buffer, customerKey: Buffer | undefined, kms?: { dataKey: Buffer; blobId: string }): string {
  if (customerKey) return createHmac('sha256', customerKey).update('custos obs sse-c etag\n').update(md5).digest('hex').slice(0, 32);
  if (kms) {
    // One key per blob: the parts of one upload share a data key, and equal ETags among them would
    // tell whoever may add a part whether it holds the same content as another.
    const k = createHmac('sha256', kms.dataKey).update(`custos obs sse-kms etag key\n${kms.blobId}`).digest();
    try {
      return createHmac('sha256', k).update(md5).digest('hex').slice(0, 32);
    } finally {
      k.fill(0);
    }
  }
  return md5.toString('hex');
}

/** A KMS key a customer chose (named in the request or as the bucket's default), not the service's own. */
function isCustomerKey(key: KeyRow): boolean {
  return key.alias !== DEFAULT_KEY_ALIAS;
}

/** SSE-C: a fresh data key sealed under the customer's key, bound to the bucket and the blob (or upload) id. */
function sealForCustomer(bucket: BucketRow, blobId: string, customerKey: Buffer): { plaintext: Buffer; ciphertext: Buffer } {
  const plaintext = randomBytes(32);
  return { plaintext, ciphertext: sealAesGcm(customerKey, plaintext, Buffer.from(`custos obs sse-c ${bucket.id}/${blobId}`)) };
}
/** Throws when the customer's key is not the one the data key was sealed under. */
function openForCustomer(bucket: BucketRow, blobId: string, sealed: string, customerKey: Buffer): Buffer {
  return openAesGcm(customerKey, Buffer.from(sealed, 'base64'), Buffer.from(`custos obs sse-c ${bucket.id}/${blobId}`));
}

function streamContext(bucket: BucketRow, blobId: string): Buffer {
  return Buffer.from(`custos obs ${bucket.account_id}/${bucket.id}/${blobId}`);
}

/** A key disabled, pending deletion or destroyed makes its objects unreadable, and says so. */
function kmsFailure(e: unknown): unknown {
  if (e instanceof ServiceError && e.service === 'KMS') {
    return new ObsError(e.status === 404 ? 403 : e.status === 400 ? 403 : e.status, 'KMS.' + (e as ServiceError & { kind?: string }).kind, `the object's KMS key cannot be used: ${e.message}`);
  }
  return e;
}

/** A conditional write found the row changed since it was read and checked (S3's wording). */
function conflictingChange(): ObsError {
  return new ObsError(409, 'OperationAborted', 'A conflicting conditional operation is currently in progress against this resource. Please try again.');
}

/** A bucket policy's statements in IAM form, with their principals (as stored in policy_compiled_json). */
type CompiledStatements = readonly { principals: readonly { kind: string }[]; statement: { Effect: string } }[];

/** S3's Block Public Access settings of a bucket. */
export interface PublicAccessBlock {
  BlockPublicAcls: boolean;
  IgnorePublicAcls: boolean;
  BlockPublicPolicy: boolean;
  RestrictPublicBuckets: boolean;
}
/** Stored after DeletePublicAccessBlock: no configuration, so nothing is blocked. */
const NO_PUBLIC_ACCESS_BLOCK = 'none';
const ALL_BLOCKED: PublicAccessBlock = Object.freeze({ BlockPublicAcls: true, IgnorePublicAcls: true, BlockPublicPolicy: true, RestrictPublicBuckets: true });
const NONE_BLOCKED: PublicAccessBlock = Object.freeze({ BlockPublicAcls: false, IgnorePublicAcls: false, BlockPublicPolicy: false, RestrictPublicBuckets: false });

/** The bucket's effective settings: every flag on until the owner changes them, as on a new AWS bucket. */
export function publicAccessBlockOf(b: BucketRow): PublicAccessBlock {
  if (b.public_access_block === null) return ALL_BLOCKED;
  if (b.public_access_block === NO_PUBLIC_ACCESS_BLOCK) return NONE_BLOCKED;
  // A flag missing from what is stored (never written so, but a row may be restored from elsewhere) blocks.
  const stored = JSON.parse(b.public_access_block) as Partial<Record<keyof PublicAccessBlock, unknown>>;
  const flag = (k: keyof PublicAccessBlock) => stored[k] !== false;
  return { BlockPublicAcls: flag('BlockPublicAcls'), IgnorePublicAcls: flag('IgnorePublicAcls'), BlockPublicPolicy: flag('BlockPublicPolicy'), RestrictPublicBuckets: flag('RestrictPublicBuckets') };
}
/** Whether anyone may reach the bucket without credentials: its name is public, its policy lets anyone in, nothing restricts it. */
export function isPublicBucket(b: BucketRow): boolean {
  return b.public_name !== null && bucketPolicyIsPublic(b) && !publicAccessBlockOf(b).RestrictPublicBuckets;
}
/** Whether the bucket has a configuration (GetPublicAccessBlock answers 404 once it was deleted). */
export function hasPublicAccessBlock(b: BucketRow): boolean {
  return b.public_access_block !== NO_PUBLIC_ACCESS_BLOCK;
}
/** Whether the stored policy lets anyone in: an Allow statement for Principal "*". */
export function bucketPolicyIsPublic(b: BucketRow): boolean {
  if (!b.policy_compiled_json) return false;
  return compiledPolicyIsPublic(JSON.parse(b.policy_compiled_json) as CompiledStatements);
}
function compiledPolicyIsPublic(statements: CompiledStatements): boolean {
  return statements.some((s) => s.statement.Effect === 'Allow' && s.principals.some((p) => p.kind === 'any'));
}
