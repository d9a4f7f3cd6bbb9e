/**
 * The audit trail's API: Huawei CTS's trace query (`GET /v3/{project_id}/traces`) and Custos's own
 * routes for what CTS has no public API for (digest public keys, digests, retention, value hashes).
 */
import { Type } from '@sinclair/typebox';
import type { FastifyRequest } from 'fastify';
import type { IamService, Principal, ResourceRef } from '../../iam/iam.js';
import { principalOf, type RouteDef, type RouteMeta } from '../../server/route.js';
import { AuditError, MAX_RETENTION_DAYS, type AuditService } from '../audit.js';
import { MIN_RETENTION_DAYS, type StoredTrace } from '../chain.js';

const S = { additionalProperties: false } as const;
const Id = Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' });
const Filter = Type.String({ minLength: 1, maxLength: 255 });
const HOUR = 3_600_000;
/** Query strings arrive as text and the edge does not coerce types: numbers are digit strings. */
const Digits = Type.String({ pattern: '^[0-9]{1,15}$' });
function intParam(v: string | undefined, name: string, min: number, max: number): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (n < min || n > max) throw new AuditError(400, 'CTS.0003', `${name} must be between ${min} and ${max}`);
  return n;
}

type TracesQuery = {
  trace_type: 'system' | 'management' | 'data';
  limit?: string;
  from?: string;
  to?: string;
  next?: string;
  service_type?: string;
  resource_type?: string;
  resource_id?: string;
  resource_name?: string;
  trace_name?: string;
  trace_rating?: 'normal' | 'warning' | 'incident';
  user?: string;
  trace_id?: string;
};

/** A trace as CTS shows it, with Custos's chain fields so a reader can cross-check an export. */
export function traceView(t: StoredTrace) {
  const u = t.user;
  return {
    trace_id: t.trace_id,
    trace_name: t.trace_name,
    trace_rating: t.trace_rating,
    trace_type: 'ApiCall',
    event_type: t.trace_type === 'data' ? 'data' : 'system',
    service_type: t.service_type,
    resource_type: t.resource_type,
    resource_id: t.resource_id,
    resource_name: t.resource_name,
    code: String(t.code),
    message: t.error_code,
    time: t.time,
    record_time: t.record_time,
    user: {
      id: u.user_id,
      name: u.user_name,
      user_name: u.user_name,
      domain: { id: u.account_id, name: u.account_name },
      account_id: u.account_id,
      access_key_id: u.access_key_id,
      type: u.agency ? 'AssumedAgency' : u.user_id ? 'IAMUser' : 'Anonymous',
      auth_method: u.auth_method,
      agency: u.agency,
    },
    source_ip: t.source_ip,
    user_agent: t.user_agent,
    request_id: t.request_id,
    http_method: t.http_method,
    api_path: t.api_path,
    request: null,
    response: null,
    project_id: t.project_id,
    region_id: t.region,
    correlation: t.correlation,
    detail: t.detail ?? null,
    seq: t.seq,
    hash: t.hash,
  };
}

export function ctsRoutes(audit: AuditService, iam: IamService, now: () => number): RouteDef[] {
  const meta = (action: string | null, resourceType: string, extra: Partial<RouteMeta> = {}): RouteMeta => ({ dialect: 'huawei', service: 'CTS', action, resourceType, ...extra });
  const custosMeta = (action: string | null, resourceType: string, extra: Partial<RouteMeta> = {}): RouteMeta => ({ dialect: 'custos', service: 'CTS', action, resourceType, ...extra });
  const projectRes = async (req: FastifyRequest, p: Principal): Promise<ResourceRef | null> => {
    const proj = await iam.getProject(p.accountId, (req.params as { project_id: string }).project_id);
    return proj ? { service: 'cts', type: 'project', id: proj.id, name: proj.name, accountId: proj.account_id, projectId: proj.id, region: proj.region } : null;
  };
  const trailRes = async (_req: FastifyRequest, p: Principal): Promise<ResourceRef> => ({ service: 'cts', type: 'trail', id: p.accountId, name: p.accountName, accountId: p.accountId });

  return [
    {
      method: 'GET', url: '/v3/:project_id/traces', meta: meta('cts:trace:list', 'trace', { resource: projectRes }),
      schema: {
        params: Type.Object({ project_id: Id }, S),
        querystring: Type.Object({
          trace_type: Type.Union([Type.Literal('system'), Type.Literal('management'), Type.Literal('data')]),
          limit: Type.Optional(Digits),
          from: Type.Optional(Digits),
          to: Type.Optional(Digits),
          next: Type.Optional(Type.String({ pattern: '^[0-9a-f-]{36}$' })),
          service_type: Type.Optional(Filter),
          resource_type: Type.Optional(Filter),
          resource_id: Type.Optional(Filter),
          resource_name: Type.Optional(Filter),
          trace_name: Type.Optional(Filter),
          trace_rating: Type.Optional(Type.Union([Type.Literal('normal'), Type.Literal('warning'), Type.Literal('incident')])),
          user: Type.Optional(Filter),
          trace_id: Type.Optional(Type.String({ pattern: '^[0-9a-f-]{36}$' })),
          tracker_name: Type.Optional(Type.String({ maxLength: 64 })),
        }, S),
      },
      handler: async (req) => {
        const p = principalOf(req);
        const q = req.query as TracesQuery;
        const limit = intParam(q.limit, 'limit', 1, 200) ?? 10;
        const to = intParam(q.to, 'to', 0, Number.MAX_SAFE_INTEGER) ?? now();
        const from = intParam(q.from, 'from', 0, Number.MAX_SAFE_INTEGER) ?? to - HOUR;
        if (from > to) throw new AuditError(400, 'CTS.0003', 'from must not be later than to');
        const { traces, marker } = await audit.search(p.accountId, {
          traceType: q.trace_type === 'data' ? 'data' : 'management', from, to, limit, projectId: req.custos.resource?.id ?? p.projectId ?? undefined,
          ...(q.next ? { next: q.next } : {}), ...(q.service_type ? { serviceType: q.service_type } : {}), ...(q.resource_type ? { resourceType: q.resource_type } : {}),
          ...(q.resource_id ? { resourceId: q.resource_id } : {}), ...(q.resource_name ? { resourceName: q.resource_name } : {}),
          ...(q.trace_name ? { traceName: q.trace_name } : {}), ...(q.trace_rating ? { traceRating: q.trace_rating } : {}),
          ...(q.user ? { user: q.user } : {}), ...(q.trace_id ? { traceId: q.trace_id } : {}),
        });
        return { traces: traces.map(traceView), meta_data: { count: traces.length, marker } };
      },
    },
    {
      method: 'GET', url: '/v1/audit/public-keys', meta: custosMeta(null, 'key'),
      schema: {
        summary: 'The public keys that verify audit digests (no authentication needed)',
        tags: ['audit'],
        response: { 200: Type.Object({ public_keys: Type.Array(Type.Object({ key_id: Type.String(), algorithm: Type.String(), public_key: Type.String(), status: Type.String(), created_at: Type.Integer(), retired_at: Type.Union([Type.Integer(), Type.Null()]) })) }) },
      },
      handler: async () => ({ public_keys: await audit.publicKeys() }),
    },
    {
      method: 'GET', url: '/v1/audit/digests', meta: custosMeta('cts:digest:list', 'trail', { resource: trailRes }),
      schema: {
        summary: "List the account's signed audit digests",
        tags: ['audit'],
        querystring: Type.Object({ from_seq: Type.Optional(Digits), limit: Type.Optional(Digits) }, S),
      },
      handler: async (req) => {
        const q = req.query as { from_seq?: string; limit?: string };
        return { digests: await audit.digests(principalOf(req).accountId, intParam(q.from_seq, 'from_seq', 1, Number.MAX_SAFE_INTEGER) ?? 1, intParam(q.limit, 'limit', 1, 1000) ?? 100) };
      },
    },
    {
      method: 'GET', url: '/v1/audit/retention', meta: custosMeta('cts:retention:get', 'trail', { resource: trailRes }),
      schema: { summary: "The account's trace retention in days", tags: ['audit'], response: { 200: Type.Object({ retention_days: Type.Integer() }) } },
      handler: async (req) => ({ retention_days: await audit.retentionDays(principalOf(req).accountId) }),
    },
    {
      method: 'PUT', url: '/v1/audit/retention', meta: custosMeta('cts:retention:update', 'trail', { resource: trailRes }),
      schema: {
        summary: `Set the account's trace retention (${MIN_RETENTION_DAYS} to ${MAX_RETENTION_DAYS} days)`,
        tags: ['audit'],
        body: Type.Object({ retention_days: Type.Integer({ minimum: MIN_RETENTION_DAYS, maximum: MAX_RETENTION_DAYS }) }, S),
        response: { 200: Type.Object({ retention_days: Type.Integer() }) },
      },
      handler: async (req) => {
        const days = (req.body as { retention_days: number }).retention_days;
        await audit.setRetentionDays(principalOf(req).accountId, days);
        return { retention_days: days };
      },
    },
    {
      method: 'POST', url: '/v1/audit/hash', meta: custosMeta('cts:trace:hash', 'trail', { resource: trailRes }),
      schema: {
        summary: 'The HMAC under which traces record a correlatable value (e.g. an attempted user name)',
        tags: ['audit'],
        body: Type.Object({ input: Type.String({ minLength: 1, maxLength: 1024 }) }, S),
        response: { 200: Type.Object({ hash: Type.String() }) },
      },
      handler: async (req) => ({ hash: audit.hmac((req.body as { input: string }).input) }),
    },
  ];
}
