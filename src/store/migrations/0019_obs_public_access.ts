import type { Kysely } from 'kysely';

// Anonymous access to public buckets. A bucket's Block Public Access settings (JSON of S3's four
// flags; null is all four on, as on a new AWS bucket; 'none' after DeletePublicAccessBlock), and
// `public_name`, set to the bucket's name while its policy lets anyone in and nothing blocks it.
// Bucket names are unique per account only; unique public names are what let a request without
// credentials say which bucket it means.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('obs_buckets').addColumn('public_access_block', 'text').execute();
  await db.schema.alterTable('obs_buckets').addColumn('public_name', 'varchar(63)').execute();
  await db.schema.createIndex('obs_buckets_public_name').on('obs_buckets').column('public_name').unique().execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropIndex('obs_buckets_public_name').execute();
  await db.schema.alterTable('obs_buckets').dropColumn('public_name').execute();
  await db.schema.alterTable('obs_buckets').dropColumn('public_access_block').execute();
}
