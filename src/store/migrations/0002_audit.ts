import type { Kysely } from 'kysely';

// The audit trail: one hash chain per trail (an account's id, or '' for requests no account owns),
// a head row per trail that appenders lock so nodes never fork a chain, signed digests, signing keys.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('audit_heads')
    .addColumn('trail', 'varchar(32)', (c) => c.primaryKey())
    .addColumn('seq', 'int8', (c) => c.notNull())
    .addColumn('hash', 'varchar(64)', (c) => c.notNull())
    .addColumn('updated_at', 'int8', (c) => c.notNull())
    .execute();
  await db.schema
    .createTable('audit_traces')
    .addColumn('trail', 'varchar(32)', (c) => c.notNull())
    .addColumn('seq', 'int8', (c) => c.notNull())
    .addColumn('trace_id', 'varchar(36)', (c) => c.notNull().unique())
    .addColumn('time', 'int8', (c) => c.notNull())
    .addColumn('record_time', 'int8', (c) => c.notNull())
    .addColumn('trace_name', 'varchar(128)', (c) => c.notNull())
    .addColumn('trace_type', 'varchar(16)', (c) => c.notNull())
    .addColumn('trace_rating', 'varchar(16)', (c) => c.notNull())
    .addColumn('service_type', 'varchar(32)', (c) => c.notNull())
    .addColumn('resource_type', 'varchar(64)')
    .addColumn('resource_id', 'varchar(255)')
    .addColumn('resource_name', 'varchar(255)')
    .addColumn('project_id', 'varchar(32)')
    .addColumn('region', 'varchar(32)')
    .addColumn('user_name', 'varchar(64)')
    .addColumn('user_json', 'text', (c) => c.notNull())
    .addColumn('source_ip', 'varchar(64)', (c) => c.notNull())
    .addColumn('user_agent', 'varchar(256)')
    .addColumn('request_id', 'varchar(64)', (c) => c.notNull())
    .addColumn('http_method', 'varchar(16)', (c) => c.notNull())
    .addColumn('api_path', 'varchar(255)', (c) => c.notNull())
    .addColumn('code', 'integer', (c) => c.notNull())
    .addColumn('error_code', 'varchar(64)')
    .addColumn('correlation_json', 'text')
    .addColumn('prev_hash', 'varchar(64)', (c) => c.notNull())
    .addColumn('hash', 'varchar(64)', (c) => c.notNull())
    .addPrimaryKeyConstraint('audit_traces_pk', ['trail', 'seq'])
    .execute();
  // Queries walk a trail newest-first (seq descending); the common filters get their own path so a
  // rare match is found without scanning the trail.
  await db.schema.createIndex('audit_traces_time').on('audit_traces').columns(['trail', 'time']).execute();
  await db.schema.createIndex('audit_traces_name').on('audit_traces').columns(['trail', 'trace_name', 'seq']).execute();
  await db.schema.createIndex('audit_traces_resource').on('audit_traces').columns(['trail', 'resource_id', 'seq']).execute();
  await db.schema.createIndex('audit_traces_user').on('audit_traces').columns(['trail', 'user_name', 'seq']).execute();
  await db.schema
    .createTable('audit_digests')
    .addColumn('trail', 'varchar(32)', (c) => c.notNull())
    .addColumn('digest_seq', 'int8', (c) => c.notNull())
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .addColumn('start_seq', 'int8', (c) => c.notNull())
    .addColumn('end_seq', 'int8', (c) => c.notNull())
    .addColumn('trace_count', 'int8', (c) => c.notNull())
    .addColumn('start_prev_hash', 'varchar(64)', (c) => c.notNull())
    .addColumn('end_hash', 'varchar(64)', (c) => c.notNull())
    .addColumn('end_record_time', 'int8')
    .addColumn('prev_signature', 'text')
    .addColumn('key_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('signature', 'text', (c) => c.notNull())
    .addPrimaryKeyConstraint('audit_digests_pk', ['trail', 'digest_seq'])
    .execute();
  await db.schema
    .createTable('audit_keys')
    .addColumn('key_id', 'varchar(32)', (c) => c.primaryKey())
    .addColumn('algorithm', 'varchar(16)', (c) => c.notNull())
    .addColumn('public_key', 'text', (c) => c.notNull())
    .addColumn('private_key', 'text', (c) => c.notNull())
    .addColumn('status', 'varchar(16)', (c) => c.notNull())
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .execute();
  await db.schema
    .createTable('audit_settings')
    .addColumn('trail', 'varchar(32)', (c) => c.primaryKey())
    .addColumn('retention_days', 'integer', (c) => c.notNull())
    .addColumn('cleared_through_seq', 'int8', (c) => c.notNull())
    .addColumn('updated_at', 'int8', (c) => c.notNull())
    .execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  for (const t of ['audit_settings', 'audit_keys', 'audit_digests', 'audit_traces', 'audit_heads']) await db.schema.dropTable(t).execute();
}
