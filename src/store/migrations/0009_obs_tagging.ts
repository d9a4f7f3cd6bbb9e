import type { Kysely } from 'kysely';

// OBS tagging: bucket tags and object (version) tags, as JSON maps.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('obs_buckets').addColumn('tags_json', 'text').execute();
  await db.schema.alterTable('obs_objects').addColumn('tags_json', 'text').execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('obs_objects').dropColumn('tags_json').execute();
  await db.schema.alterTable('obs_buckets').dropColumn('tags_json').execute();
}
