import { PostgresAdapter, sql, type Kysely } from 'kysely';

// Record format 2 (src/vault/sealing.ts) and fewer B-trees per vault write:
// - vault_records.groups_json: a record's values sealed in groups, { group id: blob }; values_json keeps
//   each value's metadata and names its group. Null for records written before, whose values each
//   carry their own ciphertext in values_json.
// - Each searchable value's blind-index digest is kept in its metadata (x), so its index row is
//   deleted by its primary key; the index on vault_index.record_id goes, and on SQLite vault_index
//   becomes a WITHOUT ROWID table (its primary key was a second copy of every row).
// - vault_records_account_subject goes: lookups of a subject across an account's collections go
//   through the account's collections and (collection_id, subject_id).
// A vault insert wrote 13 pages to the WAL and now writes 9.
//
// Nodes of earlier versions cannot read format 2 records, and their deletions would leave format 2
// ciphertext behind: every node is stopped before the first node of this version starts
// (docs/deploy.md, Upgrades).
//
// On PostgreSQL the migrator runs this in a transaction. SQLite's migrator does not, so it runs in
// one of its own, and is written to run again after a crash between its commit and the migrator's
// record of it.
export async function up(db: Kysely<any>): Promise<void> {
  const postgres = db.getExecutor().adapter instanceof PostgresAdapter;
  if (db.isTransaction) return migrate(db, postgres);
  await db.transaction().execute((trx) => migrate(trx, postgres));
}

async function migrate(db: Kysely<any>, postgres: boolean): Promise<void> {
  if (postgres) {
    await sql`alter table vault_records add column if not exists groups_json text`.execute(db);
  } else {
    const { rows } = await sql<{ name: string }>`select name from pragma_table_info('vault_records')`.execute(db);
    if (!rows.some((r) => r.name === 'groups_json')) await db.schema.alterTable('vault_records').addColumn('groups_json', 'text').execute();
  }

  // Index rows of records or values that no longer exist could not be found again: drop them.
  await db.deleteFrom('vault_index').where(({ not, exists, selectFrom }) => not(exists(selectFrom('vault_records as r').select('r.id').whereRef('r.id', '=', 'vault_index.record_id')))).execute();
  let after = '';
  for (;;) {
    const recs = await db.selectFrom('vault_records').select(['id', 'values_json']).where('id', '>', after).orderBy('id').limit(500).execute();
    if (!recs.length) break;
    const rows = await db.selectFrom('vault_index').select(['record_id', 'property', 'digest']).where('record_id', 'in', recs.map((r) => r.id)).execute();
    const byRecord = new Map<string, { property: string; digest: string }[]>();
    for (const r of rows) byRecord.set(r.record_id, [...(byRecord.get(r.record_id) ?? []), r]);
    for (const rec of recs) {
      const entries = byRecord.get(rec.id);
      if (!entries) continue;
      const values = JSON.parse(rec.values_json) as Record<string, { x?: string }>;
      for (const e of entries) {
        const v = Object.hasOwn(values, e.property) ? values[e.property] : undefined;
        if (v) v.x = e.digest;
        else await db.deleteFrom('vault_index').where('record_id', '=', rec.id).where('property', '=', e.property).where('digest', '=', e.digest).execute();
      }
      await db.updateTable('vault_records').set({ values_json: JSON.stringify(values) }).where('id', '=', rec.id).execute();
    }
    after = recs[recs.length - 1]!.id;
  }

  if (postgres) {
    await db.schema.dropIndex('vault_index_record').ifExists().execute();
  } else {
    await sql`drop table if exists vault_index_v2`.execute(db);
    await sql`create table vault_index_v2 (collection_id varchar(36) not null, property varchar(64) not null, digest varchar(64) not null, record_id varchar(36) not null, primary key (collection_id, property, digest, record_id)) without rowid`.execute(db);
    await sql`insert into vault_index_v2 (collection_id, property, digest, record_id) select collection_id, property, digest, record_id from vault_index`.execute(db);
    await db.schema.dropTable('vault_index').execute();
    await sql`alter table vault_index_v2 rename to vault_index`.execute(db);
  }
  await db.schema.dropIndex('vault_records_account_subject').ifExists().execute();
}

// Records written in format 2 stay unreadable to the code before it: going down is for development.
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.createIndex('vault_records_account_subject').on('vault_records').columns(['account_id', 'subject_id']).execute();
  await db.schema.createIndex('vault_index_record').on('vault_index').columns(['record_id']).execute();
  await db.schema.alterTable('vault_records').dropColumn('groups_json').execute();
}
