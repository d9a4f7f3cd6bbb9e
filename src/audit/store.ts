/** The tables the audit service alone owns (migration 0002_audit). */
export type AuditTables = {
  audit_heads: { trail: string; seq: number; hash: string; updated_at: number };
  audit_traces: {
    trail: string;
    seq: number;
    trace_id: string;
    time: number;
    record_time: number;
    trace_name: string;
    trace_type: string;
    trace_rating: string;
    service_type: string;
    resource_type: string | null;
    resource_id: string | null;
    resource_name: string | null;
    project_id: string | null;
    region: string | null;
    user_name: string | null;
    user_json: string;
    source_ip: string;
    user_agent: string | null;
    request_id: string;
    http_method: string;
    api_path: string;
    code: number;
    error_code: string | null;
    correlation_json: string | null;
    prev_hash: string;
    hash: string;
  };
  audit_digests: {
    trail: string;
    digest_seq: number;
    created_at: number;
    start_seq: number;
    end_seq: number;
    trace_count: number;
    start_prev_hash: string;
    end_hash: string;
    end_record_time: number | null;
    prev_signature: string | null;
    key_id: string;
    signature: string;
  };
  audit_keys: { key_id: string; algorithm: string; public_key: string; private_key: string; status: string; created_at: number };
  audit_settings: { trail: string; retention_days: number; cleared_through_seq: number; updated_at: number };
  settings: { name: string; value: string };
};
