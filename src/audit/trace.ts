/**
 * What the HTTP edge hands the audit service for every request it answers. Built by src/server,
 * never by a service: no request body, header, secret or personal-data value is ever put here.
 */
export interface RequestTrace {
  /** The action, e.g. `iam:users:createUser`; for unauthenticated or unmatched requests the route's name. */
  traceName: string;
  traceType: 'management' | 'data';
  /** normal: success; warning: client error or denied; incident: server error. */
  traceRating: 'normal' | 'warning' | 'incident';
  serviceType: string;
  resourceType: string | null;
  resourceId: string | null;
  resourceName: string | null;
  /** The account whose trail this goes to (the resource's owner, else the caller's); null when unknown. */
  accountId: string | null;
  projectId: string | null;
  region: string | null;
  user: {
    accountId: string | null;
    accountName: string | null;
    userId: string | null;
    userName: string | null;
    accessKeyId: string | null;
    /** Agency chain: the account the caller came from when it acts through an agency. */
    agency: { id: string; name: string; sourceAccountId: string; sourceAccountName: string } | null;
    authMethod: 'token' | 'aksk' | 'none';
  };
  sourceIp: string;
  userAgent: string | null;
  requestId: string;
  httpMethod: string;
  /** The route pattern (`/v3/users/:user_id`), never the raw URL with its query. */
  apiPath: string;
  code: number;
  /** Stable error code when the request failed, e.g. `IAM.0003`. */
  errorCode: string | null;
  time: number;
  /**
   * Values that must be correlatable across traces but never stored (an attempted user name):
   * the audit service keeps only their HMAC.
   */
  correlate?: Record<string, string>;
  /**
   * What a data operation touched, by name (a vault record's id, the property names, the stated
   * purpose): never a value. Stored in the clear and covered by the chain hash.
   */
  detail?: Record<string, string>;
}

export interface AuditRecorder {
  /** Must persist the trace before it resolves; a rejection makes the edge refuse a mutating request. */
  record(trace: RequestTrace): Promise<void>;
  /** False while the trail cannot be written: the edge then refuses mutating requests before they run. */
  admitMutation(): boolean;
  /** False after a failed trace write until one succeeds (readiness reports it). */
  readonly healthy: boolean;
  /** Counters for /metrics. */
  readonly stats: { traces: number; batches: number; failures: number };
}
