import type { Kysely } from 'kysely';

// KMS: customer master keys (metadata and state), their versions (material stored only wrapped by
// the root key), grants, and aliases unique per project.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('kms_keys')
    .addColumn('id', 'varchar(36)', (c) => c.primaryKey())
    .addColumn('account_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('project_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('region', 'varchar(32)', (c) => c.notNull())
    .addColumn('alias', 'varchar(255)')
    .addColumn('alias_created_at', 'int8')
    .addColumn('description', 'varchar(255)', (c) => c.notNull())
    .addColumn('key_spec', 'varchar(16)', (c) => c.notNull())
    .addColumn('key_usage', 'varchar(16)', (c) => c.notNull())
    .addColumn('origin', 'varchar(16)', (c) => c.notNull())
    .addColumn('state', 'varchar(24)', (c) => c.notNull())
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .addColumn('updated_at', 'int8', (c) => c.notNull())
    .addColumn('deletion_date', 'int8')
    .addColumn('destroyed_at', 'int8')
    .addColumn('current_version', 'integer', (c) => c.notNull())
    .addColumn('rotation_enabled', 'integer', (c) => c.notNull())
    .addColumn('rotation_interval_days', 'integer', (c) => c.notNull())
    .addColumn('next_rotation_at', 'int8')
    .addColumn('last_rotated_at', 'int8')
    .addColumn('tags_json', 'text', (c) => c.notNull())
    .addColumn('import_token_hash', 'varchar(64)')
    .addColumn('import_wrapping_key', 'text')
    .addColumn('import_wrapping_algorithm', 'varchar(32)')
    .addColumn('import_expires_at', 'int8')
    .addColumn('material_expires_at', 'int8')
    .execute();
  await db.schema.createIndex('kms_keys_by_project').on('kms_keys').columns(['account_id', 'project_id', 'created_at', 'id']).execute();
  await db.schema.createIndex('kms_keys_alias').on('kms_keys').columns(['account_id', 'project_id', 'alias']).unique().execute();
  await db.schema.createIndex('kms_keys_due_deletion').on('kms_keys').columns(['state', 'deletion_date']).execute();
  await db.schema.createIndex('kms_keys_due_rotation').on('kms_keys').columns(['rotation_enabled', 'next_rotation_at']).execute();

  await db.schema
    .createTable('kms_key_versions')
    .addColumn('key_id', 'varchar(36)', (c) => c.notNull())
    .addColumn('version', 'integer', (c) => c.notNull())
    // Root-key-wrapped material; null once the key is destroyed (crypto-shredding).
    .addColumn('material_wrapped', 'text')
    .addColumn('public_key', 'text')
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .addPrimaryKeyConstraint('kms_key_versions_pk', ['key_id', 'version'])
    .execute();

  await db.schema
    .createTable('kms_grants')
    .addColumn('id', 'varchar(64)', (c) => c.primaryKey())
    .addColumn('key_id', 'varchar(36)', (c) => c.notNull())
    .addColumn('account_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('name', 'varchar(255)', (c) => c.notNull())
    .addColumn('grantee', 'varchar(64)', (c) => c.notNull())
    .addColumn('retiring', 'varchar(64)')
    .addColumn('operations_json', 'text', (c) => c.notNull())
    .addColumn('issuer', 'varchar(64)', (c) => c.notNull())
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('kms_grants_by_key').on('kms_grants').columns(['key_id', 'grantee']).execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  for (const t of ['kms_grants', 'kms_key_versions', 'kms_keys']) await db.schema.dropTable(t).execute();
}
