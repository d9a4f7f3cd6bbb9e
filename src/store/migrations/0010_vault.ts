import type { Kysely } from 'kysely';

// The personal-data vault: collections with versioned schemas, their whitelists, records whose
// values are stored only encrypted (under a per-record data key wrapped by the collection's KMS
// key), keyed blind indexes for exact-match search, tokens, and the subject events retention rules
// wait for.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('vault_collections')
    .addColumn('id', 'varchar(36)', (c) => c.primaryKey())
    .addColumn('account_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('project_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('region', 'varchar(32)', (c) => c.notNull())
    .addColumn('name', 'varchar(64)', (c) => c.notNull())
    .addColumn('kms_key_id', 'varchar(36)', (c) => c.notNull())
    .addColumn('schema_version', 'integer', (c) => c.notNull())
    .addColumn('schema_json', 'text', (c) => c.notNull())
    // The collection's 256-bit secret (blind-index, hash and token keys derive from it), wrapped by its KMS key.
    .addColumn('secret_wrapped', 'text', (c) => c.notNull())
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .addColumn('updated_at', 'int8', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('vault_collections_name').on('vault_collections').columns(['account_id', 'name']).unique().execute();

  await db.schema
    .createTable('vault_schema_versions')
    .addColumn('collection_id', 'varchar(36)', (c) => c.notNull())
    .addColumn('version', 'integer', (c) => c.notNull())
    .addColumn('schema_json', 'text', (c) => c.notNull())
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .addColumn('created_by', 'varchar(64)', (c) => c.notNull())
    .addPrimaryKeyConstraint('vault_schema_versions_pk', ['collection_id', 'version'])
    .execute();

  await db.schema
    .createTable('vault_access')
    .addColumn('collection_id', 'varchar(36)', (c) => c.notNull())
    .addColumn('principal_type', 'varchar(8)', (c) => c.notNull())
    .addColumn('principal_id', 'varchar(64)', (c) => c.notNull())
    .addColumn('permissions_json', 'text', (c) => c.notNull())
    .addColumn('unmask_json', 'text', (c) => c.notNull())
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .addPrimaryKeyConstraint('vault_access_pk', ['collection_id', 'principal_type', 'principal_id'])
    .execute();

  await db.schema
    .createTable('vault_records')
    .addColumn('id', 'varchar(36)', (c) => c.primaryKey())
    .addColumn('collection_id', 'varchar(36)', (c) => c.notNull())
    .addColumn('account_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('subject_id', 'varchar(128)', (c) => c.notNull())
    .addColumn('region', 'varchar(32)', (c) => c.notNull())
    .addColumn('kms_key_id', 'varchar(36)', (c) => c.notNull())
    // The record's data key, wrapped by the collection's KMS key; deleted with the record.
    .addColumn('data_key', 'text', (c) => c.notNull())
    // { property: { c: ciphertext (base64), t: written at, d: delete at | null } }
    .addColumn('values_json', 'text', (c) => c.notNull())
    .addColumn('next_delete_at', 'int8')
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .addColumn('updated_at', 'int8', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('vault_records_subject').on('vault_records').columns(['collection_id', 'subject_id']).execute();
  await db.schema.createIndex('vault_records_account_subject').on('vault_records').columns(['account_id', 'subject_id']).execute();
  await db.schema.createIndex('vault_records_due').on('vault_records').columns(['next_delete_at']).execute();

  await db.schema
    .createTable('vault_index')
    .addColumn('collection_id', 'varchar(36)', (c) => c.notNull())
    .addColumn('property', 'varchar(64)', (c) => c.notNull())
    .addColumn('digest', 'varchar(64)', (c) => c.notNull())
    .addColumn('record_id', 'varchar(36)', (c) => c.notNull())
    .addPrimaryKeyConstraint('vault_index_pk', ['collection_id', 'property', 'digest', 'record_id'])
    .execute();
  await db.schema.createIndex('vault_index_record').on('vault_index').columns(['record_id']).execute();

  await db.schema
    .createTable('vault_tokens')
    .addColumn('collection_id', 'varchar(36)', (c) => c.notNull())
    .addColumn('token', 'varchar(64)', (c) => c.notNull())
    .addColumn('record_id', 'varchar(36)', (c) => c.notNull())
    .addColumn('property', 'varchar(64)', (c) => c.notNull())
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .addPrimaryKeyConstraint('vault_tokens_pk', ['collection_id', 'token', 'record_id', 'property'])
    .execute();
  await db.schema.createIndex('vault_tokens_record').on('vault_tokens').columns(['record_id', 'property']).execute();

  await db.schema
    .createTable('vault_subject_events')
    .addColumn('id', 'varchar(36)', (c) => c.primaryKey())
    .addColumn('account_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('subject_id', 'varchar(128)', (c) => c.notNull())
    .addColumn('event', 'varchar(64)', (c) => c.notNull())
    .addColumn('occurred_at', 'int8', (c) => c.notNull())
    .addColumn('received_at', 'int8', (c) => c.notNull())
    .addColumn('values_scheduled', 'integer', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('vault_subject_events_subject').on('vault_subject_events').columns(['account_id', 'subject_id', 'occurred_at']).execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  for (const t of ['vault_subject_events', 'vault_tokens', 'vault_index', 'vault_records', 'vault_access', 'vault_schema_versions', 'vault_collections']) await db.schema.dropTable(t).execute();
}
