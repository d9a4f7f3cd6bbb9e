/**
 * A trace as the trail stores it: the chain's fields computed from what the edge handed over, and the
 * table row they become (pure functions, but for the random part of each trace id).
 */
import { createHmac } from 'node:crypto';
import { randomBytes } from '../crypto/random.js';
import { traceHash, type StoredTrace, type TraceUser } from './chain.js';
import type { AuditTables } from './store.js';
import type { RequestTrace } from './trace.js';

export type TraceRow = AuditTables['audit_traces'];

/** HMAC-SHA256 under the audit key: lets an auditor find a value's traces without the trail holding the value. */
export function auditHmac(key: Buffer, value: string): string {
  return `hmac-sha256:${createHmac('sha256', key).update(value).digest('hex')}`;
}

/**
 * The rows that append `list` (all of one trail, in order) after the head `(seq, hash)`, and the new
 * head. `hmac` keys the correlation values, which are never stored as given.
 */
export function chainRows(
  trail: string, head: { seq: number; hash: string }, list: RequestTrace[], recordTime: number, hmac: (value: string) => string,
): { rows: TraceRow[]; seq: number; hash: string } {
  let seq = head.seq;
  let hash = head.hash;
  const rows: TraceRow[] = [];
  for (const t of list) {
    seq += 1;
    const stored = toStored(trail, seq, t, recordTime, hmac);
    const h = traceHash(hash, stored);
    // toRow(stored, ...) rather than toRow({ ...stored, prev_hash, hash }): the spread copy and the
    // reads from it cost more than everything else here (4.5 of 8 µs a trace).
    rows.push(toRow(stored, hash, h));
    hash = h;
  }
  return { rows, seq, hash };
}

/** The trail each trace goes to (its account's, '' when none), keeping each trail's order. */
export function byTrail(traces: RequestTrace[]): Map<string, RequestTrace[]> {
  const out = new Map<string, RequestTrace[]>();
  for (const t of traces) {
    const trail = t.accountId ?? '';
    const list = out.get(trail);
    if (list) list.push(t);
    else out.set(trail, [t]);
  }
  return out;
}

export function toStored(trail: string, seq: number, t: RequestTrace, recordTime: number, hmac: (value: string) => string): Omit<StoredTrace, 'prev_hash' | 'hash'> {
  const u = t.user;
  const user: TraceUser = {
    account_id: u.accountId, account_name: u.accountName, user_id: u.userId, user_name: u.userName, access_key_id: u.accessKeyId,
    agency: u.agency ? { id: u.agency.id, name: u.agency.name, source_account_id: u.agency.sourceAccountId, source_account_name: u.agency.sourceAccountName } : null,
    auth_method: u.authMethod,
  };
  let correlation: Record<string, string> | null = null;
  if (t.correlate) {
    correlation = {};
    for (const [k, v] of Object.entries(t.correlate)) correlation[k] = hmac(v);
  }
  return {
    trail, seq, trace_id: timeOrderedId(recordTime), time: t.time, record_time: recordTime, trace_name: t.traceName.slice(0, 128), trace_type: t.traceType,
    trace_rating: t.traceRating, service_type: t.serviceType, resource_type: t.resourceType, resource_id: t.resourceId?.slice(0, 255) ?? null,
    resource_name: t.resourceName?.slice(0, 255) ?? null, project_id: t.projectId, region: t.region, user, source_ip: t.sourceIp.slice(0, 64),
    user_agent: t.userAgent, request_id: t.requestId.slice(0, 64), http_method: t.httpMethod, api_path: t.apiPath.slice(0, 255), code: t.code,
    error_code: t.errorCode, correlation,
    ...(t.detail ? { detail: Object.fromEntries(Object.entries(t.detail).map(([k, v]) => [k.slice(0, 64), v.slice(0, 1024)])) } : {}),
  };
}

/**
 * A UUID version 7 (RFC 9562): 48 bits of milliseconds, then randomness. Time-ordered ids land on the
 * same few pages of the trace-id index, where random ones touched a page per trace and tripled the
 * bytes each commit wrote.
 */
export function timeOrderedId(ms: number): string {
  const b = randomBytes(16);
  b.writeUIntBE(Math.max(0, Math.floor(ms)) % 2 ** 48, 0, 6);
  b[6] = (b[6]! & 0x0f) | 0x70;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export const TRACE_COLUMNS = [
  'trail', 'seq', 'trace_id', 'time', 'record_time', 'trace_name', 'trace_type', 'trace_rating', 'service_type', 'resource_type', 'resource_id',
  'resource_name', 'project_id', 'region', 'user_name', 'user_json', 'source_ip', 'user_agent', 'request_id', 'http_method', 'api_path', 'code',
  'error_code', 'correlation_json', 'detail_json', 'prev_hash', 'hash',
] as const satisfies readonly (keyof TraceRow)[];

export function toRow(t: Omit<StoredTrace, 'prev_hash' | 'hash'>, prevHash: string, hash: string): TraceRow {
  return {
    trail: t.trail, seq: t.seq, trace_id: t.trace_id, time: t.time, record_time: t.record_time, trace_name: t.trace_name, trace_type: t.trace_type,
    trace_rating: t.trace_rating, service_type: t.service_type, resource_type: t.resource_type, resource_id: t.resource_id, resource_name: t.resource_name,
    project_id: t.project_id, region: t.region, user_name: t.user.user_name, user_json: JSON.stringify(t.user), source_ip: t.source_ip,
    user_agent: t.user_agent, request_id: t.request_id, http_method: t.http_method, api_path: t.api_path, code: t.code, error_code: t.error_code,
    correlation_json: t.correlation ? JSON.stringify(t.correlation) : null, detail_json: t.detail ? JSON.stringify(t.detail) : null, prev_hash: prevHash, hash,
  };
}

export function fromRow(r: TraceRow): StoredTrace {
  return {
    trail: r.trail, seq: Number(r.seq), trace_id: r.trace_id, time: Number(r.time), record_time: Number(r.record_time), trace_name: r.trace_name,
    trace_type: r.trace_type as StoredTrace['trace_type'], trace_rating: r.trace_rating as StoredTrace['trace_rating'], service_type: r.service_type,
    resource_type: r.resource_type, resource_id: r.resource_id, resource_name: r.resource_name, project_id: r.project_id, region: r.region,
    user: JSON.parse(r.user_json) as TraceUser, source_ip: r.source_ip, user_agent: r.user_agent, request_id: r.request_id, http_method: r.http_method,
    api_path: r.api_path, code: Number(r.code), error_code: r.error_code, correlation: r.correlation_json ? (JSON.parse(r.correlation_json) as Record<string, string>) : null,
    ...(r.detail_json ? { detail: JSON.parse(r.detail_json) as Record<string, string> } : {}),
    prev_hash: r.prev_hash, hash: r.hash,
  };
}

