import type { Kysely } from 'kysely';

/** The tables the KMS service alone owns (migration 0003_kms). */
export type KmsTables = {
  kms_keys: {
    id: string;
    account_id: string;
    project_id: string;
    region: string;
    alias: string | null;
    alias_created_at: number | null;
    description: string;
    key_spec: string;
    key_usage: string;
    origin: string;
    state: string;
    created_at: number;
    updated_at: number;
    deletion_date: number | null;
    destroyed_at: number | null;
    current_version: number;
    rotation_enabled: number;
    rotation_interval_days: number;
    next_rotation_at: number | null;
    last_rotated_at: number | null;
    tags_json: string;
    import_token_hash: string | null;
    import_wrapping_key: string | null;
    import_wrapping_algorithm: string | null;
    import_expires_at: number | null;
    material_expires_at: number | null;
    /** Of the material first imported (origin external): a re-import must match it. */
    material_fingerprint: string | null;
  };
  kms_key_versions: {
    key_id: string;
    version: number;
    material_wrapped: string | null;
    public_key: string | null;
    created_at: number;
  };
  kms_grants: {
    id: string;
    key_id: string;
    account_id: string;
    name: string;
    grantee: string;
    retiring: string | null;
    operations_json: string;
    issuer: string;
    created_at: number;
  };
};

export type KmsDb = Kysely<KmsTables>;
export type KeyRow = KmsTables['kms_keys'];
export type GrantRow = KmsTables['kms_grants'];

/**
 * Every column of kms_keys, for a service that reads a key's row joined to its own rows (the vault):
 * the key's state is read with each operation, uncached, in one query instead of two.
 */
export const KEY_COLUMNS = [
  'id', 'account_id', 'project_id', 'region', 'alias', 'alias_created_at', 'description', 'key_spec', 'key_usage', 'origin', 'state',
  'created_at', 'updated_at', 'deletion_date', 'destroyed_at', 'current_version', 'rotation_enabled', 'rotation_interval_days',
  'next_rotation_at', 'last_rotated_at', 'tags_json', 'import_token_hash', 'import_wrapping_key', 'import_wrapping_algorithm',
  'import_expires_at', 'material_expires_at', 'material_fingerprint',
] as const satisfies readonly (keyof KeyRow)[];
// A column added to kms_keys without being listed above fails to compile here.
const everyKeyColumn: Exclude<keyof KeyRow, (typeof KEY_COLUMNS)[number]> extends never ? true : never = true;
void everyKeyColumn;
