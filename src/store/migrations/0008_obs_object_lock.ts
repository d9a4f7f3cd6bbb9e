import type { Kysely } from 'kysely';

// OBS object lock (WORM): enabled per bucket at creation, with a default retention; each object
// version may carry a retention (mode and date) and a legal hold.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('obs_buckets').addColumn('object_lock', 'integer', (c) => c.notNull().defaultTo(0)).execute();
  await db.schema.alterTable('obs_buckets').addColumn('lock_default_mode', 'varchar(16)').execute();
  await db.schema.alterTable('obs_buckets').addColumn('lock_default_days', 'integer').execute();
  await db.schema.alterTable('obs_objects').addColumn('lock_mode', 'varchar(16)').execute();
  await db.schema.alterTable('obs_objects').addColumn('lock_until', 'int8').execute();
  await db.schema.alterTable('obs_objects').addColumn('legal_hold', 'integer', (c) => c.notNull().defaultTo(0)).execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  for (const c of ['legal_hold', 'lock_until', 'lock_mode']) await db.schema.alterTable('obs_objects').dropColumn(c).execute();
  for (const c of ['lock_default_days', 'lock_default_mode', 'object_lock']) await db.schema.alterTable('obs_buckets').dropColumn(c).execute();
}
