// Migrations that move existing data: applied to a database holding rows written before them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Migrator, PostgresAdapter, sql, type Kysely, type Migration } from 'kysely';
import { migrate, openStore } from '../../src/store/db.js';
import { migrations } from '../../src/store/migrations/index.js';
import { freshDatabase } from '../helpers.js';

/** A store migrated up to (and including) `last`, then handed to `fill`, then migrated to the latest. */
async function across(last: string, fill: (db: Kysely<any>) => Promise<void>, check: (db: Kysely<any>) => Promise<void>) {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'custos-migrations-'));
  const database = await freshDatabase();
  const store = openStore({ dataDir, ...(database.url ? { databaseUrl: database.url } : {}) });
  try {
    const upTo: Record<string, Migration> = Object.fromEntries(Object.entries(migrations).filter(([name]) => name <= last));
    const { error } = await new Migrator({ db: store.db, provider: { getMigrations: async () => upTo } }).migrateToLatest();
    if (error) throw error;
    await fill(store.db as Kysely<any>);
    const applied = await migrate(store);
    assert.ok(applied.length > 0 && applied.every((n) => n > last), `later migrations applied: ${applied.join(', ')}`);
    await check(store.db as Kysely<any>);
  } finally {
    await store.close();
    await database.drop();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

test('0017 indexes the data subject of objects tagged before it (custos:subject), and only theirs', async () => {
  const object = (key: string, version: string, tags: Record<string, string> | null) => ({
    bucket_id: 'b1', key, version_id: version, size: 1, etag: 'e', content_type: 'text/plain', metadata_json: '{}', blob_id: `blob-${key}-${version}`,
    cipher_size: 1, kms_key_id: 'k', data_key: 'd', created_at: 1, is_latest: version === 'v2' || key !== 'a' ? 1 : 0, delete_marker: 0, seq: version === 'v2' ? 2 : 1,
    parts_json: null, lock_mode: null, lock_until: null, legal_hold: 0, tags_json: tags ? JSON.stringify(tags) : null, checksum: null,
  });
  await across('0016_obs_multipart_checksums', async (db) => {
    await db.insertInto('obs_buckets').values({ id: 'b1', account_id: 'acct', name: 'bucket', project_id: 'p', region: 'r', kms_key_id: null, created_at: 1, versioning: 'Enabled', lifecycle_json: null, object_lock: 0, lock_default_mode: null, lock_default_days: null, tags_json: null, policy_json: null, policy_compiled_json: null, cors_json: null }).execute();
    await db.insertInto('obs_objects').values([
      object('a', 'v1', { 'custos:subject': 'alice', team: 'x' }),
      object('a', 'v2', { 'custos:subject': 'alice' }),
      object('b', 'v1', { 'custos:subject': 'bob' }),
      object('c', 'v1', { team: 'custos:subject' }),
      object('d', 'v1', null),
    ]).execute();
  }, async (db) => {
    const rows = await db.selectFrom('obs_objects').select(['key', 'version_id', 'subject_id']).orderBy('key').orderBy('version_id').execute();
    assert.deepEqual(rows.map((r) => [r.key, r.version_id, r.subject_id]), [['a', 'v1', 'alice'], ['a', 'v2', 'alice'], ['b', 'v1', 'bob'], ['c', 'v1', null], ['d', 'v1', null]]);
  });
});

test('0022 keeps each searchable value\'s digest in its metadata, drops index rows that point at nothing, and the indexes it replaces', async () => {
  const record = (id: string, values: Record<string, unknown>) => ({
    id, collection_id: 'c1', account_id: 'acct', subject_id: `s-${id}`, region: 'r', kms_key_id: 'k', data_key: 'wrapped', values_json: JSON.stringify(values), next_delete_at: null, created_at: 1, updated_at: 1,
  });
  const index = (record_id: string, property: string, digest: string) => ({ collection_id: 'c1', property, digest, record_id });
  await across('0021_kms_material_fingerprint', async (db) => {
    await db.insertInto('vault_records').values([
      record('r1', { email: { c: 'x1', t: 1, d: null }, phone: { c: 'x2', t: 1, d: null }, city: { c: 'x3', t: 1, d: null } }),
      record('r2', { email: { c: 'x4', t: 1, d: 5 } }),
    ]).execute();
    await db.insertInto('vault_index').values([
      index('r1', 'email', 'd-email-1'), index('r1', 'phone', 'd-phone-1'), index('r2', 'email', 'd-email-2'),
      index('r2', 'phone', 'd-phone-gone'), // a value the record no longer has
      index('r9', 'email', 'd-record-gone'), // a record that no longer exists
    ]).execute();
  }, async (db) => {
    const recs = await db.selectFrom('vault_records').select(['id', 'values_json', 'groups_json']).orderBy('id').execute();
    assert.deepEqual(recs.map((r) => [r.id, JSON.parse(r.values_json), r.groups_json]), [
      ['r1', { email: { c: 'x1', t: 1, d: null, x: 'd-email-1' }, phone: { c: 'x2', t: 1, d: null, x: 'd-phone-1' }, city: { c: 'x3', t: 1, d: null } }, null],
      ['r2', { email: { c: 'x4', t: 1, d: 5, x: 'd-email-2' } }, null],
    ]);
    const rows = await db.selectFrom('vault_index').select(['record_id', 'property', 'digest']).orderBy('digest').execute();
    assert.deepEqual(rows.map((r) => r.digest), ['d-email-1', 'd-email-2', 'd-phone-1']);
    const indexes = db.getExecutor().adapter instanceof PostgresAdapter
      ? await sql<{ name: string }>`select indexname as name from pg_indexes where tablename in ('vault_index', 'vault_records')`.execute(db)
      : await sql<{ name: string }>`select name from sqlite_master where type = 'index' and tbl_name in ('vault_index', 'vault_records')`.execute(db);
    const names = indexes.rows.map((r) => r.name);
    assert.ok(names.includes('vault_records_subject'), names.join(', '));
    assert.ok(!names.includes('vault_index_record') && !names.includes('vault_records_account_subject'), names.join(', '));
    // Run again, as after a crash between its commit and the migrator's record of it: same result.
    await migrations['0022_vault_groups']!.up(db);
    assert.deepEqual((await db.selectFrom('vault_index').select('digest').orderBy('digest').execute()).map((r) => r.digest), ['d-email-1', 'd-email-2', 'd-phone-1']);
    assert.equal(JSON.parse((await db.selectFrom('vault_records').select('values_json').where('id', '=', 'r1').executeTakeFirstOrThrow()).values_json).email.x, 'd-email-1');
  });
});
