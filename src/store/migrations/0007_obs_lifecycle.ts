import type { Kysely } from 'kysely';

// OBS lifecycle: a bucket's lifecycle rules (S3 LifecycleConfiguration, stored as JSON).
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('obs_buckets').addColumn('lifecycle_json', 'text').execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('obs_buckets').dropColumn('lifecycle_json').execute();
}
