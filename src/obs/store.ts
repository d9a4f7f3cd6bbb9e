import type { Kysely } from 'kysely';

/** The tables the OBS service alone owns (migration 0004_obs). */
export type ObsTables = {
  obs_buckets: { id: string; account_id: string; name: string; project_id: string; region: string; kms_key_id: string | null; created_at: number; versioning: string };
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
  };
  obs_pending_blobs: { blob_id: string; created_at: number };
};
export type ObsDb = Kysely<ObsTables>;
export type BucketRow = ObsTables['obs_buckets'];
export type ObjectRow = ObsTables['obs_objects'];
