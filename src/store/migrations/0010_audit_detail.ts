import type { Kysely } from 'kysely';

// Data operations (vault reads, writes, searches) name what they touched — record, properties,
// purpose — in a detail column covered by the chain hash. Never values.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('audit_traces').addColumn('detail_json', 'text').execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('audit_traces').dropColumn('detail_json').execute();
}
