import { sql, type Kysely } from 'kysely';

// OBS versioning: a bucket's versioning state, and per object version whether it is the key's
// current version and whether it is a delete marker.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('obs_buckets').addColumn('versioning', 'varchar(16)', (c) => c.notNull().defaultTo('')).execute();
  await db.schema.alterTable('obs_objects').addColumn('is_latest', 'integer', (c) => c.notNull().defaultTo(1)).execute();
  await db.schema.alterTable('obs_objects').addColumn('delete_marker', 'integer', (c) => c.notNull().defaultTo(0)).execute();
  // Order of a key's versions, newest highest (clocks can tie within a millisecond, and differ between nodes).
  await db.schema.alterTable('obs_objects').addColumn('seq', 'int8', (c) => c.notNull().defaultTo(0)).execute();
  await db.schema.createIndex('obs_objects_current').on('obs_objects').columns(['bucket_id', 'is_latest', 'key']).execute();
  // At most one current version per key: concurrent writers of a key cannot both make theirs current.
  await db.schema.createIndex('obs_objects_one_current').on('obs_objects').columns(['bucket_id', 'key']).unique().where(sql.ref('is_latest'), '=', 1).execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropIndex('obs_objects_one_current').execute();
  await db.schema.dropIndex('obs_objects_current').execute();
  await db.schema.alterTable('obs_objects').dropColumn('seq').execute();
  await db.schema.alterTable('obs_objects').dropColumn('delete_marker').execute();
  await db.schema.alterTable('obs_objects').dropColumn('is_latest').execute();
  await db.schema.alterTable('obs_buckets').dropColumn('versioning').execute();
}
