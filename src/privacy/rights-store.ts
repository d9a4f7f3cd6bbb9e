import type { Kysely } from 'kysely';

/** The tables of consent and data-subject requests (migration 0013_privacy_consent_requests). */
export type RightsTables = {
  privacy_purposes: { account_id: string; name: string; legal_basis: string; description: string; created_at: number };
  privacy_consents: { id: string; account_id: string; subject_id: string; purpose: string; status: string; source: string; notice_version: string; recorded_at: number; seq: number };
  privacy_requests: {
    id: string; account_id: string; subject_id: string; type: string; status: string; details_json: string; received_at: number; due_at: number;
    extended_due_at: number | null; extension_reason: string | null; verified_at: number | null; verification_json: string | null; refusal_reason: string | null;
    completed_at: number | null; result_json: string | null; overdue_alerted_at: number | null; updated_at: number;
  };
  privacy_request_events: { request_id: string; seq: number; at: number; event: string; actor: string; note: string };
  privacy_limits: { id: string; account_id: string; subject_id: string; kind: string; purposes_json: string; request_id: string; since: number; lifted_at: number | null };
  privacy_archives: {
    request_id: string; account_id: string; kms_key_id: string; project_id: string; region: string; data_key: string; content: string;
    link_secret_hash: string; expires_at: number; created_at: number;
  };
  privacy_webhooks: { account_id: string; url: string; secret_sealed: string; created_at: number };
  privacy_outbox: {
    id: string; account_id: string; event: string; payload_json: string; created_at: number; attempts: number; next_attempt_at: number;
    delivered_at: number | null; failed_at: number | null; last_error: string | null;
  };
  privacy_transfers: {
    id: string; account_id: string; source_kind: string; source_name: string; source_region: string; destination_project_id: string; destination_region: string;
    purpose: string; safeguard: string; notes: string; created_by: string; created_at: number; used_at: number | null;
  };
  privacy_deregistrations: {
    account_id: string; account_name: string; status: string; requested_at: number; requested_by: string; destroy_after: number; cancelled_at: number | null;
    cancelled_by: string | null; destroying_since: number | null; destroyed_at: number | null; certificate_json: string | null; signature: string | null; key_id: string | null;
  };
  settings: { name: string; value: string };
};

export type RightsDb = Kysely<RightsTables>;
export type RequestRow = RightsTables['privacy_requests'];
