import type { Kysely } from 'kysely';

/** The tables the vault alone owns (migration 0010_vault), plus the shared settings table for its lease. */
export type VaultTables = {
  vault_collections: {
    id: string; account_id: string; project_id: string; region: string; name: string; kms_key_id: string;
    schema_version: number; schema_json: string; secret_wrapped: string; created_at: number; updated_at: number;
  };
  vault_schema_versions: { collection_id: string; version: number; schema_json: string; created_at: number; created_by: string };
  vault_access: { collection_id: string; principal_type: string; principal_id: string; permissions_json: string; unmask_json: string; created_at: number };
  vault_records: {
    id: string; collection_id: string; account_id: string; subject_id: string; region: string; kms_key_id: string;
    data_key: string; values_json: string; groups_json: string | null; next_delete_at: number | null; created_at: number; updated_at: number;
  };
  vault_index: { collection_id: string; property: string; digest: string; record_id: string };
  vault_tokens: { collection_id: string; token: string; record_id: string; property: string; created_at: number };
  vault_subject_events: { id: string; account_id: string; subject_id: string; event: string; occurred_at: number; received_at: number; values_scheduled: number };
  settings: { name: string; value: string };
};

export type VaultDb = Kysely<VaultTables>;
export type CollectionRow = VaultTables['vault_collections'];
export type RecordRow = VaultTables['vault_records'];
export type AccessRow = VaultTables['vault_access'];
