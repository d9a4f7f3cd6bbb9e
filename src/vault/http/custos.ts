/**
 * The vault's REST API (Custos's own dialect, under /v1/vault). Collection management is governed by
 * IAM alone; every route that reaches records also needs the collection's whitelist to name the
 * caller — a caller it does not name gets 404, whatever IAM allows.
 */
import { Type } from '@sinclair/typebox';
import { stringify } from 'csv-stringify/sync';
import type { FastifyRequest } from 'fastify';
import type { IamService, Principal, ResourceRef } from '../../iam/iam.js';
import type { RouteDef, RouteMeta } from '../../server/route.js';
import { instantOf, principalOf } from '../../server/route.js';
import type { KeyUseCheck } from '../../kms/http/common.js';
import { CollectionSchemaInput, TRANSFORMS, type Transform } from '../schema.js';
import { PERMISSIONS, VaultError, type AccessEntry, type Caller, type Collection, type EffectiveAccess, type InventoryRow, type RecordView, type VaultService } from '../vault.js';

const S = { additionalProperties: false } as const;
const ErrorView = Type.Object({ error: Type.Object({ code: Type.String(), message: Type.String(), request_id: Type.String() }) });
const NAME = '^[a-z][a-z0-9_-]{1,62}$';
const PROP = '[a-z][a-z0-9_]{0,62}';
const SUBJECT = '^[A-Za-z0-9._:@-]{1,128}$';
const AccessEntrySchema = Type.Object({
  type: Type.Union([Type.Literal('user'), Type.Literal('group'), Type.Literal('agency')]),
  id: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' }),
  permissions: Type.Array(Type.Union(PERMISSIONS.map((p) => Type.Literal(p))), { minItems: 1, uniqueItems: true }),
  unmask: Type.Optional(Type.Array(Type.String({ pattern: `^(\\*|${PROP})$` }), { maxItems: 100, uniqueItems: true })),
}, S);
const FieldValue = Type.Union([Type.String({ maxLength: 65536 }), Type.Number(), Type.Boolean(), Type.Null()]);
const Fields = Type.Record(Type.String({ pattern: `^${PROP}$` }), FieldValue, { maxProperties: 100 });
const ReadQuery = {
  reason: Type.String({ pattern: `^${PROP}$`, description: 'The purpose of this read; it must be one the properties are collected for.' }),
  props: Type.Optional(Type.String({ pattern: `^${PROP}(,${PROP})*$`, description: 'Comma-separated properties to return (default: all collected for the reason).' })),
  transform: Type.Optional(Type.String({ pattern: `^${PROP}:(${TRANSFORMS.join('|')})(,${PROP}:(${TRANSFORMS.join('|')}))*$`, description: 'Per-property transformations, e.g. email:hash,ip:generalize; plain needs the unmask permission.' })),
  unmask: Type.Optional(Type.String({ pattern: `^(\\*|${PROP}(,${PROP})*)$`, description: 'Properties to return in the clear (same as transform=<p>:plain).' })),
};
const RecordViewSchema = Type.Object({
  id: Type.String(), subject_id: Type.String(), region: Type.String(), created_at: Type.String(), updated_at: Type.String(),
  fields: Type.Record(Type.String(), FieldValue), transforms: Type.Record(Type.String(), Type.String()),
});
const PropertyView = Type.Object({
  name: Type.String(), description: Type.String(), data_type: Type.String(), pii_type: Type.String(), mandatory: Type.Boolean(), modifiable: Type.Boolean(),
  purposes: Type.Array(Type.String()), collection_method: Type.String(),
  deletion: Type.Object({ after: Type.Optional(Type.String()), on_event: Type.Optional(Type.String()), basis: Type.Optional(Type.String()) }),
  searchable: Type.Boolean(), default_transform: Type.String(), stable_tokens: Type.Boolean(), max_length: Type.Integer(),
});
const CollectionView = Type.Object({
  id: Type.String(), name: Type.String(), description: Type.String(), project_id: Type.String(), region: Type.String(), kms_key_id: Type.String(),
  schema_version: Type.Integer(), min_age: Type.Optional(Type.Integer()), properties: Type.Array(PropertyView), created_at: Type.String(), updated_at: Type.String(),
});

const iso = (ms: number) => new Date(ms).toISOString();
function collectionView(c: Collection) {
  return {
    id: c.row.id, name: c.row.name, description: c.schema.description, project_id: c.row.project_id, region: c.row.region, kms_key_id: c.row.kms_key_id,
    schema_version: c.row.schema_version, ...(c.schema.min_age !== undefined ? { min_age: c.schema.min_age } : {}), properties: c.schema.properties, created_at: iso(c.row.created_at), updated_at: iso(c.row.updated_at),
  };
}
function recordView(r: RecordView) {
  return { ...r, created_at: iso(r.created_at), updated_at: iso(r.updated_at) };
}
const list = (s: string | undefined) => (s ? s.split(',') : undefined);

/** What the edge resolved for a request: the collection and, on data routes, the caller's whitelist entry. */
const resolved = new WeakMap<FastifyRequest, { collection: Collection; access: EffectiveAccess | null }>();
function ctx(req: FastifyRequest): { collection: Collection; access: EffectiveAccess } {
  const r = resolved.get(req);
  if (!r?.access) throw new Error('vault route reached its handler without a resolved collection');
  return { collection: r.collection, access: r.access };
}
function mgmt(req: FastifyRequest): Collection {
  const r = resolved.get(req);
  if (!r) throw new Error('vault route reached its handler without a resolved collection');
  return r.collection;
}

function readOptions(q: { reason: string; props?: string; transform?: string; unmask?: string }) {
  const transforms: Record<string, Transform> = {};
  for (const pair of list(q.transform) ?? []) {
    const [p, t] = pair.split(':') as [string, Transform];
    transforms[p] = t;
  }
  for (const p of list(q.unmask) ?? []) {
    if (p === '*') continue;
    transforms[p] = 'plain';
  }
  return { reason: q.reason, props: list(q.props), transforms, unmaskAll: q.unmask === '*' };
}

/** Decides whether a copy may leave its region (the privacy service's transfer records). */
export interface TransferGate {
  requireTransfer(accountId: string, transferId: string | undefined, what: { kind: 'collection' | 'bucket'; name: string; sourceRegion: string; destinationRegion: string }): Promise<void>;
}

export function vaultRoutes(vault: VaultService, iam: IamService, transfers?: TransferGate, opts: { mayUseKey?: KeyUseCheck } = {}): RouteDef[] {
  const callerOf = async (p: Principal): Promise<Caller> => ({
    accountId: p.accountId, userId: p.userId, agencyId: p.agency?.id ?? null,
    groupIds: p.agency ? [] : (await iam.listUserGroups(p.userId)).map((g) => g.id),
  });
  /** Management routes: the collection in the caller's account. */
  const collectionRes = async (req: FastifyRequest, p: Principal): Promise<ResourceRef | null> => {
    const c = await vault.getCollection(p.accountId, (req.params as { collection: string }).collection);
    if (!c) return null;
    resolved.set(req, { collection: c, access: null });
    return { service: 'vault', type: 'collection', id: c.row.id, name: c.row.name, accountId: c.row.account_id, projectId: c.row.project_id, region: c.row.region };
  };
  /** Data routes: as above, and a caller the whitelist does not name cannot tell the collection exists. */
  const dataRes = async (req: FastifyRequest, p: Principal): Promise<ResourceRef | null> => {
    const c = await vault.getCollection(p.accountId, (req.params as { collection: string }).collection);
    if (!c) return null;
    const access = await vault.accessOf(c, await callerOf(p));
    if (!access) return null;
    resolved.set(req, { collection: c, access });
    return { service: 'vault', type: 'collection', id: c.row.id, name: c.row.name, accountId: c.row.account_id, projectId: c.row.project_id, region: c.row.region };
  };
  const meta = (action: string, resourceType: string, extra: Partial<RouteMeta> = {}): RouteMeta => ({ dialect: 'custos', service: 'VAULT', action, resourceType, ...extra });
  const data = (action: string) => meta(action, 'record', { resource: dataRes, traceType: 'data' });
  const tags = ['vault'];
  const collectionParams = Type.Object({ collection: Type.String({ pattern: NAME }) }, S);
  const recordParams = Type.Object({ collection: Type.String({ pattern: NAME }), record_id: Type.String({ format: 'uuid' }) }, S);
  const traceRead = (req: FastifyRequest, views: RecordView[], reason: string, extra: Record<string, string> = {}) => {
    const c = ctx(req).collection;
    const props = [...new Set(views.flatMap((v) => Object.keys(v.fields)))];
    req.custos.traced.detail = {
      collection: c.row.name, records: views.map((v) => v.id).join(',').slice(0, 900), properties: props.join(','), purpose: reason,
      transforms: [...new Set(views.flatMap((v) => Object.entries(v.transforms).map(([k, t]) => `${k}:${t}`)))].join(','), ...extra,
    };
  };

  return [
    // ---------------------------------------------------------------- collections
    {
      method: 'POST', url: '/v1/vault/collections', meta: meta('vault:collections:create', 'collection'),
      schema: {
        summary: 'Create a collection of personal data with its schema (and, optionally, its whitelist)', tags,
        body: Type.Object({
          name: Type.String({ pattern: NAME }),
          project_id: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$', description: 'The project (region) the data is kept in; defaults to the token\'s project.' })),
          kms_key_id: Type.Optional(Type.String({ minLength: 1, maxLength: 255, description: 'The KMS key (id or alias) of the collection; default: the project\'s vault/default key.' })),
          access: Type.Optional(Type.Array(AccessEntrySchema, { maxItems: 100 })),
          ...CollectionSchemaInput.properties,
        }, S),
        response: { 201: CollectionView, '4xx': ErrorView },
      },
      handler: async (req, reply) => {
        const p = principalOf(req);
        const b = req.body as { name: string; project_id?: string; kms_key_id?: string; access?: AccessEntry[] } & typeof CollectionSchemaInput.static;
        const projectId = b.project_id ?? p.projectId;
        if (!projectId) throw new VaultError(400, 'ProjectRequired', 'name the project (region) the collection keeps its data in: project_id, or a project-scoped token');
        const project = await iam.getProject(p.accountId, projectId);
        if (!project) throw new VaultError(404, 'NotFound', 'project not found');
        const access = (b.access ?? []).map((a) => ({ ...a, unmask: a.unmask ?? [] }));
        await checkPrincipals(iam, p.accountId, access);
        const scope = { accountId: p.accountId, projectId: project.id, region: project.region };
        // A key named for the collection is used on the caller's behalf for every record: the caller
        // must be allowed to make data keys under it (kms:cmk:generate, or a grant).
        if (b.kms_key_id !== undefined && opts.mayUseKey && !(await opts.mayUseKey(p, await vault.namedKey(scope, b.kms_key_id), req.ip))) {
          throw new VaultError(403, 'KeyAccessDenied', 'not authorized to use the KMS key named for the collection (kms:cmk:generate)');
        }
        const c = await vault.createCollection(scope, p.userId, {
          name: b.name, kmsKey: b.kms_key_id, access, properties: b.properties, ...(b.description !== undefined ? { description: b.description } : {}), ...(b.min_age !== undefined ? { min_age: b.min_age } : {}),
        });
        req.custos.traced = { resourceId: c.row.id, resourceName: c.row.name };
        return reply.code(201).send(collectionView(c));
      },
    },
    {
      method: 'GET', url: '/v1/vault/collections', meta: meta('vault:collections:list', 'collection'),
      schema: { summary: 'List the account\'s collections', tags, response: { 200: Type.Object({ collections: Type.Array(CollectionView) }), '4xx': ErrorView } },
      handler: async (req) => ({ collections: (await vault.listCollections(principalOf(req).accountId)).map(collectionView) }),
    },
    {
      method: 'GET', url: '/v1/vault/collections/:collection', meta: meta('vault:collections:get', 'collection', { resource: collectionRes }),
      schema: { summary: 'A collection and its current schema', tags, params: collectionParams, response: { 200: CollectionView, '4xx': ErrorView } },
      handler: async (req) => collectionView(mgmt(req)),
    },
    {
      method: 'PUT', url: '/v1/vault/collections/:collection', meta: meta('vault:collections:update', 'collection', { resource: collectionRes }),
      schema: {
        summary: 'A new schema version; refused (409) when it does not fit the stored records', tags, params: collectionParams,
        querystring: Type.Object({ drop_removed_values: Type.Optional(Type.Union([Type.Literal('true'), Type.Literal('false')])) }, S),
        body: CollectionSchemaInput, response: { 200: CollectionView, '4xx': ErrorView },
      },
      handler: async (req) => {
        const q = req.query as { drop_removed_values?: string };
        const c = await vault.updateSchema(mgmt(req), principalOf(req).userId, req.body as typeof CollectionSchemaInput.static, { dropRemovedValues: q.drop_removed_values === 'true' });
        req.custos.traced.detail = { collection: c.row.name, schema_version: String(c.row.schema_version), properties: c.schema.properties.map((p) => p.name).join(',') };
        return collectionView(c);
      },
    },
    {
      method: 'DELETE', url: '/v1/vault/collections/:collection', meta: meta('vault:collections:delete', 'collection', { resource: collectionRes }),
      schema: {
        summary: 'Delete a collection (with force=true, every record in it too)', tags, params: collectionParams,
        querystring: Type.Object({ force: Type.Optional(Type.Union([Type.Literal('true'), Type.Literal('false')])) }, S),
        response: { 204: Type.Null(), '4xx': ErrorView },
      },
      handler: async (req, reply) => {
        const r = await vault.deleteCollection(mgmt(req), { force: (req.query as { force?: string }).force === 'true' });
        req.custos.traced.detail = { collection: mgmt(req).row.name, records_deleted: String(r.records) };
        return reply.code(204).send();
      },
    },
    {
      method: 'POST', url: '/v1/vault/collections/:collection/copy', meta: meta('vault:collections:copy', 'collection', { resource: collectionRes, traceType: 'data' }),
      schema: {
        summary: 'Copy a collection (schema, whitelist, records) into another project; across regions it needs a transfer record', tags, params: collectionParams,
        body: Type.Object({ destination_project_id: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' }), name: Type.String({ pattern: NAME }), transfer_id: Type.Optional(Type.String({ format: 'uuid' })) }, S),
        response: { 201: Type.Object({ collection: CollectionView, records: Type.Integer(), restricted_records_left_out: Type.Integer(), transfer_id: Type.Union([Type.String(), Type.Null()]) }), '4xx': ErrorView },
      },
      handler: async (req, reply) => {
        const p = principalOf(req);
        const src = mgmt(req);
        const b = req.body as { destination_project_id: string; name: string; transfer_id?: string };
        const project = await iam.getProject(p.accountId, b.destination_project_id);
        if (!project) throw new VaultError(404, 'NotFound', 'destination project not found');
        if (project.region !== src.row.region) {
          if (!transfers) throw new VaultError(403, 'TransferNotRecorded', 'copies across regions need a transfer record');
          await transfers.requireTransfer(p.accountId, b.transfer_id, { kind: 'collection', name: src.row.name, sourceRegion: src.row.region, destinationRegion: project.region });
        }
        const r = await vault.copyCollection(src, { accountId: p.accountId, projectId: project.id, region: project.region }, b.name, p.userId);
        req.custos.traced.detail = { collection: src.row.name, copy: r.collection.row.name, from_region: src.row.region, to_region: project.region, records: String(r.records), restricted: String(r.restricted), ...(b.transfer_id ? { transfer: b.transfer_id } : {}) };
        return reply.code(201).send({ collection: collectionView(r.collection), records: r.records, restricted_records_left_out: r.restricted, transfer_id: project.region !== src.row.region ? b.transfer_id! : null });
      },
    },
    {
      method: 'GET', url: '/v1/vault/collections/:collection/versions', meta: meta('vault:collections:get', 'collection', { resource: collectionRes }),
      schema: {
        summary: 'Every schema version of a collection', tags, params: collectionParams,
        response: { 200: Type.Object({ versions: Type.Array(Type.Object({ version: Type.Integer(), created_at: Type.String(), created_by: Type.String(), description: Type.String(), properties: Type.Array(PropertyView) })) }), '4xx': ErrorView },
      },
      handler: async (req) => ({ versions: (await vault.schemaVersions(mgmt(req))).map((v) => ({ version: v.version, created_at: iso(v.created_at), created_by: v.created_by, description: v.schema.description, properties: v.schema.properties })) }),
    },
    {
      method: 'GET', url: '/v1/vault/collections/:collection/access', meta: meta('vault:collections:getAccess', 'collection', { resource: collectionRes }),
      schema: { summary: 'The collection\'s whitelist', tags, params: collectionParams, response: { 200: Type.Object({ access: Type.Array(AccessEntrySchema) }), '4xx': ErrorView } },
      handler: async (req) => ({ access: await vault.listAccess(mgmt(req)) }),
    },
    {
      method: 'PUT', url: '/v1/vault/collections/:collection/access', meta: meta('vault:collections:setAccess', 'collection', { resource: collectionRes }),
      schema: {
        summary: 'Replace the collection\'s whitelist (users, groups, agencies of the account)', tags, params: collectionParams,
        body: Type.Object({ access: Type.Array(AccessEntrySchema, { maxItems: 100 }) }, S), response: { 200: Type.Object({ access: Type.Array(AccessEntrySchema) }), '4xx': ErrorView },
      },
      handler: async (req) => {
        const entries = (req.body as { access: AccessEntry[] }).access.map((a) => ({ ...a, unmask: a.unmask ?? [] }));
        await checkPrincipals(iam, principalOf(req).accountId, entries);
        const access = await vault.setAccess(mgmt(req), entries);
        req.custos.traced.detail = { collection: mgmt(req).row.name, whitelist: access.map((a) => `${a.type}:${a.id}:${a.permissions.join('+')}${a.unmask.length ? `:unmask=${a.unmask.join('+')}` : ''}`).join(',').slice(0, 1000) };
        return { access };
      },
    },

    // ---------------------------------------------------------------- records
    {
      method: 'POST', url: '/v1/vault/collections/:collection/records', meta: data('vault:records:create'),
      schema: {
        summary: 'Store a record of a data subject; every value is encrypted before it is stored', tags, params: collectionParams,
        body: Type.Object({ subject_id: Type.String({ pattern: SUBJECT }), fields: Fields }, S),
        response: { 201: Type.Object({ id: Type.String(), subject_id: Type.String(), region: Type.String(), schema_version: Type.Integer(), created_at: Type.String() }), '4xx': ErrorView },
      },
      handler: async (req, reply) => {
        const { collection, access } = ctx(req);
        const b = req.body as { subject_id: string; fields: Record<string, unknown> };
        req.custos.traced.correlate = { subject: b.subject_id };
        const rec = await vault.createRecord(collection, access, b.subject_id, b.fields);
        req.custos.traced.detail = { collection: collection.row.name, record: rec.id, properties: Object.keys(b.fields).filter((k) => b.fields[k] !== null).join(',') };
        return reply.code(201).send({ id: rec.id, subject_id: rec.subject_id, region: rec.region, schema_version: collection.row.schema_version, created_at: iso(rec.created_at) });
      },
    },
    {
      method: 'GET', url: '/v1/vault/collections/:collection/records', meta: data('vault:records:list'),
      schema: {
        summary: 'The records of one data subject, masked unless unmasked', tags, params: collectionParams,
        querystring: Type.Object({ subject_id: Type.String({ pattern: SUBJECT }), ...ReadQuery, limit: Type.Optional(Type.String({ pattern: '^(100|[1-9][0-9]?)$', description: '1 to 100 (default 50)' })), marker: Type.Optional(Type.String({ format: 'uuid' })) }, S),
        response: { 200: Type.Object({ records: Type.Array(RecordViewSchema), next_marker: Type.Union([Type.String(), Type.Null()]) }), '4xx': ErrorView },
      },
      handler: async (req) => {
        const { collection, access } = ctx(req);
        const q = req.query as { subject_id: string; reason: string; props?: string; transform?: string; unmask?: string; limit?: string; marker?: string };
        req.custos.traced.correlate = { subject: q.subject_id };
        const o = readOptions(q);
        const r = await vault.listBySubject(collection, access, q.subject_id, { ...withUnmaskAll(collection, o), limit: q.limit ? Number(q.limit) : 50, after: q.marker });
        traceRead(req, r.records, q.reason);
        return { records: r.records.map(recordView), next_marker: r.next };
      },
    },
    {
      method: 'GET', url: '/v1/vault/collections/:collection/records/:record_id', meta: data('vault:records:get'),
      schema: {
        summary: 'One record, for a stated purpose; masked unless unmasked', tags, params: recordParams,
        querystring: Type.Object(ReadQuery, S), response: { 200: RecordViewSchema, '4xx': ErrorView },
      },
      handler: async (req) => {
        const { collection, access } = ctx(req);
        const q = req.query as { reason: string; props?: string; transform?: string; unmask?: string };
        const id = (req.params as { record_id: string }).record_id;
        req.custos.traced.detail = { collection: collection.row.name, records: id, purpose: q.reason };
        const v = await vault.readRecord(collection, access, id, withUnmaskAll(collection, readOptions(q)));
        req.custos.traced.correlate = { subject: v.subject_id };
        traceRead(req, [v], q.reason);
        return recordView(v);
      },
    },
    {
      method: 'PATCH', url: '/v1/vault/collections/:collection/records/:record_id', meta: data('vault:records:update'),
      schema: {
        summary: 'Rectify a record: modifiable properties only; null clears an optional value', tags, params: recordParams,
        body: Type.Object({ fields: Fields }, S), response: { 200: Type.Object({ id: Type.String(), updated_at: Type.String() }), '4xx': ErrorView },
      },
      handler: async (req) => {
        const { collection, access } = ctx(req);
        const id = (req.params as { record_id: string }).record_id;
        const fields = (req.body as { fields: Record<string, unknown> }).fields;
        req.custos.traced.detail = { collection: collection.row.name, record: id, properties: Object.keys(fields).join(',') };
        const rec = await vault.updateRecord(collection, access, id, fields);
        req.custos.traced.correlate = { subject: rec.subject_id };
        return { id: rec.id, updated_at: iso(rec.updated_at) };
      },
    },
    {
      method: 'DELETE', url: '/v1/vault/collections/:collection/records/:record_id', meta: data('vault:records:delete'),
      schema: { summary: 'Delete a record with its data key, index entries and tokens', tags, params: recordParams, response: { 204: Type.Null(), '4xx': ErrorView } },
      handler: async (req, reply) => {
        const { collection, access } = ctx(req);
        const id = (req.params as { record_id: string }).record_id;
        req.custos.traced.detail = { collection: collection.row.name, record: id };
        await vault.deleteRecord(collection, access, id);
        return reply.code(204).send();
      },
    },
    {
      method: 'POST', url: '/v1/vault/collections/:collection/search', meta: data('vault:records:search'),
      schema: {
        summary: 'Exact-match search on searchable properties (through keyed blind indexes)', tags, params: collectionParams,
        body: Type.Object({
          reason: ReadQuery.reason, match: Fields,
          props: Type.Optional(Type.Array(Type.String({ pattern: `^${PROP}$` }), { maxItems: 100 })),
          transform: Type.Optional(Type.Record(Type.String({ pattern: `^${PROP}$` }), Type.Union(TRANSFORMS.map((t) => Type.Literal(t))))),
          limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 100 })),
        }, S),
        response: { 200: Type.Object({ records: Type.Array(RecordViewSchema) }), '4xx': ErrorView },
      },
      handler: async (req) => {
        const { collection, access } = ctx(req);
        const b = req.body as { reason: string; match: Record<string, unknown>; props?: string[]; transform?: Record<string, Transform>; limit?: number };
        const views = await vault.search(collection, access, b.match, { reason: b.reason, props: b.props, transforms: b.transform, limit: b.limit ?? 20 });
        traceRead(req, views, b.reason, { matched_on: Object.keys(b.match).join(',') });
        return { records: views.map(recordView) };
      },
    },
    {
      method: 'POST', url: '/v1/vault/collections/:collection/detokenize', meta: data('vault:tokens:detokenize'),
      schema: {
        summary: 'The values tokens stand for (in the clear only with the unmask permission)', tags, params: collectionParams,
        body: Type.Object({ reason: ReadQuery.reason, tokens: Type.Array(Type.String({ pattern: '^tok_[A-Za-z0-9_-]{16,60}$' }), { minItems: 1, maxItems: 100 }) }, S),
        response: { 200: Type.Object({ values: Type.Array(Type.Object({ token: Type.String(), property: Type.Union([Type.String(), Type.Null()]), record_id: Type.Union([Type.String(), Type.Null()]), value: FieldValue })) }), '4xx': ErrorView },
      },
      handler: async (req) => {
        const { collection, access } = ctx(req);
        const b = req.body as { reason: string; tokens: string[] };
        const values = await vault.detokenize(collection, access, b.tokens, b.reason);
        req.custos.traced.detail = {
          collection: collection.row.name, purpose: b.reason, tokens: String(b.tokens.length),
          records: values.map((v) => v.record_id ?? '-').join(',').slice(0, 900), properties: [...new Set(values.map((v) => v.property).filter(Boolean))].join(','),
        };
        return { values };
      },
    },

    // ---------------------------------------------------------------- subjects, inventory
    {
      method: 'POST', url: '/v1/vault/subjects/:subject_id/events', meta: meta('vault:subjects:recordEvent', 'subject'),
      schema: {
        summary: 'Report an event of a data subject (delivered, account_deregistered, ...); values whose deletion rule waits for it are scheduled or deleted', tags,
        params: Type.Object({ subject_id: Type.String({ pattern: SUBJECT }) }, S),
        body: Type.Object({ event: Type.String({ pattern: `^${PROP}$` }), occurred_at: Type.Optional(Type.String({ format: 'date-time' })) }, S),
        response: { 200: Type.Object({ scheduled: Type.Integer(), deleted_values: Type.Integer(), deleted_records: Type.Integer() }), '4xx': ErrorView },
      },
      handler: async (req) => {
        const p = principalOf(req);
        const subject = (req.params as { subject_id: string }).subject_id;
        const b = req.body as { event: string; occurred_at?: string };
        req.custos.traced.correlate = { subject };
        const r = await vault.recordEvent(p.accountId, subject, b.event, b.occurred_at ? instantOf(b.occurred_at, 'occurred_at') : undefined);
        req.custos.traced.detail = { event: b.event, scheduled: String(r.scheduled), deleted_values: String(r.deleted_values), deleted_records: String(r.deleted_records) };
        return r;
      },
    },
    {
      method: 'GET', url: '/v1/vault/subjects/:subject_id/events', meta: meta('vault:subjects:listEvents', 'subject'),
      schema: {
        summary: 'The events reported for a data subject', tags, params: Type.Object({ subject_id: Type.String({ pattern: SUBJECT }) }, S),
        response: { 200: Type.Object({ events: Type.Array(Type.Object({ event: Type.String(), occurred_at: Type.String(), received_at: Type.String(), values_scheduled: Type.Integer() })) }), '4xx': ErrorView },
      },
      handler: async (req) => {
        const subject = (req.params as { subject_id: string }).subject_id;
        req.custos.traced.correlate = { subject };
        const events = await vault.subjectEvents(principalOf(req).accountId, subject);
        return { events: events.map((e) => ({ ...e, occurred_at: iso(e.occurred_at), received_at: iso(e.received_at) })) };
      },
    },
    {
      method: 'GET', url: '/v1/vault/inventory', meta: meta('vault:inventory:get', 'inventory'),
      schema: {
        summary: 'The personal-data inventory a privacy notice needs (JSON, CSV or Markdown)', tags,
        querystring: Type.Object({ format: Type.Optional(Type.Union([Type.Literal('json'), Type.Literal('csv'), Type.Literal('markdown')])) }, S),
      },
      handler: async (req, reply) => {
        const rows = await vault.inventory(principalOf(req).accountId);
        const format = (req.query as { format?: string }).format ?? 'json';
        if (format === 'csv') return reply.type('text/csv; charset=utf-8').send(inventoryCsv(rows));
        if (format === 'markdown') return reply.type('text/markdown; charset=utf-8').send(inventoryMarkdown(rows));
        return { inventory: rows };
      },
    },
  ];
}

/** `unmask=*`: every selected property in the clear (each still checked against the unmask permission). */
function withUnmaskAll(c: Collection, o: ReturnType<typeof readOptions>) {
  if (!o.unmaskAll) return o;
  const names = o.props ?? c.schema.properties.filter((p) => p.purposes.includes(o.reason)).map((p) => p.name);
  return { ...o, transforms: { ...Object.fromEntries(names.map((n) => [n, 'plain' as Transform])), ...o.transforms } };
}

/** Whitelist entries must name principals of the caller's account. */
async function checkPrincipals(iam: IamService, accountId: string, entries: AccessEntry[]): Promise<void> {
  for (const e of entries) {
    const found = e.type === 'user' ? await iam.getUser(accountId, e.id) : e.type === 'group' ? await iam.getGroup(accountId, e.id) : await iam.getAgency(accountId, e.id);
    if (!found) throw new VaultError(400, 'InvalidAccess', `the whitelist names ${e.type} ${e.id}, which does not exist in this account`);
  }
}

export const INVENTORY_COLUMNS = ['Collection', 'Data', 'How collected', 'Modifiable', 'Mandatory', 'When deleted', 'Purpose', 'Region', 'Key'] as const;
function inventoryCells(r: InventoryRow): string[] {
  return [
    r.collection, r.description ? `${r.data} (${r.description})` : r.data, r.how_collected, r.modifiable ? 'Yes' : 'No', r.mandatory ? 'Yes' : 'No',
    r.when_deleted, r.purposes.join(', '), r.region, r.kms_key_alias ? `${r.kms_key_alias} (${r.kms_key_id})` : r.kms_key_id,
  ];
}
export function inventoryCsv(rows: InventoryRow[]): string {
  return stringify([[...INVENTORY_COLUMNS], ...rows.map(inventoryCells)]);
}
export function inventoryMarkdown(rows: InventoryRow[]): string {
  const esc = (s: string) => s.replace(/\\/g, '\\\\').replace(/\|/g, '\\|').replace(/\r?\n/g, ' ');
  const line = (cells: readonly string[]) => `| ${cells.map(esc).join(' | ')} |`;
  return [line(INVENTORY_COLUMNS), line(INVENTORY_COLUMNS.map(() => '---')), ...rows.map((r) => line(inventoryCells(r)))].join('\n') + '\n';
}
