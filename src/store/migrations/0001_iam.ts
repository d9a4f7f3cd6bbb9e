import type { Kysely } from 'kysely';

// Timestamps are epoch milliseconds in int8; flags are 0/1 integers, so one query layer fits both databases.
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('system_keys')
    .addColumn('name', 'varchar(64)', (c) => c.primaryKey())
    .addColumn('wrapped', 'text', (c) => c.notNull())
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .execute();
  await db.schema
    .createTable('settings')
    .addColumn('name', 'varchar(64)', (c) => c.primaryKey())
    .addColumn('value', 'text', (c) => c.notNull())
    .execute();
  await db.schema
    .createTable('iam_accounts')
    .addColumn('id', 'varchar(32)', (c) => c.primaryKey())
    .addColumn('name', 'varchar(64)', (c) => c.notNull().unique())
    .addColumn('status', 'varchar(16)', (c) => c.notNull())
    .addColumn('security_settings', 'text', (c) => c.notNull())
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .execute();
  await db.schema
    .createTable('iam_projects')
    .addColumn('id', 'varchar(32)', (c) => c.primaryKey())
    .addColumn('account_id', 'varchar(32)', (c) => c.notNull().references('iam_accounts.id'))
    .addColumn('name', 'varchar(64)', (c) => c.notNull())
    .addColumn('region', 'varchar(32)', (c) => c.notNull())
    .addColumn('description', 'varchar(255)', (c) => c.notNull())
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .addUniqueConstraint('iam_projects_account_name', ['account_id', 'name'])
    .execute();
  await db.schema
    .createTable('iam_users')
    .addColumn('id', 'varchar(32)', (c) => c.primaryKey())
    .addColumn('account_id', 'varchar(32)', (c) => c.notNull().references('iam_accounts.id'))
    .addColumn('name', 'varchar(64)', (c) => c.notNull())
    .addColumn('email', 'varchar(255)')
    .addColumn('description', 'varchar(255)', (c) => c.notNull())
    .addColumn('enabled', 'integer', (c) => c.notNull())
    .addColumn('password_hash', 'text')
    .addColumn('password_changed_at', 'int8')
    .addColumn('failed_logins', 'integer', (c) => c.notNull())
    .addColumn('first_failed_at', 'int8')
    .addColumn('locked_until', 'int8')
    .addColumn('mfa_secret', 'text')
    .addColumn('mfa_pending_secret', 'text')
    .addColumn('mfa_last_step', 'int8')
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .addUniqueConstraint('iam_users_account_name', ['account_id', 'name'])
    .execute();
  await db.schema
    .createTable('iam_password_history')
    .addColumn('user_id', 'varchar(32)', (c) => c.notNull().references('iam_users.id').onDelete('cascade'))
    .addColumn('hash', 'text', (c) => c.notNull())
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('iam_password_history_user').on('iam_password_history').column('user_id').execute();
  await db.schema
    .createTable('iam_groups')
    .addColumn('id', 'varchar(32)', (c) => c.primaryKey())
    .addColumn('account_id', 'varchar(32)', (c) => c.notNull().references('iam_accounts.id'))
    .addColumn('name', 'varchar(64)', (c) => c.notNull())
    .addColumn('description', 'varchar(255)', (c) => c.notNull())
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .addUniqueConstraint('iam_groups_account_name', ['account_id', 'name'])
    .execute();
  await db.schema
    .createTable('iam_group_members')
    .addColumn('group_id', 'varchar(32)', (c) => c.notNull().references('iam_groups.id').onDelete('cascade'))
    .addColumn('user_id', 'varchar(32)', (c) => c.notNull().references('iam_users.id').onDelete('cascade'))
    .addPrimaryKeyConstraint('iam_group_members_pk', ['group_id', 'user_id'])
    .execute();
  await db.schema.createIndex('iam_group_members_user').on('iam_group_members').column('user_id').execute();
  await db.schema
    .createTable('iam_policies')
    .addColumn('id', 'varchar(32)', (c) => c.primaryKey())
    .addColumn('account_id', 'varchar(32)') // null: a system policy every account can attach
    .addColumn('name', 'varchar(128)', (c) => c.notNull())
    .addColumn('description', 'varchar(255)', (c) => c.notNull())
    .addColumn('document', 'text', (c) => c.notNull())
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .addColumn('updated_at', 'int8', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('iam_policies_account').on('iam_policies').columns(['account_id', 'name']).execute();
  await db.schema
    .createTable('iam_policy_attachments')
    .addColumn('account_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('policy_id', 'varchar(32)', (c) => c.notNull().references('iam_policies.id').onDelete('cascade'))
    .addColumn('principal_type', 'varchar(16)', (c) => c.notNull())
    .addColumn('principal_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('project_id', 'varchar(32)', (c) => c.notNull()) // '' means account-wide
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .addPrimaryKeyConstraint('iam_policy_attachments_pk', ['policy_id', 'principal_type', 'principal_id', 'project_id'])
    .execute();
  await db.schema
    .createIndex('iam_policy_attachments_principal')
    .on('iam_policy_attachments')
    .columns(['principal_type', 'principal_id'])
    .execute();
  await db.schema
    .createTable('iam_agencies')
    .addColumn('id', 'varchar(32)', (c) => c.primaryKey())
    .addColumn('account_id', 'varchar(32)', (c) => c.notNull().references('iam_accounts.id'))
    .addColumn('name', 'varchar(64)', (c) => c.notNull())
    .addColumn('trust_account_id', 'varchar(32)', (c) => c.notNull().references('iam_accounts.id'))
    .addColumn('description', 'varchar(255)', (c) => c.notNull())
    .addColumn('max_session_seconds', 'integer', (c) => c.notNull())
    .addColumn('expires_at', 'int8')
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .addUniqueConstraint('iam_agencies_account_name', ['account_id', 'name'])
    .execute();
  await db.schema
    .createTable('iam_tokens')
    .addColumn('token_hash', 'varchar(64)', (c) => c.primaryKey())
    .addColumn('account_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('user_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('project_id', 'varchar(32)')
    .addColumn('agency_id', 'varchar(32)')
    .addColumn('methods', 'varchar(64)', (c) => c.notNull())
    .addColumn('mfa', 'integer', (c) => c.notNull())
    .addColumn('issued_at', 'int8', (c) => c.notNull())
    .addColumn('expires_at', 'int8', (c) => c.notNull())
    .addColumn('revoked', 'integer', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('iam_tokens_user').on('iam_tokens').column('user_id').execute();
  await db.schema.createIndex('iam_tokens_expires').on('iam_tokens').column('expires_at').execute();
  await db.schema
    .createTable('iam_access_keys')
    .addColumn('access_key', 'varchar(32)', (c) => c.primaryKey())
    .addColumn('account_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('user_id', 'varchar(32)', (c) => c.notNull())
    .addColumn('secret', 'text', (c) => c.notNull()) // sealed under a key the root key wraps
    .addColumn('status', 'varchar(16)', (c) => c.notNull())
    .addColumn('description', 'varchar(255)', (c) => c.notNull())
    .addColumn('project_id', 'varchar(32)')
    .addColumn('agency_id', 'varchar(32)')
    .addColumn('security_token_hash', 'varchar(64)')
    .addColumn('mfa', 'integer', (c) => c.notNull())
    .addColumn('expires_at', 'int8')
    .addColumn('last_used_at', 'int8')
    .addColumn('created_at', 'int8', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('iam_access_keys_user').on('iam_access_keys').column('user_id').execute();
  await db.schema
    .createTable('iam_replay_cache')
    .addColumn('signature_hash', 'varchar(64)', (c) => c.primaryKey())
    .addColumn('expires_at', 'int8', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('iam_replay_cache_expires').on('iam_replay_cache').column('expires_at').execute();
}

export async function down(): Promise<void> {
  throw new Error('0001_iam cannot be reverted: it holds the accounts');
}
