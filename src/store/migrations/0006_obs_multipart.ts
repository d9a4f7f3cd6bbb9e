import type { Kysely } from 'kysely';

// OBS multipart uploads: an upload (with its data key, wrapped by KMS) and its parts, each its own
// encrypted blob; a completed multipart object lists its parts' blobs.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('obs_objects').addColumn('parts_json', 'text').execute();
  await db.schema
    .createTable('obs_uploads')
    .addColumn('id', 'varchar(32)', (c) => c.primaryKey())
    .addColumn('bucket_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('key', 'varchar(1024)', (c) => c.notNull())
    .addColumn('kms_key_id', 'varchar(36)', (c) => c.notNull())
    .addColumn('data_key', 'text', (c) => c.notNull())
    .addColumn('content_type', 'varchar(255)', (c) => c.notNull())
    .addColumn('metadata_json', 'text', (c) => c.notNull())
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('obs_uploads_by_bucket').on('obs_uploads').columns(['bucket_id', 'key']).execute();
  await db.schema
    .createTable('obs_upload_parts')
    .addColumn('upload_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('part_number', 'integer', (c) => c.notNull())
    .addColumn('blob_id', 'varchar(64)', (c) => c.notNull())
    .addColumn('size', 'int8', (c) => c.notNull())
    .addColumn('cipher_size', 'int8', (c) => c.notNull())
    .addColumn('etag', 'varchar(64)', (c) => c.notNull())
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .addPrimaryKeyConstraint('obs_upload_parts_pk', ['upload_id', 'part_number'])
    .execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropTable('obs_upload_parts').execute();
  await db.schema.dropTable('obs_uploads').execute();
  await db.schema.alterTable('obs_objects').dropColumn('parts_json').execute();
}
