import type { Kysely } from 'kysely';

// Privacy operations: the account's purposes with their legal bases, consent history per subject
// and purpose, data-subject requests with their deadlines and history, the processing limits
// (restriction, objection) requests put in place, and encrypted access/portability archives.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('privacy_purposes')
    .addColumn('account_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('name', 'varchar(64)', (c) => c.notNull())
    .addColumn('legal_basis', 'varchar(32)', (c) => c.notNull())
    .addColumn('description', 'varchar(255)', (c) => c.notNull())
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .addPrimaryKeyConstraint('privacy_purposes_pk', ['account_id', 'name'])
    .execute();
  await db.schema
    .createTable('privacy_consents')
    .addColumn('id', 'varchar(36)', (c) => c.primaryKey())
    .addColumn('account_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('subject_id', 'varchar(128)', (c) => c.notNull())
    .addColumn('purpose', 'varchar(64)', (c) => c.notNull())
    .addColumn('status', 'varchar(16)', (c) => c.notNull())
    .addColumn('source', 'varchar(255)', (c) => c.notNull())
    .addColumn('notice_version', 'varchar(64)', (c) => c.notNull())
    .addColumn('recorded_at', 'int8', (c) => c.notNull())
    .addColumn('seq', 'int8', (c) => c.notNull())
    .execute();
  // seq orders one subject's consents for one purpose (the clock alone cannot: two in one millisecond).
  await db.schema.createIndex('privacy_consents_subject').on('privacy_consents').columns(['account_id', 'subject_id', 'purpose', 'seq']).unique().execute();
  await db.schema
    .createTable('privacy_requests')
    .addColumn('id', 'varchar(36)', (c) => c.primaryKey())
    .addColumn('account_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('subject_id', 'varchar(128)', (c) => c.notNull())
    .addColumn('type', 'varchar(24)', (c) => c.notNull())
    .addColumn('status', 'varchar(16)', (c) => c.notNull())
    .addColumn('details_json', 'text', (c) => c.notNull())
    .addColumn('received_at', 'int8', (c) => c.notNull())
    .addColumn('due_at', 'int8', (c) => c.notNull())
    .addColumn('extended_due_at', 'int8')
    .addColumn('extension_reason', 'varchar(1024)')
    .addColumn('verified_at', 'int8')
    .addColumn('verification_json', 'text')
    .addColumn('refusal_reason', 'varchar(1024)')
    .addColumn('completed_at', 'int8')
    .addColumn('result_json', 'text')
    .addColumn('overdue_alerted_at', 'int8')
    .addColumn('updated_at', 'int8', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('privacy_requests_account').on('privacy_requests').columns(['account_id', 'received_at']).execute();
  await db.schema.createIndex('privacy_requests_open').on('privacy_requests').columns(['status', 'due_at']).execute();
  await db.schema
    .createTable('privacy_request_events')
    .addColumn('request_id', 'varchar(36)', (c) => c.notNull())
    .addColumn('seq', 'integer', (c) => c.notNull())
    .addColumn('at', 'int8', (c) => c.notNull())
    .addColumn('event', 'varchar(32)', (c) => c.notNull())
    .addColumn('actor', 'varchar(64)', (c) => c.notNull())
    .addColumn('note', 'varchar(1024)', (c) => c.notNull())
    .addPrimaryKeyConstraint('privacy_request_events_pk', ['request_id', 'seq'])
    .execute();
  await db.schema
    .createTable('privacy_limits')
    .addColumn('id', 'varchar(36)', (c) => c.primaryKey())
    .addColumn('account_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('subject_id', 'varchar(128)', (c) => c.notNull())
    .addColumn('kind', 'varchar(16)', (c) => c.notNull())
    .addColumn('purposes_json', 'text', (c) => c.notNull())
    .addColumn('request_id', 'varchar(36)', (c) => c.notNull())
    .addColumn('since', 'int8', (c) => c.notNull())
    .addColumn('lifted_at', 'int8')
    .execute();
  await db.schema.createIndex('privacy_limits_subject').on('privacy_limits').columns(['account_id', 'subject_id']).execute();
  await db.schema
    .createTable('privacy_archives')
    .addColumn('request_id', 'varchar(36)', (c) => c.primaryKey())
    .addColumn('account_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('kms_key_id', 'varchar(36)', (c) => c.notNull())
    .addColumn('project_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('region', 'varchar(32)', (c) => c.notNull())
    .addColumn('data_key', 'text', (c) => c.notNull())
    .addColumn('content', 'text', (c) => c.notNull())
    .addColumn('link_secret_hash', 'varchar(64)', (c) => c.notNull())
    .addColumn('expires_at', 'int8', (c) => c.notNull())
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .execute();
  // Webhooks: one endpoint per account (its signing secret sealed under a system key) and the outbox
  // of notifications, written with the state change and delivered (signed, retried) by a job.
  await db.schema
    .createTable('privacy_webhooks')
    .addColumn('account_id', 'varchar(32)', (c) => c.primaryKey())
    .addColumn('url', 'varchar(2048)', (c) => c.notNull())
    .addColumn('secret_sealed', 'text', (c) => c.notNull())
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .execute();
  await db.schema
    .createTable('privacy_outbox')
    .addColumn('id', 'varchar(36)', (c) => c.primaryKey())
    .addColumn('account_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('event', 'varchar(64)', (c) => c.notNull())
    .addColumn('payload_json', 'text', (c) => c.notNull())
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .addColumn('attempts', 'integer', (c) => c.notNull())
    .addColumn('next_attempt_at', 'int8', (c) => c.notNull())
    .addColumn('delivered_at', 'int8')
    .addColumn('failed_at', 'int8')
    .addColumn('last_error', 'varchar(255)')
    .execute();
  // Cross-border transfers: the record a copy of personal data to another region needs.
  await db.schema
    .createTable('privacy_transfers')
    .addColumn('id', 'varchar(36)', (c) => c.primaryKey())
    .addColumn('account_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('source_kind', 'varchar(16)', (c) => c.notNull())
    .addColumn('source_name', 'varchar(255)', (c) => c.notNull())
    .addColumn('source_region', 'varchar(32)', (c) => c.notNull())
    .addColumn('destination_project_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('destination_region', 'varchar(32)', (c) => c.notNull())
    .addColumn('purpose', 'varchar(255)', (c) => c.notNull())
    .addColumn('safeguard', 'varchar(64)', (c) => c.notNull())
    .addColumn('notes', 'varchar(1024)', (c) => c.notNull())
    .addColumn('created_by', 'varchar(64)', (c) => c.notNull())
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .addColumn('used_at', 'int8')
    .execute();
  await db.schema.createIndex('privacy_transfers_account').on('privacy_transfers').columns(['account_id', 'created_at']).execute();
  // Account deregistration: frozen for a retention period, then destroyed; the signed destruction
  // certificate is what stays.
  await db.schema
    .createTable('privacy_deregistrations')
    .addColumn('account_id', 'varchar(32)', (c) => c.primaryKey())
    .addColumn('account_name', 'varchar(64)', (c) => c.notNull())
    .addColumn('status', 'varchar(16)', (c) => c.notNull())
    .addColumn('requested_at', 'int8', (c) => c.notNull())
    .addColumn('requested_by', 'varchar(64)', (c) => c.notNull())
    .addColumn('destroy_after', 'int8', (c) => c.notNull())
    .addColumn('cancelled_at', 'int8')
    .addColumn('cancelled_by', 'varchar(64)')
    .addColumn('destroying_since', 'int8')
    .addColumn('destroyed_at', 'int8')
    .addColumn('certificate_json', 'text')
    .addColumn('signature', 'text')
    .addColumn('key_id', 'varchar(32)')
    .execute();
  await db.schema.createIndex('privacy_outbox_due').on('privacy_outbox').columns(['delivered_at', 'failed_at', 'next_attempt_at']).execute();
}

export async function down(db: Kysely<any>): Promise<void> {
  for (const t of ['privacy_deregistrations', 'privacy_transfers', 'privacy_outbox', 'privacy_webhooks', 'privacy_archives', 'privacy_limits', 'privacy_request_events', 'privacy_requests', 'privacy_consents', 'privacy_purposes']) await db.schema.dropTable(t).execute();
}
