/**
 * Consent and data-subject requests over Custos's own REST (/v1/privacy). Each call is an IAM action
 * of the privacy officer's; the archive link is the one public route: its token is the credential.
 */
import { Type } from '@sinclair/typebox';
import type { FastifyRequest } from 'fastify';
import type { IamService, Principal, ResourceRef } from '../../iam/iam.js';
import type { RouteDef, RouteMeta } from '../../server/route.js';
import { instantOf, principalOf } from '../../server/route.js';
import type { ObsService } from '../../obs/obs.js';
import type { VaultService } from '../../vault/vault.js';
import { LEGAL_BASES, PrivacyError, REQUEST_TYPES, SAFEGUARDS, type LegalBasis, type Safeguard, type PrivacyRightsService, type RequestDetails, type RequestType, type RequestView } from '../rights.js';
import type { RequestRow } from '../rights-store.js';

const S = { additionalProperties: false } as const;
const ErrorView = Type.Object({ error: Type.Object({ code: Type.String(), message: Type.String(), request_id: Type.String() }) });
const NAME = '^[a-z][a-z0-9_]{0,62}$';
const SUBJECT = '^[A-Za-z0-9._:@-]{1,128}$';
const subjectParams = Type.Object({ subject_id: Type.String({ pattern: SUBJECT }) }, S);
const requestParams = Type.Object({ request_id: Type.String({ format: 'uuid' }) }, S);
const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

function requestOut(v: RequestView, history?: { seq: number; at: number; event: string; actor: string; note: string }[]) {
  return {
    ...v, received_at: iso(v.received_at), due_at: iso(v.due_at), effective_due_at: iso(v.effective_due_at), verified_at: iso(v.verified_at), completed_at: iso(v.completed_at),
    ...(history ? { history: history.map((h) => ({ ...h, at: iso(h.at) })) } : {}),
  };
}

const resolved = new WeakMap<FastifyRequest, RequestRow>();
function requestOf(req: FastifyRequest): RequestRow {
  const r = resolved.get(req);
  if (!r) throw new Error('privacy request route reached its handler without a resolved request');
  return r;
}

export function privacyRightsRoutes(rights: PrivacyRightsService, iam: IamService, vault: VaultService, obs: ObsService): RouteDef[] {
  const meta = (action: string | null, resourceType: string, extra: Partial<RouteMeta> = {}): RouteMeta => ({ dialect: 'custos', service: 'PRIVACY', action, resourceType, ...extra });
  const requestRes = async (req: FastifyRequest, p: Principal): Promise<ResourceRef | null> => {
    const r = await rights.getRequest(p.accountId, (req.params as { request_id: string }).request_id);
    if (!r) return null;
    resolved.set(req, r);
    return { service: 'privacy', type: 'request', id: r.id, name: r.type, accountId: r.account_id };
  };
  const tags = ['privacy'];
  const actorOf = (p: Principal) => p.userName;
  const trace = (req: FastifyRequest, r: { id: string; type: string; status: string; subject_id: string }) => {
    req.custos.traced.correlate = { subject: r.subject_id };
    req.custos.traced.detail = { request: r.id, type: r.type, status: r.status };
  };

  return [
    // ---------------------------------------------------------------- purposes
    {
      method: 'PUT', url: '/v1/privacy/purposes/:name', meta: meta('privacy:purposes:put', 'purpose'),
      schema: {
        summary: 'Declare a purpose of processing and its legal basis', tags, params: Type.Object({ name: Type.String({ pattern: NAME }) }, S),
        body: Type.Object({ legal_basis: Type.Union(LEGAL_BASES.map((b) => Type.Literal(b))), description: Type.Optional(Type.String({ maxLength: 255 })) }, S),
        response: { 200: Type.Object({ name: Type.String(), legal_basis: Type.String(), description: Type.String() }), '4xx': ErrorView },
      },
      handler: async (req) => {
        const b = req.body as { legal_basis: LegalBasis; description?: string };
        const p = await rights.putPurpose(principalOf(req).accountId, (req.params as { name: string }).name, b.legal_basis, b.description ?? '');
        req.custos.traced.detail = { purpose: p.name, legal_basis: p.legal_basis };
        return { name: p.name, legal_basis: p.legal_basis, description: p.description };
      },
    },
    {
      method: 'GET', url: '/v1/privacy/purposes', meta: meta('privacy:purposes:list', 'purpose'),
      schema: { summary: 'The account\'s purposes and legal bases', tags, response: { 200: Type.Object({ purposes: Type.Array(Type.Object({ name: Type.String(), legal_basis: Type.String(), description: Type.String() })) }), '4xx': ErrorView } },
      handler: async (req) => ({ purposes: (await rights.listPurposes(principalOf(req).accountId)).map((p) => ({ name: p.name, legal_basis: p.legal_basis, description: p.description })) }),
    },
    {
      method: 'DELETE', url: '/v1/privacy/purposes/:name', meta: meta('privacy:purposes:delete', 'purpose'),
      schema: { summary: 'Remove a purpose from the catalogue', tags, params: Type.Object({ name: Type.String({ pattern: NAME }) }, S), response: { 204: Type.Null(), '4xx': ErrorView } },
      handler: async (req, reply) => {
        await rights.deletePurpose(principalOf(req).accountId, (req.params as { name: string }).name);
        return reply.code(204).send();
      },
    },

    // ---------------------------------------------------------------- consent
    {
      method: 'POST', url: '/v1/privacy/subjects/:subject_id/consents', meta: meta('privacy:consents:record', 'consent'),
      schema: {
        summary: 'Record a consent given or withdrawn (appended to the history; withdrawal takes effect at once)', tags, params: subjectParams,
        body: Type.Object({
          purpose: Type.String({ pattern: NAME }), status: Type.Union([Type.Literal('granted'), Type.Literal('withdrawn')]),
          source: Type.String({ minLength: 1, maxLength: 255 }), notice_version: Type.String({ minLength: 1, maxLength: 64 }),
        }, S),
      },
      handler: async (req, reply) => {
        const subject = (req.params as { subject_id: string }).subject_id;
        const b = req.body as { purpose: string; status: 'granted' | 'withdrawn'; source: string; notice_version: string };
        req.custos.traced.correlate = { subject };
        const r = await rights.recordConsent(principalOf(req).accountId, subject, { purpose: b.purpose, status: b.status, source: b.source, noticeVersion: b.notice_version });
        req.custos.traced.detail = { purpose: b.purpose, consent: b.status };
        return reply.code(201).send({ purpose: r.consent.purpose, status: r.consent.status, recorded_at: iso(r.consent.recorded_at), ...(r.vault ? { vault: r.vault } : {}) });
      },
    },
    {
      method: 'GET', url: '/v1/privacy/subjects/:subject_id/consents', meta: meta('privacy:consents:get', 'consent'),
      schema: { summary: 'A subject\'s consent: the current state per purpose and the whole history', tags, params: subjectParams },
      handler: async (req) => {
        const subject = (req.params as { subject_id: string }).subject_id;
        req.custos.traced.correlate = { subject };
        const c = await rights.consents(principalOf(req).accountId, subject);
        const out = (x: (typeof c.history)[number]) => ({ purpose: x.purpose, status: x.status, source: x.source, notice_version: x.notice_version, recorded_at: iso(x.recorded_at) });
        return { current: c.current.map(out), history: c.history.map(out) };
      },
    },
    {
      method: 'DELETE', url: '/v1/privacy/subjects/:subject_id/limits/:kind', meta: meta('privacy:limits:lift', 'limit'),
      schema: { summary: 'Lift a restriction or objection (processing resumes)', tags, params: Type.Object({ subject_id: Type.String({ pattern: SUBJECT }), kind: Type.Union([Type.Literal('restriction'), Type.Literal('objection')]) }, S) },
      handler: async (req) => {
        const p = req.params as { subject_id: string; kind: 'restriction' | 'objection' };
        req.custos.traced.correlate = { subject: p.subject_id };
        const lifted = await rights.liftLimit(principalOf(req).accountId, p.subject_id, p.kind);
        if (!lifted) throw new PrivacyError(404, 'NotFound', `no active ${p.kind} for this subject`);
        return { lifted };
      },
    },

    // ---------------------------------------------------------------- cross-border transfers
    {
      method: 'POST', url: '/v1/privacy/transfers', meta: meta('privacy:transfers:create', 'transfer'),
      schema: {
        summary: 'Record a cross-border transfer (destination, purpose, safeguard) before copying a collection or a bucket\'s objects to another region', tags,
        body: Type.Object({
          source_kind: Type.Union([Type.Literal('collection'), Type.Literal('bucket')]), source_name: Type.String({ pattern: '^[a-z0-9][a-z0-9._-]{1,62}$' }), destination_project_id: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' }),
          purpose: Type.String({ minLength: 1, maxLength: 255 }), safeguard: Type.Union(SAFEGUARDS.map((x) => Type.Literal(x))), notes: Type.Optional(Type.String({ maxLength: 1024 })),
        }, S),
      },
      handler: async (req, reply) => {
        const p = principalOf(req);
        const b = req.body as { source_kind: 'collection' | 'bucket'; source_name: string; destination_project_id: string; purpose: string; safeguard: Safeguard; notes?: string };
        const src = b.source_kind === 'collection' ? (await vault.getCollection(p.accountId, b.source_name))?.row : await obs.findBucket(p.accountId, b.source_name);
        if (!src) throw new PrivacyError(404, 'NotFound', `${b.source_kind} not found`);
        const dest = await iam.getProject(p.accountId, b.destination_project_id);
        if (!dest) throw new PrivacyError(404, 'NotFound', 'destination project not found');
        const t = await rights.recordTransfer(p.accountId, actorOf(p), { kind: b.source_kind, name: src.name, sourceRegion: src.region, destinationProjectId: dest.id, destinationRegion: dest.region, purpose: b.purpose, safeguard: b.safeguard, notes: b.notes ?? '' });
        req.custos.traced.resourceId = t.id;
        req.custos.traced.detail = { [b.source_kind]: src.name, from_region: t.source_region, to_region: t.destination_region, safeguard: t.safeguard };
        return reply.code(201).send({ ...t, created_at: iso(t.created_at), used_at: iso(t.used_at) });
      },
    },
    {
      method: 'GET', url: '/v1/privacy/transfers', meta: meta('privacy:transfers:list', 'transfer'),
      schema: { summary: 'The account\'s cross-border transfer records', tags },
      handler: async (req) => ({ transfers: (await rights.listTransfers(principalOf(req).accountId)).map((t) => ({ ...t, created_at: iso(t.created_at), used_at: iso(t.used_at) })) }),
    },

    // ---------------------------------------------------------------- webhook
    {
      method: 'PUT', url: '/v1/privacy/webhook', meta: meta('privacy:webhook:put', 'webhook'),
      schema: {
        summary: 'Set the endpoint that receives request changes (signed with the returned secret, shown once)', tags,
        body: Type.Object({ url: Type.String({ format: 'uri', maxLength: 2048 }) }, S),
        response: { 200: Type.Object({ url: Type.String(), secret: Type.String() }), '4xx': ErrorView },
      },
      handler: async (req) => rights.setWebhook(principalOf(req).accountId, (req.body as { url: string }).url),
    },
    {
      method: 'GET', url: '/v1/privacy/webhook', meta: meta('privacy:webhook:get', 'webhook'),
      schema: { summary: 'The webhook endpoint and its recent deliveries', tags },
      handler: async (req) => {
        const a = principalOf(req).accountId;
        const hook = await rights.getWebhook(a);
        if (!hook) throw new PrivacyError(404, 'NotFound', 'no webhook is set');
        const rows = await rights.outbox(a);
        return { url: hook.url, deliveries: rows.map((r) => ({ id: r.id, event: r.event, created_at: iso(r.created_at), attempts: r.attempts, next_attempt_at: r.delivered_at || r.failed_at ? null : iso(r.next_attempt_at), delivered_at: iso(r.delivered_at), failed_at: iso(r.failed_at), last_error: r.last_error })) };
      },
    },
    {
      method: 'DELETE', url: '/v1/privacy/webhook', meta: meta('privacy:webhook:delete', 'webhook'),
      schema: { summary: 'Stop sending notifications', tags, response: { 204: Type.Null(), '4xx': ErrorView } },
      handler: async (req, reply) => {
        if (!(await rights.deleteWebhook(principalOf(req).accountId))) throw new PrivacyError(404, 'NotFound', 'no webhook is set');
        return reply.code(204).send();
      },
    },

    // ---------------------------------------------------------------- requests
    {
      method: 'POST', url: '/v1/privacy/requests', meta: meta('privacy:requests:create', 'request'),
      schema: {
        summary: 'Register a data-subject request (due 30 days after it was received)', tags,
        body: Type.Object({
          subject_id: Type.String({ pattern: SUBJECT }), type: Type.Union(REQUEST_TYPES.map((t) => Type.Literal(t))),
          received_at: Type.Optional(Type.String({ format: 'date-time' })),
          details: Type.Optional(Type.Object({
            purposes: Type.Optional(Type.Array(Type.String({ pattern: NAME }), { minItems: 1, maxItems: 50, uniqueItems: true })),
            rectify: Type.Optional(Type.Array(Type.Object({ collection: Type.String({ pattern: '^[a-z][a-z0-9_-]{1,62}$' }), fields: Type.Record(Type.String({ pattern: NAME }), Type.Union([Type.String({ maxLength: 65536 }), Type.Number(), Type.Boolean(), Type.Null()])) }, S), { minItems: 1, maxItems: 50 })),
            note: Type.Optional(Type.String({ maxLength: 1024 })),
          }, S)),
        }, S),
      },
      handler: async (req, reply) => {
        const p = principalOf(req);
        const b = req.body as { subject_id: string; type: RequestType; received_at?: string; details?: RequestDetails };
        const v = await rights.createRequest(p.accountId, actorOf(p), { subjectId: b.subject_id, type: b.type, details: b.details ?? {}, receivedAt: b.received_at ? instantOf(b.received_at, 'received_at') : undefined });
        req.custos.traced.resourceId = v.id;
        req.custos.traced.resourceName = v.type;
        trace(req, v);
        return reply.code(201).send(requestOut(v));
      },
    },
    {
      method: 'GET', url: '/v1/privacy/requests', meta: meta('privacy:requests:list', 'request'),
      schema: {
        summary: 'Data-subject requests, with their deadlines (overdue=true for the late ones)', tags,
        querystring: Type.Object({ status: Type.Optional(Type.Union(['received', 'verified', 'in_progress', 'completed', 'refused'].map((s) => Type.Literal(s)))), overdue: Type.Optional(Type.Union([Type.Literal('true'), Type.Literal('false')])), subject_id: Type.Optional(Type.String({ pattern: SUBJECT })) }, S),
      },
      handler: async (req) => {
        const q = req.query as { status?: string; overdue?: string; subject_id?: string };
        return { requests: (await rights.listRequests(principalOf(req).accountId, { status: q.status, overdue: q.overdue === undefined ? undefined : q.overdue === 'true', subjectId: q.subject_id })).map((v) => requestOut(v)) };
      },
    },
    {
      method: 'GET', url: '/v1/privacy/requests/:request_id', meta: meta('privacy:requests:get', 'request', { resource: requestRes }),
      schema: { summary: 'A request with its history', tags, params: requestParams },
      handler: async (req) => {
        const r = requestOf(req);
        return requestOut(rights.view(r), await rights.history(r.id));
      },
    },
    {
      method: 'POST', url: '/v1/privacy/requests/:request_id/verify', meta: meta('privacy:requests:verify', 'request', { resource: requestRes }),
      schema: {
        summary: 'Verify the data subject\'s identity through a verifier (built in: attestation)', tags, params: requestParams,
        body: Type.Object({ verifier: Type.String({ pattern: NAME }), evidence: Type.Record(Type.String({ pattern: NAME }), Type.String({ maxLength: 512 }), { maxProperties: 20 }) }, S),
      },
      handler: async (req) => {
        const b = req.body as { verifier: string; evidence: Record<string, string> };
        const v = await rights.verify(requestOf(req), actorOf(principalOf(req)), b.verifier, b.evidence);
        trace(req, v);
        return requestOut(v);
      },
    },
    {
      method: 'POST', url: '/v1/privacy/requests/:request_id/extend', meta: meta('privacy:requests:extend', 'request', { resource: requestRes }),
      schema: {
        summary: 'Extend the deadline once, by one or two months, with a reason, before the first deadline', tags, params: requestParams,
        body: Type.Object({ months: Type.Integer({ minimum: 1, maximum: 2 }), reason: Type.String({ minLength: 1, maxLength: 1024 }) }, S),
      },
      handler: async (req) => {
        const b = req.body as { months: number; reason: string };
        const v = await rights.extend(requestOf(req), actorOf(principalOf(req)), b.months, b.reason);
        trace(req, v);
        return requestOut(v);
      },
    },
    {
      method: 'POST', url: '/v1/privacy/requests/:request_id/refuse', meta: meta('privacy:requests:refuse', 'request', { resource: requestRes }),
      schema: { summary: 'Refuse a request, with the reason', tags, params: requestParams, body: Type.Object({ reason: Type.String({ minLength: 1, maxLength: 1024 }) }, S) },
      handler: async (req) => {
        const v = await rights.refuse(requestOf(req), actorOf(principalOf(req)), (req.body as { reason: string }).reason);
        trace(req, v);
        return requestOut(v);
      },
    },
    {
      method: 'POST', url: '/v1/privacy/requests/:request_id/execute', meta: meta('privacy:requests:execute', 'request', { resource: requestRes, traceType: 'data' }),
      schema: {
        summary: 'Carry out a verified request over the subject\'s data (archives for access/portability go under the project\'s privacy key)', tags, params: requestParams,
        body: Type.Optional(Type.Object({ project_id: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' })) }, S)),
      },
      handler: async (req) => {
        const p = principalOf(req);
        const projectId = (req.body as { project_id?: string } | undefined)?.project_id ?? p.projectId;
        const project = projectId ? await iam.getProject(p.accountId, projectId) : (await iam.listProjects(p.accountId))[0];
        if (!project) throw new PrivacyError(400, 'ProjectRequired', 'name the project whose privacy key seals the archive (project_id)');
        const v = await rights.execute(requestOf(req), actorOf(p), { accountId: p.accountId, projectId: project.id, region: project.region });
        trace(req, v);
        return requestOut(v);
      },
    },
    {
      method: 'GET', url: '/v1/privacy/archives/:request_id', meta: meta(null, 'archive'),
      schema: {
        summary: 'Download an access/portability archive (ZIP of JSON and CSV) through its expiring link; the token is the credential', tags, security: [],
        params: requestParams, querystring: Type.Object({ token: Type.String({ pattern: '^[A-Za-z0-9_-]{43}$' }) }, S),
      },
      handler: async (req, reply) => {
        const id = (req.params as { request_id: string }).request_id;
        const zip = await rights.openArchive(id, (req.query as { token: string }).token);
        req.custos.traced.detail = { request: id, archive: 'downloaded' };
        return reply.type('application/zip').header('content-disposition', `attachment; filename="subject-archive-${id}.zip"`).header('cache-control', 'no-store').send(zip);
      },
    },
  ];
}
