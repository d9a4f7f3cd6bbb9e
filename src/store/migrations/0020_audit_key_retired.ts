import { sql, type Kysely } from 'kysely';

// When each audit signing key was retired: a verifier refuses a digest a key signed after that (or
// one that covers traces recorded after it), so a leaked old key cannot vouch for anything newer.
// Keys retired before this column existed take the moment their successor was made.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('audit_keys').addColumn('retired_at', 'int8').execute();
  await sql`update audit_keys set retired_at = (
      select min(n.created_at) from audit_keys n where n.created_at >= audit_keys.created_at and n.key_id <> audit_keys.key_id and n.status <> 'unused'
    ) where status = 'retired'`.execute(db);
}

export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('audit_keys').dropColumn('retired_at').execute();
}
