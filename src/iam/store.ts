import type { Kysely } from 'kysely';

/** The tables iam owns (created by store/migrations/0001_iam). No other service reads them. */
export type IamTables = {
  settings: { name: string; value: string };
  iam_accounts: { id: string; name: string; status: string; security_settings: string; created_at: number };
  iam_projects: { id: string; account_id: string; name: string; region: string; description: string; created_at: number };
  iam_users: {
    id: string;
    account_id: string;
    name: string;
    email: string | null;
    description: string;
    enabled: number;
    password_hash: string | null;
    password_changed_at: number | null;
    failed_logins: number;
    first_failed_at: number | null;
    locked_until: number | null;
    mfa_secret: string | null;
    mfa_pending_secret: string | null;
    mfa_last_step: number | null;
    created_at: number;
  };
  iam_password_history: { user_id: string; hash: string; created_at: number };
  iam_groups: { id: string; account_id: string; name: string; description: string; created_at: number };
  iam_group_members: { group_id: string; user_id: string };
  iam_policies: {
    id: string;
    account_id: string | null;
    name: string;
    description: string;
    document: string;
    created_at: number;
    updated_at: number;
  };
  iam_policy_attachments: {
    account_id: string;
    policy_id: string;
    principal_type: 'user' | 'group' | 'agency';
    principal_id: string;
    project_id: string;
    created_at: number;
  };
  iam_agencies: {
    id: string;
    account_id: string;
    name: string;
    trust_account_id: string;
    description: string;
    max_session_seconds: number;
    expires_at: number | null;
    created_at: number;
  };
  iam_tokens: {
    token_hash: string;
    account_id: string;
    user_id: string;
    project_id: string | null;
    agency_id: string | null;
    methods: string;
    mfa: number;
    issued_at: number;
    expires_at: number;
    revoked: number;
  };
  iam_access_keys: {
    access_key: string;
    account_id: string;
    user_id: string;
    secret: string;
    status: 'active' | 'inactive';
    description: string;
    project_id: string | null;
    agency_id: string | null;
    security_token_hash: string | null;
    mfa: number;
    expires_at: number | null;
    last_used_at: number | null;
    created_at: number;
  };
  iam_replay_cache: { signature_hash: string; expires_at: number };
};

export type IamDb = Kysely<IamTables>;
export type UserRow = IamTables['iam_users'];
export type AccountRow = IamTables['iam_accounts'];
export type ProjectRow = IamTables['iam_projects'];
export type AccessKeyRow = IamTables['iam_access_keys'];
