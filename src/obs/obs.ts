/**
 * Object storage: buckets named per account and bound to a region (project), objects whose content is
 * stored only as ciphertext. Every object has its own data key from KMS (one KMS call per PUT and
 * per GET), and its content is encrypted in authenticated 64 KiB packages (src/crypto/stream.ts), so
 * a range read decrypts only what it returns.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Readable, Transform } from 'node:stream';
import { decryptRange, encryptedSize, encryptStream } from '../crypto/stream.js';
import { ServiceError } from '../errors.js';
import type { KeyScope, KmsService } from '../kms/kms.js';
import type { KeyRow } from '../kms/store.js';
import type { BlobStore } from '../store/blobs.js';
import { isUniqueViolation } from '../store/db.js';
import type { BucketRow, ObjectRow, ObsDb } from './store.js';

export class ObsError extends ServiceError {
  constructor(status: number, code: string, message: string, details: Record<string, string> = {}) {
    super('OBS', status, code, message, details);
  }
}

const BUCKET_NAME = /^(?!xn--)(?!.*-s3alias$)(?!\d+\.\d+\.\d+\.\d+$)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
/** The tenant's default object key in a project, made on first use. */
export const DEFAULT_KEY_ALIAS = 'obs/default';
export const NULL_VERSION = 'null';
export type Versioning = '' | 'Enabled' | 'Suspended';

/** Version ids sort by creation time (then randomly within a millisecond). */
function newVersionId(now: number): string {
  return now.toString(16).padStart(12, '0') + randomBytes(10).toString('hex');
}
const RETRIES = 3;

export function validBucketName(name: string): boolean {
  return BUCKET_NAME.test(name) && !name.includes('..') && !name.includes('.-') && !name.includes('-.');
}
export function validObjectKey(key: string): boolean {
  return key.length > 0 && Buffer.byteLength(key) <= 1024 && !key.includes('\u0000');
}

export interface PutResult {
  etag: string;
  size: number;
  versionId: string;
}

export interface ObsOptions {
  now?: () => number;
  maxObjectBytes: number;
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

  async createBucket(scope: KeyScope, name: string): Promise<BucketRow> {
    if (!validBucketName(name)) throw new ObsError(400, 'InvalidBucketName', 'bucket names are 3 to 63 lower-case letters, digits, dots and hyphens, starting and ending with a letter or digit');
    const row: BucketRow = { id: randomBytes(16).toString('hex'), account_id: scope.accountId, name, project_id: scope.projectId, region: scope.region, kms_key_id: null, created_at: this.now(), versioning: '' };
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
    await this.db.updateTable('obs_buckets').set({ versioning: status }).where('id', '=', bucket.id).execute();
  }

  // ------------------------------------------------------------------ objects

  private scopeOf(bucket: BucketRow): KeyScope {
    return { accountId: bucket.account_id, projectId: bucket.project_id, region: bucket.region };
  }

  /** The bucket's key, or the tenant's default object key in the bucket's project (made on first use). */
  private async objectKey(bucket: BucketRow): Promise<KeyRow> {
    const scope = this.scopeOf(bucket);
    if (bucket.kms_key_id) return this.kms.getKey(scope, bucket.kms_key_id);
    const found = await this.kms.findKey(scope, DEFAULT_KEY_ALIAS);
    if (found) return found;
    try {
      return await this.kms.createKey(scope, { alias: DEFAULT_KEY_ALIAS, description: 'default key of object storage', keySpec: 'AES_256' });
    } catch (e) {
      const again = await this.kms.findKey(scope, DEFAULT_KEY_ALIAS);
      if (again) return again;
      throw e;
    }
  }

  /**
   * Stores an object from a stream of its content. The content is encrypted as it arrives; the object
   * becomes visible only once its blob is durable and its row committed. `verify` runs after the last
   * byte (declared digests, lengths); if it throws, nothing is stored.
   */
  async putObject(bucket: BucketRow, key: string, content: Readable, meta: { contentType: string; metadata: Record<string, string> }, verify: (digests: { md5: Buffer; sha256: Buffer; size: number }) => void): Promise<PutResult> {
    if (!validObjectKey(key)) throw new ObsError(400, 'KeyTooLongError', 'object keys are 1 to 1024 bytes of UTF-8 without NUL');
    const cmk = await this.objectKey(bucket);
    const blobId = randomBytes(16).toString('hex');
    const context = { 'obs:bucket': bucket.id, 'obs:blob': blobId };
    let dk: { plaintext: Buffer; ciphertext: Buffer };
    try {
      dk = await this.kms.generateDataKey(cmk, 32, context);
    } catch (e) {
      throw kmsFailure(e);
    }
    const md5 = createHash('md5');
    const sha256 = createHash('sha256');
    let size = 0;
    const max = this.opts.maxObjectBytes;
    const meter = new Transform({
      transform(chunk: Buffer, _e, done) {
        size += chunk.length;
        if (size > max) return done(new ObsError(400, 'EntityTooLarge', `your proposed upload exceeds the maximum allowed object size (${max} bytes)`));
        md5.update(chunk);
        sha256.update(chunk);
        done(null, chunk);
      },
    });
    await this.db.insertInto('obs_pending_blobs').values({ blob_id: blobId, created_at: this.now() }).execute();
    let committed = false;
    try {
      const encrypted = content.pipe(meter).pipe(encryptStream(dk.plaintext, streamContext(bucket, blobId)));
      content.on('error', (e) => encrypted.destroy(e));
      meter.on('error', (e) => encrypted.destroy(e));
      const { bytes } = await this.blobs.write(blobId, encrypted);
      if (bytes !== encryptedSize(size)) throw new Error('the encrypted blob has an unexpected size');
      const etagRaw = md5.digest();
      verify({ md5: etagRaw, sha256: sha256.digest(), size });
      const versionId = bucket.versioning === 'Enabled' ? newVersionId(this.now()) : NULL_VERSION;
      const row: ObjectRow = {
        bucket_id: bucket.id, key, version_id: versionId, size, etag: etagRaw.toString('hex'), content_type: meta.contentType,
        metadata_json: JSON.stringify(meta.metadata), blob_id: blobId, cipher_size: bytes, kms_key_id: cmk.id,
        data_key: dk.ciphertext.toString('base64'), created_at: this.now(), is_latest: 1, delete_marker: 0, seq: 0,
      };
      const replaced = await this.makeCurrent(row);
      committed = true;
      if (replaced) await this.blobs.delete(replaced).catch(() => undefined);
      return { etag: row.etag, size, versionId };
    } finally {
      dk.plaintext.fill(0);
      if (!committed) {
        await this.blobs.delete(blobId).catch(() => undefined);
        await this.db.deleteFrom('obs_pending_blobs').where('blob_id', '=', blobId).execute().catch(() => undefined);
      }
    }
  }

  /**
   * Inserts a version (or delete marker) as the key's current one. A 'null' version replaces the
   * previous 'null' version, whose blob id is returned for deletion once committed. Concurrent writers
   * of one key are serialised by the unique current-version index: the loser retries.
   */
  private async makeCurrent(row: ObjectRow): Promise<string | null> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.db.transaction().execute(async (tx) => {
          let replaced: string | null = null;
          if (row.version_id === NULL_VERSION) {
            const old = await tx.selectFrom('obs_objects').select(['blob_id', 'delete_marker']).where('bucket_id', '=', row.bucket_id).where('key', '=', row.key).where('version_id', '=', NULL_VERSION).executeTakeFirst();
            if (old) {
              await tx.deleteFrom('obs_objects').where('bucket_id', '=', row.bucket_id).where('key', '=', row.key).where('version_id', '=', NULL_VERSION).execute();
              if (!old.delete_marker) replaced = old.blob_id;
            }
          }
          const top = await tx.selectFrom('obs_objects').select((eb) => eb.fn.max('seq').as('seq')).where('bucket_id', '=', row.bucket_id).where('key', '=', row.key).executeTakeFirst();
          await tx.updateTable('obs_objects').set({ is_latest: 0 }).where('bucket_id', '=', row.bucket_id).where('key', '=', row.key).where('is_latest', '=', 1).execute();
          await tx.insertInto('obs_objects').values({ ...row, seq: Number(top?.seq ?? 0) + 1 }).execute();
          if (!row.delete_marker) await tx.deleteFrom('obs_pending_blobs').where('blob_id', '=', row.blob_id).execute();
          return replaced;
        });
      } catch (e) {
        if (attempt < RETRIES && isUniqueViolation(e)) continue;
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
  async readObject(bucket: BucketRow, row: ObjectRow, start: number, end: number): Promise<Readable> {
    const scope = this.scopeOf(bucket);
    let key: Buffer;
    try {
      const cmk = await this.kms.getKey(scope, row.kms_key_id);
      key = await this.kms.decrypt(cmk, Buffer.from(row.data_key, 'base64'), { 'obs:bucket': bucket.id, 'obs:blob': row.blob_id });
    } catch (e) {
      throw kmsFailure(e);
    }
    const blobs = this.blobs;
    const source = decryptRange(key, streamContext(bucket, row.blob_id), (o, l) => blobs.readAt(row.blob_id, o, l), row.cipher_size, start, end);
    async function* zeroingAfter() {
      try {
        yield* source;
      } finally {
        key.fill(0);
      }
    }
    return Readable.from(zeroingAfter(), { objectMode: false });
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
  async deleteObject(bucket: BucketRow, key: string, versionId?: string): Promise<{ versionId?: string; deleteMarker?: boolean }> {
    if (versionId !== undefined) {
      const removed = await this.db.transaction().execute(async (tx) => {
        const row = await tx.selectFrom('obs_objects').selectAll().where('bucket_id', '=', bucket.id).where('key', '=', key).where('version_id', '=', versionId).executeTakeFirst();
        if (!row) return null;
        await tx.deleteFrom('obs_objects').where('bucket_id', '=', bucket.id).where('key', '=', key).where('version_id', '=', versionId).execute();
        if (row.is_latest) {
          const next = await tx.selectFrom('obs_objects').select('version_id').where('bucket_id', '=', bucket.id).where('key', '=', key).orderBy('seq', 'desc').limit(1).executeTakeFirst();
          if (next) await tx.updateTable('obs_objects').set({ is_latest: 1 }).where('bucket_id', '=', bucket.id).where('key', '=', key).where('version_id', '=', next.version_id).execute();
        }
        return row;
      });
      if (removed && !removed.delete_marker) await this.blobs.delete(removed.blob_id).catch(() => undefined);
      return removed ? { versionId, ...(removed.delete_marker ? { deleteMarker: true } : {}) } : { versionId };
    }
    if (bucket.versioning === '') {
      const old = await this.db.transaction().execute(async (tx) => {
        const row = await tx.selectFrom('obs_objects').select('blob_id').where('bucket_id', '=', bucket.id).where('key', '=', key).where('version_id', '=', NULL_VERSION).executeTakeFirst();
        if (row) await tx.deleteFrom('obs_objects').where('bucket_id', '=', bucket.id).where('key', '=', key).where('version_id', '=', NULL_VERSION).execute();
        return row?.blob_id ?? null;
      });
      if (old) await this.blobs.delete(old).catch(() => undefined);
      return {};
    }
    const markerId = bucket.versioning === 'Enabled' ? newVersionId(this.now()) : NULL_VERSION;
    const marker: ObjectRow = {
      bucket_id: bucket.id, key, version_id: markerId, size: 0, etag: '', content_type: '', metadata_json: '{}', blob_id: '', cipher_size: 0,
      kms_key_id: '', data_key: '', created_at: this.now(), is_latest: 1, delete_marker: 1, seq: 0,
    };
    const replaced = await this.makeCurrent(marker);
    if (replaced) await this.blobs.delete(replaced).catch(() => undefined);
    return { versionId: markerId, deleteMarker: true };
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
