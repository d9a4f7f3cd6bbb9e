import type { Kysely } from 'kysely';

/** The tables the OBS service alone owns (migration 0004_obs). */
export type ObsTables = {
  obs_buckets: { id: string; account_id: string; name: string; project_id: string; region: string; kms_key_id: string | null; created_at: number; versioning: string; lifecycle_json: string | null; object_lock: number; lock_default_mode: string | null; lock_default_days: number | null; tags_json: string | null; policy_json: string | null; policy_compiled_json: string | null; cors_json: string | null;
    /** Block Public Access (migration 0019): null is all four flags on, 'none' no configuration, else JSON. */
    public_access_block: string | null;
    /** The bucket's name while anyone may reach it without credentials (unique across accounts), else null. */
    public_name: string | null };
  obs_objects: {
    bucket_id: string;
    key: string;
    version_id: string;
    size: number;
    etag: string;
    content_type: string;
    metadata_json: string;
    blob_id: string;
    cipher_size: number;
    kms_key_id: string;
    data_key: string;
    created_at: number;
    is_latest: number;
    delete_marker: number;
    seq: number;
    /** Multipart objects: JSON list of {blob, size, cipher}; null for single-blob objects. */
    parts_json: string | null;
    /** Object lock: GOVERNANCE or COMPLIANCE until lock_until (ms); legal hold 1 or 0. */
    lock_mode: string | null;
    lock_until: number | null;
    legal_hold: number;
    tags_json: string | null;
    /** The full-object checksum verified on upload, `<algorithm>:<base64>` (migration 0012); null if none was declared. */
    checksum: string | null;
    /** The `custos:subject` tag's value, indexed for data-subject requests (migration 0017). */
    subject_id: string | null;
  };
  obs_uploads: { id: string; bucket_id: string; key: string; kms_key_id: string; data_key: string; content_type: string; metadata_json: string; created_at: number; checksum_algorithm: string | null; checksum_type: string | null };
  obs_upload_parts: { upload_id: string; part_number: number; blob_id: string; size: number; cipher_size: number; etag: string; created_at: number; checksum: string | null };
  obs_pending_blobs: { blob_id: string; created_at: number };
  settings: { name: string; value: string };
};
export type ObsDb = Kysely<ObsTables>;
export type BucketRow = ObsTables['obs_buckets'];
export type ObjectRow = ObsTables['obs_objects'];
export type UploadRow = ObsTables['obs_uploads'];
export type UploadPartRow = ObsTables['obs_upload_parts'];
