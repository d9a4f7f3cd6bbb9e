import { PostgresAdapter, sql, type Kysely } from 'kysely';

// OBS: buckets (named per account, bound to a region) and objects, whose content is a blob of
// ciphertext under a data key that KMS wrapped.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('obs_buckets')
    .addColumn('id', 'varchar(32)', (c) => c.primaryKey())
    .addColumn('account_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('name', 'varchar(63)', (c) => c.notNull())
    .addColumn('project_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('region', 'varchar(32)', (c) => c.notNull())
    .addColumn('kms_key_id', 'varchar(36)')
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('obs_buckets_by_name').on('obs_buckets').columns(['account_id', 'name']).unique().execute();

  await db.schema
    .createTable('obs_objects')
    .addColumn('bucket_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('key', 'varchar(1024)', (c) => c.notNull())
    .addColumn('version_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('size', 'int8', (c) => c.notNull())
    .addColumn('etag', 'varchar(64)', (c) => c.notNull())
    .addColumn('content_type', 'varchar(255)', (c) => c.notNull())
    .addColumn('metadata_json', 'text', (c) => c.notNull())
    .addColumn('blob_id', 'varchar(64)', (c) => c.notNull())
    .addColumn('cipher_size', 'int8', (c) => c.notNull())
    .addColumn('kms_key_id', 'varchar(36)', (c) => c.notNull())
    .addColumn('data_key', 'text', (c) => c.notNull())
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .addPrimaryKeyConstraint('obs_objects_pk', ['bucket_id', 'key', 'version_id'])
    .execute();
  // S3 lists keys in UTF-8 byte order; PostgreSQL's default collation follows the locale instead.
  if (db.getExecutor().adapter instanceof PostgresAdapter) await sql`alter table obs_objects alter column key type varchar(1024) collate "C"`.execute(db);
  // Blobs written but not (yet) committed as an object: collected if their writer died.
  await db.schema
    .createTable('obs_pending_blobs')
    .addColumn('blob_id', 'varchar(64)', (c) => c.primaryKey())
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  for (const t of ['obs_pending_blobs', 'obs_objects', 'obs_buckets']) await db.schema.dropTable(t).execute();
}
