import type { Migration } from 'kysely';
import * as m0001 from './0001_iam.js';
import * as m0002 from './0002_audit.js';
import * as m0003 from './0003_kms.js';
import * as m0004 from './0004_obs.js';
import * as m0005 from './0005_obs_versions.js';
import * as m0006 from './0006_obs_multipart.js';
import * as m0007 from './0007_obs_lifecycle.js';
import * as m0008 from './0008_obs_object_lock.js';
import * as m0009 from './0009_obs_tagging.js';
import * as m0010a from './0010_audit_detail.js';
import * as m0010b from './0010_vault.js';
import * as m0012 from './0012_obs_checksums.js';
import * as m0013 from './0013_privacy_consent_requests.js';
import * as m0014 from './0014_obs_bucket_policy.js';
import * as m0015 from './0015_obs_cors.js';
import * as m0016 from './0016_obs_multipart_checksums.js';
import * as m0017 from './0017_obs_subject_index.js';
import * as m0018 from './0018_obs_full_object_checksums.js';
import * as m0019 from './0019_obs_public_access.js';
import * as m0020 from './0020_audit_key_retired.js';
import * as m0021 from './0021_kms_material_fingerprint.js';
import * as m0022 from './0022_vault_groups.js';
import * as m0023 from './0023_audit_deliveries.js';

/** Ordered by name; a migration once released is never edited, only followed by a new one. */
export const migrations: Record<string, Migration> = {
  '0001_iam': m0001,
  '0002_audit': m0002,
  '0003_kms': m0003,
  '0004_obs': m0004,
  '0005_obs_versions': m0005,
  '0006_obs_multipart': m0006,
  '0007_obs_lifecycle': m0007,
  '0008_obs_object_lock': m0008,
  '0009_obs_tagging': m0009,
  '0010_audit_detail': m0010a,
  '0010_vault': m0010b,
  '0012_obs_checksums': m0012,
  '0013_privacy_consent_requests': m0013,
  '0014_obs_bucket_policy': m0014,
  '0015_obs_cors': m0015,
  '0016_obs_multipart_checksums': m0016,
  '0017_obs_subject_index': m0017,
  '0018_obs_full_object_checksums': m0018,
  '0019_obs_public_access': m0019,
  '0020_audit_key_retired': m0020,
  '0021_kms_material_fingerprint': m0021,
  '0022_vault_groups': m0022,
  '0023_audit_deliveries': m0023,
};
