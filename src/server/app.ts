import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import swagger from '@fastify/swagger';
import { collectDefaultMetrics, Counter, Histogram, Registry } from 'prom-client';
import type { Config } from '../config.js';
import type { AuditRecorder, RequestTrace } from '../audit/trace.js';
import { IamCodes, IamError } from '../iam/errors.js';
import { ANONYMOUS_PRINCIPAL, isAnonymous, type IamService, type Principal, type ResourceRef } from '../iam/iam.js';
import { sql } from 'kysely';
import type { Store } from '../store/db.js';
import { edgeFailure, errorBody, HttpFailure, toFailure, type ApiDialect } from './errors.js';
import type { RouteDef, RouteMeta } from './route.js';

export interface AppDeps {
  config: Config;
  store: Store;
  iam: IamService;
  audit: AuditRecorder | null;
  routes: RouteDef[];
  /** The main listener (every control API) or the S3/OBS listener (object traffic, streamed bodies). */
  listener?: 'main' | 's3';
  /** Further Prometheus counters: name, help, and how to read the value. */
  serviceCounters?: [string, string, () => number][];
  /** Whether a grant lets the principal perform `operation` on the resource (KMS grants). */
  grantAllows?: (resource: ResourceRef, principal: Principal, operation: string) => Promise<boolean>;
  /** Listener-specific response headers, set before any response leaves (the S3 listener's CORS headers). */
  onSend?: (req: FastifyRequest, reply: FastifyReply) => void;
  /**
   * Actions a request without any credentials may ask for (the S3 listener's reads of public buckets);
   * it is then let in only where the resource's policy allows anyone (IamService.authorizeAnonymous).
   */
  anonymousActions?: ReadonlySet<string>;
  /** Pino destination for tests that read the logs; defaults to stdout. */
  logStream?: NodeJS.WritableStream;
  now?: () => number;
}

const REQUEST_ID = /^[A-Za-z0-9._-]{8,64}$/;
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

/** Header names whose values are credentials: never logged, never traced. */
export const SECRET_HEADERS = ['authorization', 'x-auth-token', 'x-subject-token', 'x-security-token', 'x-amz-security-token', 'cookie'];

/** Subresource parameters that qualify an operation (which version) rather than name one. */
const QUALIFIER_SUBRESOURCES = new Set(['versionId']);
/** The subresource parameters of the route present in the request: operations first, then qualifiers. */
function subresourcesOf(req: FastifyRequest, base: RouteMeta): { operations: string[]; qualifiers: string[] } {
  const q = (req.query ?? {}) as Record<string, unknown>;
  const present = Object.keys(base.bySubresource ?? {}).filter((k) => k in q);
  return { operations: present.filter((k) => !QUALIFIER_SUBRESOURCES.has(k)), qualifiers: present.filter((k) => QUALIFIER_SUBRESOURCES.has(k)) };
}
const subresourceMeta = new WeakMap<FastifyRequest, RouteMeta>();
function metaOf(req: FastifyRequest): RouteMeta | undefined {
  const base = req.routeOptions.config?.custos;
  if (!base?.bySubresource) return base;
  const cached = subresourceMeta.get(req);
  if (cached) return cached;
  // The operation the request names decides the action (a request naming two is refused before it is
  // authorized); a qualifier alone (?versionId) decides it when there is none. Handlers test the same
  // parameters, so the action authorized is the operation that runs.
  const { operations, qualifiers } = subresourcesOf(req, base);
  const hit = operations[0] ?? qualifiers[0];
  const meta = hit ? { ...base, ...base.bySubresource[hit] } : base;
  subresourceMeta.set(req, meta);
  return meta;
}
function dialectOf(req: FastifyRequest): ApiDialect {
  const meta = metaOf(req);
  if (meta) return meta.dialect;
  if (req.headers['x-amz-target'] !== undefined) return 'aws-json';
  return req.url.startsWith('/v1/') ? 'custos' : req.url.startsWith('/v1.0/') ? 'huawei-kms' : 'huawei';
}

const EMPTY = Buffer.alloc(0);

export async function buildApp(deps: AppDeps): Promise<FastifyInstance> {
  const dateCache = { second: -1, value: '' };
  const { config, iam } = deps;
  const s3 = deps.listener === 's3';
  const now = deps.now ?? Date.now;
  const https = config.tlsCert && config.tlsKey ? { cert: readFileSync(config.tlsCert), key: readFileSync(config.tlsKey) } : null;
  const app = Fastify({
    ...(https ? { https } : {}),
    bodyLimit: s3 ? config.obsMaxObjectBytes : config.bodyLimitBytes,
    trustProxy: false,
    return503OnClosing: true,
    // S3 defines HEAD itself (HeadBucket, HeadObject); the main listener keeps Fastify's automatic HEAD.
    exposeHeadRoutes: !s3,
    // Virtual-hosted style: `<bucket>.<obsDomain>/key` is routed as `/<bucket>/key`.
    ...(s3 && config.obsDomain ? { rewriteUrl: (raw: import('node:http').IncomingMessage) => virtualHost(raw, config.obsDomain!) } : {}),
    forceCloseConnections: 'idle',
    genReqId: (raw) => {
      const given = raw.headers['x-request-id'];
      return typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
    },
    logger: {
      level: config.logLevel,
      ...(deps.logStream ? { stream: deps.logStream } : {}),
      redact: { paths: SECRET_HEADERS.map((h) => `req.headers["${h}"]`), censor: '[redacted]' },
      serializers: {
        // The query string can hold presigned signatures and security tokens: log the path only.
        req: (req: { method: string; url: string; ip?: string; id: string }) => ({ id: req.id, method: req.method, path: req.url.split('?')[0], ip: req.ip }),
      },
    },
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
    // The AWS JSON protocols put every operation on `POST /` and name it in X-Amz-Target.
    // S3 clients address a bucket as `/bucket/` as well as `/bucket`.
    routerOptions: { constraints: { amzTarget: amzTargetConstraint as never }, ...(s3 ? { ignoreTrailingSlash: true } : {}) },
  }) as unknown as FastifyInstance;

  // ---- metrics
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'custos_' });
  const audit = deps.audit;
  // Counters kept by the services, read when Prometheus scrapes.
  const counter = (name: string, help: string, read: () => number) =>
    new Counter({
      name, help, registers: [registry],
      collect() {
        this.reset();
        this.inc(read());
      },
    });
  counter('custos_iam_cache_hits_total', 'IAM cache hits (tokens, keys, principals, policy sets)', () => iam.cache.stats.hits);
  counter('custos_iam_cache_misses_total', 'IAM cache misses', () => iam.cache.stats.misses);
  counter('custos_iam_cache_invalidations_total', 'IAM cache invalidations (a change on this or another node)', () => iam.cache.stats.invalidations);
  counter('custos_iam_epoch_read_failures_total', 'Failed reads of the IAM epoch (cached entries are not served meanwhile)', () => iam.cache.stats.epochReadFailures);
  for (const [name, help, read] of deps.serviceCounters ?? []) counter(name, help, read);
  if (audit) {
    counter('custos_audit_traces_total', 'Traces committed to the audit trail', () => audit.stats.traces);
    counter('custos_audit_batches_total', 'Audit trail write transactions (group commits)', () => audit.stats.batches);
    counter('custos_audit_write_failures_total', 'Traces that could not be committed (their requests were refused)', () => audit.stats.failures);
  }
  const duration = new Histogram({
    name: 'custos_http_request_duration_seconds',
    help: 'HTTP request duration by route, method and status',
    labelNames: ['method', 'route', 'status'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10],
    registers: [registry],
  });

  // ---- bodies: keep the raw bytes (signatures cover them), parse JSON ourselves
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (req, body: Buffer, done) => {
    req.custos.rawBody = body;
    if (body.length === 0) return done(null, undefined);
    try {
      done(null, parseJsonText(body.toString('utf8')));
    } catch (e) {
      done(e instanceof HttpFailure ? e : new HttpFailure(400, 'MalformedJSON', 'the body is not valid JSON'), undefined);
    }
  });
  app.addContentTypeParser(['application/x-amz-json-1.1', 'application/x-amz-json-1.0'], { parseAs: 'buffer' }, (req, body: Buffer, done) => {
    req.custos.rawBody = body;
    if (body.length === 0) return done(null, {});
    try {
      done(null, parseJsonText(body.toString('utf8')));
    } catch (e) {
      done(e instanceof HttpFailure ? e : new HttpFailure(400, 'SerializationException', 'the body is not valid JSON'), undefined);
    }
  });
  if (s3) {
    // Object bodies stream through to the handler; nothing is buffered here.
    app.removeAllContentTypeParsers();
    app.addContentTypeParser('*', (_req, payload, done) => done(null, payload));
  } else {
    app.addContentTypeParser('*', { parseAs: 'buffer' }, (req, body: Buffer, done) => {
      req.custos.rawBody = body;
      done(null, body);
    });
  }

  if (!s3) await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'Custos API', version: '0.1.0', description: "Custos's own REST routes (cloud-compatible dialects are documented by their clouds)." },
      components: { securitySchemes: { token: { type: 'apiKey', in: 'header', name: 'X-Auth-Token' } } },
      security: [{ token: [] }],
    },
  });

  // A route without a declared action does not start.
  app.addHook('onRoute', (opts) => {
    if (opts.url === '/openapi.json' || opts.url.startsWith('/documentation')) return;
    const meta = opts.config?.custos;
    if (!meta || (meta.action === undefined)) throw new Error(`route ${String(opts.method)} ${opts.url} declares no action`);
    if (meta.action === null && meta.resource) throw new Error(`public route ${opts.url} cannot resolve a resource`);
    if (meta.dialect !== 'custos') opts.schema = { ...(opts.schema ?? {}), hide: true } as typeof opts.schema;
  });

  app.decorateRequest('custos', null as never);
  app.addHook('onRequest', async (req, reply) => {
    req.custos = { startedAt: process.hrtime.bigint(), principal: null, resource: null, traced: {}, errorCode: null, rawBody: EMPTY, chunkSigner: null };
    reply.header('x-request-id', req.id);
    // The Date header follows the clock that judges signatures (an injected one in tests): clients
    // correct their clock skew from it. Formatted once per second.
    const second = Math.floor(now() / 1000);
    if (second !== dateCache.second) {
      dateCache.second = second;
      dateCache.value = new Date(second * 1000).toUTCString();
    }
    reply.header('date', dateCache.value);
    // A NUL character is never meaningful in a path or query here, and PostgreSQL text cannot hold one.
    if (req.url.includes('%00')) throw edgeFailure('badRequest', dialectOf(req), 400, 'the URL contains a NUL character');
  });

  // ---- authentication: once per request, before the body is validated
  app.addHook('preValidation', async (req) => {
    const base = req.routeOptions.config?.custos;
    if (base?.bySubresource) {
      // `?versioning&policy` must not be authorized as one operation and run as another.
      const { operations } = subresourcesOf(req, base);
      if (operations.length > 1) throw edgeFailure('badRequest', base.dialect, 400, `the request names more than one operation (${operations.join(', ')}); name one`);
    }
    const meta = metaOf(req);
    if (!meta || (meta.action === null && !meta.authenticatedOnly)) return;
    if (deps.anonymousActions && meta.action !== null && SAFE_METHODS.has(req.method) && deps.anonymousActions.has(meta.action) && !carriesCredentials(req)) {
      req.custos.principal = ANONYMOUS_PRINCIPAL;
      return;
    }
    req.custos.principal = await authenticate(iam, req, s3);
    // A presigned URL's signature parameters are credentials, not arguments of the operation.
    const q = req.query as Record<string, unknown> | undefined;
    if (q && typeof q === 'object') {
      const presignedV4 = 'X-Amz-Signature' in q;
      for (const k of Object.keys(q)) {
        if (k.startsWith('X-Amz-')) delete q[k];
        // S3 takes a header's value from the query of a presigned SigV4 URL (x-amz-checksum-crc32,
        // x-amz-sdk-checksum-algorithm, x-amz-meta-*, ...): signed with the URL (SigV4 signs the whole
        // query), so it is the caller's. A header sent beside it wins. Not from any other request: a V2
        // signature does not cover such parameters, so one added on the way would act unsigned.
        else if (s3 && presignedV4 && k.startsWith('x-amz-')) {
          const v = q[k];
          if (req.headers[k] === undefined && typeof v === 'string') req.headers[k] = v;
          delete q[k];
        }
      }
    }
  });

  // ---- authorization: resolve the target in the caller's account, then the one decision
  app.addHook('preHandler', async (req) => {
    const meta = metaOf(req);
    const p = req.custos.principal;
    if (!meta || meta.action === null || meta.authenticatedOnly || !p) return;
    // An account being deregistered is frozen: its users may only see or cancel the deregistration.
    if (p.frozen && !meta.action.startsWith('privacy:deregistration:')) {
      throw new IamError(403, IamCodes.accountFrozen, 'the account is being deregistered and is frozen: only the deregistration can be viewed or cancelled');
    }
    if (isAnonymous(p)) {
      // Whether the bucket is missing, private or public without a statement for this: the same 403.
      const resource = meta.resource ? await meta.resource(req, p) : null;
      if (resource) req.custos.resource = resource;
      const decision = resource ? await iam.authorizeAnonymous(meta.action, resource, { sourceIp: req.ip, secure: req.protocol === 'https' }) : null;
      if (decision?.effect !== 'allow') throw edgeFailure('forbidden', meta.dialect, 403, 'Access Denied');
      return;
    }
    let resource = null;
    if (meta.resource) {
      resource = await meta.resource(req, p);
      // Another tenant's resource is indistinguishable from a missing one.
      if (!resource || resource.accountId !== p.accountId) throw new HttpFailure(404, notFoundCode(meta.dialect), `${meta.resourceType ?? 'resource'} not found`);
      req.custos.resource = resource;
    }
    if (meta.authorizesEachItem) return;
    const decision = await iam.authorize(p, meta.action, resource, { sourceIp: req.ip, secure: req.protocol === 'https' });
    // A grant on the resource allows what no policy allows; it cannot override an explicit deny.
    if (decision.effect === 'implicit-deny' && meta.grant && resource && deps.grantAllows && (await deps.grantAllows(resource, p, meta.grant))) return;

    if (decision.effect !== 'allow') {
      throw new IamError(403, 'IAM.0003', `not authorized to perform ${meta.action}${decision.effect === 'explicit-deny' ? ' (explicitly denied by a policy)' : ''}`);
    }
  });

  // ---- fail closed: while the trail cannot be written, a mutation is refused before it runs
  app.addHook('preHandler', async (req) => {
    const meta = metaOf(req);
    if (!deps.audit || !meta || meta.untraced || (SAFE_METHODS.has(req.method) && meta.traceType !== 'data')) return;
    if (!deps.audit.admitMutation()) {
      throw edgeFailure('unavailable', meta.dialect, 503, 'the audit trail is unavailable, so the request was refused before it ran; retry later');
    }
  });

  // ---- errors, in the route's dialect
  app.setErrorHandler(async (err, req, reply) => {
    const dialect = dialectOf(req);
    const { failure, unexpected } = toFailure(err, dialect);
    if (unexpected) req.log.error({ err }, 'unexpected error');
    req.custos.errorCode = failure.code;
    // S3 says on an error response when the key's current version is a delete marker.
    const details = (err as { details?: Record<string, string> }).details;
    if (dialect === 's3' && details?.deleteMarker) reply.header('x-amz-delete-marker', 'true').header('x-amz-version-id', details.versionId ?? 'null');
    return reply.code(failure.status).type(dialect === 's3' ? 'application/xml' : 'application/json').send(errorBody(failure, dialect, req.id));
  });
  app.setNotFoundHandler(async (req, reply) => {
    const dialect = s3 ? 's3' : dialectOf(req);
    if (dialect === 's3') {
      req.custos.errorCode = 'NotImplemented';
      return reply.code(501).type('application/xml').send(errorBody(new HttpFailure(501, 'NotImplemented', 'this operation is not implemented'), 's3', req.id));
    }
    if (dialect === 'aws-json') {
      req.custos.errorCode = 'UnknownOperationException';
      return reply.code(400).send({ __type: 'UnknownOperationException', message: 'unknown or unsupported X-Amz-Target' });
    }
    const f = edgeFailure('notFound', dialect, 404, 'no such API');
    req.custos.errorCode = f.code;
    return reply.code(404).send(errorBody(f, dialect, req.id));
  });

  // ---- trace every answered request before its response leaves
  // Shutting down: answer what is in flight, and tell each client to close its connection afterwards,
  // so keep-alive connections do not hold the server open past the grace period.
  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
  });
  app.addHook('onSend', async (req, reply, payload) => {
    if (closing) reply.header('connection', 'close');
    // A request refused before its body was read (a part of the wrong checksum type, an SSE-C key
    // mismatch, ...) leaves the rest of the body on the connection: close it, or the next request on
    // it would wait behind those bytes.
    else if (s3 && !req.raw.complete) reply.header('connection', 'close');
    deps.onSend?.(req, reply);
    return payload;
  });
  app.addHook('onSend', async (req, reply, payload) => {
    const meta = metaOf(req);
    if (meta?.untraced || !deps.audit) return payload;
    const trace = buildTrace(req, reply, meta, now);
    try {
      await deps.audit.record(trace);
    } catch (err) {
      req.log.error({ err: { message: (err as Error).message } }, 'audit trace could not be stored');
      // A change that cannot be traced is reported as failed; so is a read of data (an object, a record).
      if (reply.statusCode < 400 && (!SAFE_METHODS.has(req.method) || meta?.traceType === 'data')) {
        const dialect = dialectOf(req);
        const f = edgeFailure('unavailable', dialect, 503, 'the audit trail is unavailable, so the request was refused; retry later');
        reply.code(503).type(dialect === 's3' ? 'application/xml' : 'application/json');
        reply.removeHeader('x-subject-token');
        const body = errorBody(f, dialect, req.id);
        return typeof body === 'string' ? body : JSON.stringify(body);
      }
    }
    return payload;
  });

  app.addHook('onResponse', async (req, reply) => {
    const seconds = Number(process.hrtime.bigint() - (req.custos?.startedAt ?? process.hrtime.bigint())) / 1e9;
    duration.observe({ method: req.method, route: req.routeOptions.url ?? 'unmatched', status: String(reply.statusCode) }, seconds);
  });

  // ---- plumbing routes (on the main listener; on the S3 listener every path names a bucket)
  if (s3) {
    for (const r of deps.routes) app.route({ method: r.method, url: r.url, schema: r.schema ?? {}, config: { custos: r.meta }, ...(r.constraints ? { constraints: r.constraints } : {}), handler: r.handler });
    return app;
  }
  const plumbing = (action: null): RouteMeta => ({ dialect: 'custos', service: 'Custos', action, untraced: true });
  app.get('/health', { config: { custos: plumbing(null) }, schema: { hide: true } as object }, async () => ({ status: 'ok' }));
  app.get('/ready', { config: { custos: plumbing(null) }, schema: { hide: true } as object }, async (_req, reply) => {
    try {
      await sql`select 1`.execute(deps.store.db);
      if (deps.audit && !deps.audit.healthy) return reply.code(503).send({ status: 'unavailable', reason: 'the audit trail cannot be written' });
      return { status: 'ready' };
    } catch {
      return reply.code(503).send({ status: 'unavailable', reason: 'database unreachable' });
    }
  });
  app.get('/metrics', { config: { custos: plumbing(null) }, schema: { hide: true } as object }, async (_req, reply) => {
    reply.type(registry.contentType);
    return registry.metrics();
  });
  app.get('/openapi.json', { config: { custos: plumbing(null) }, schema: { hide: true } as object }, async () => app.swagger());

  for (const r of deps.routes) {
    app.route({ method: r.method, url: r.url, schema: r.schema ?? {}, config: { custos: r.meta }, ...(r.constraints ? { constraints: r.constraints } : {}), handler: r.handler });
  }
  return app;
}

/** A JSON escape of NUL that is not itself an escaped backslash followed by `u0000`. */
const JSON_NUL = /(?<!\\)(?:\\\\)*\\u0000/;
/** JSON.parse, refusing NUL characters: no field of any API takes one, and PostgreSQL text cannot store one. */
function parseJsonText(text: string): unknown {
  if (text.includes('\\u0000') && JSON_NUL.test(text)) throw new HttpFailure(400, 'MalformedJSON', 'the body contains a NUL character (\\u0000), which no field accepts');
  const value: unknown = JSON.parse(text);
  // JSON.parse takes any depth; serializing it again (a policy document is stored as text) overflows
  // the stack at some hundred thousand levels. No document of any API here nests beyond a few dozen.
  if (deeperThan(value, MAX_JSON_DEPTH)) throw new HttpFailure(400, 'MalformedJSON', `the body nests deeper than ${MAX_JSON_DEPTH} levels`);
  return value;
}
const MAX_JSON_DEPTH = 64;
function deeperThan(v: unknown, levels: number): boolean {
  if (typeof v !== 'object' || v === null) return false;
  if (levels === 0) return true;
  for (const child of Array.isArray(v) ? v : Object.values(v)) if (deeperThan(child, levels - 1)) return true;
  return false;
}

/** Requests that named their bucket in the Host header: the bucket and the URL as sent. */
const virtualHosted = new WeakMap<import('node:http').IncomingMessage, { bucket: string; originalUrl: string }>();
function virtualHost(raw: import('node:http').IncomingMessage, domain: string): string {
  const url = raw.url ?? '/';
  const host = String(raw.headers.host ?? '').toLowerCase().replace(/:\d+$/, '');
  if (!host.endsWith(`.${domain}`)) return url;
  const bucket = host.slice(0, -domain.length - 1);
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) return url;
  virtualHosted.set(raw, { bucket, originalUrl: url });
  return `/${bucket}${url.startsWith('/') ? url : `/${url}`}`;
}

/** Routes `POST /` by the operation its X-Amz-Target header names; without the header the constraint does not apply. */
const amzTargetConstraint = {
  name: 'amzTarget',
  storage() {
    const byTarget = new Map<string, unknown>();
    return {
      get: (target: string) => byTarget.get(target) ?? null,
      set: (target: string, store: unknown) => void byTarget.set(target, store),
    };
  },
  deriveConstraint: (req: { headers: Record<string, string | string[] | undefined> }) => {
    const t = req.headers['x-amz-target'];
    return typeof t === 'string' ? t : undefined;
  },
  validate: (value: unknown) => {
    if (typeof value !== 'string') throw new Error('an amzTarget constraint is a string');
  },
  mustMatchWhenDerived: true,
};

function notFoundCode(d: ApiDialect): string {
  return d === 'custos' ? 'NotFound' : d === 'aws-json' ? 'NotFoundException' : d === 'huawei-kms' ? 'KMS.0202' : d === 's3' ? 'NoSuchBucket' : 'IAM.0004';
}

/** Whether the request carries credentials of any kind (then they must be valid: no falling back to anonymous). */
function carriesCredentials(req: FastifyRequest): boolean {
  const h = req.headers;
  if (h.authorization !== undefined || h['x-auth-token'] !== undefined || h['x-amz-security-token'] !== undefined || h['x-obs-security-token'] !== undefined || h['x-security-token'] !== undefined) return true;
  const q = req.query as Record<string, unknown> | undefined;
  return !!q && ('X-Amz-Signature' in q || 'X-Amz-Credential' in q || 'Signature' in q || 'AWSAccessKeyId' in q || 'AccessKeyId' in q);
}

/** Token (X-Auth-Token) or AK/SK signature; anything else is 401. */
async function authenticate(iam: IamService, req: FastifyRequest, streamedBody: boolean) {
  const token = req.headers['x-auth-token'];
  if (typeof token === 'string' && token.length > 0) return iam.authenticateToken(token);
  // A virtual-hosted request is signed as sent (SigV4), or with `/bucket` + path as its resource (V2/OBS).
  const vhost = virtualHosted.get(req.raw);
  const raw = vhost?.originalUrl ?? req.raw.url ?? '/';
  const q = raw.indexOf('?');
  const rawPath = q >= 0 ? raw.slice(0, q) : raw;
  const signed = await iam.authenticateSignedRequest({
    method: req.method,
    path: rawPath,
    ...(vhost ? { v2Resource: `/${vhost.bucket}${rawPath}` } : {}),
    query: q >= 0 ? raw.slice(q + 1) : '',
    headers: req.headers,
    body: req.custos.rawBody,
    streamedBody,
  });
  if (!signed) throw IamError.unauthenticated('authenticate with an X-Auth-Token header or an AK/SK signature');
  req.custos.chunkSigner = signed.chunkSigner;
  return signed.principal;
}

function buildTrace(req: FastifyRequest, reply: FastifyReply, meta: RouteMeta | undefined, now: () => number): RequestTrace {
  // A request without credentials is traced as unauthenticated (to the trail of the resource it reached).
  const caller = req.custos?.principal ?? null;
  const p = caller && !isAnonymous(caller) ? caller : null;
  const r = req.custos?.resource ?? null;
  const status = reply.statusCode;
  const ua = req.headers['user-agent'];
  const traced = req.custos?.traced;
  const created = traced?.resourceId !== undefined;
  return {
    traceName: meta?.action ?? (req.routeOptions.url ? `${req.method} ${req.routeOptions.url}` : 'unknown'),
    traceType: meta?.traceType ?? 'management',
    traceRating: status >= 500 ? 'incident' : status >= 400 ? 'warning' : 'normal',
    serviceType: meta?.service ?? 'Custos',
    // A handler that created something names it; otherwise the resource the edge resolved.
    resourceType: created ? (meta?.resourceType ?? null) : (r?.type ?? meta?.resourceType ?? null),
    resourceId: created ? (traced?.resourceId ?? null) : (r?.id ?? null),
    resourceName: created ? (traced?.resourceName ?? null) : (r?.name ?? null),
    accountId: r?.accountId ?? p?.accountId ?? req.custos?.traced.accountId ?? null,
    projectId: r?.projectId ?? p?.projectId ?? null,
    region: r?.region ?? p?.region ?? null,
    user: {
      accountId: p?.agency?.sourceAccountId ?? p?.accountId ?? null,
      accountName: p?.agency?.sourceAccountName ?? p?.accountName ?? null,
      userId: p?.userId ?? null,
      userName: p?.userName ?? null,
      accessKeyId: p?.accessKeyId ?? null,
      agency: p?.agency ?? null,
      authMethod: p && p.method !== 'anonymous' ? p.method : 'none',
    },
    sourceIp: req.ip,
    userAgent: typeof ua === 'string' ? ua.slice(0, 256) : null,
    requestId: req.id,
    httpMethod: req.method,
    apiPath: req.routeOptions.url ?? 'unmatched',
    code: status,
    errorCode: req.custos?.errorCode ?? null,
    time: now(),
    ...(req.custos?.traced.correlate ? { correlate: req.custos.traced.correlate } : {}),
    ...(req.custos?.traced.detail ? { detail: req.custos.traced.detail } : {}),
  };
}
