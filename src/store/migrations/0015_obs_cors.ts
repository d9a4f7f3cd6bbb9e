import type { Kysely } from 'kysely';

// A bucket's CORS configuration (its rules as JSON), which decides the Access-Control-* headers of
// the actual responses; preflights are answered from the installation's obsCorsOrigins.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('obs_buckets').addColumn('cors_json', 'text').execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('obs_buckets').dropColumn('cors_json').execute();
}
