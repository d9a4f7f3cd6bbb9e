import type { FastifyReply, FastifyRequest, FastifySchema, HTTPMethods } from 'fastify';
import type { Principal, ResourceRef } from '../iam/iam.js';
import type { ChunkSigner } from '../iam/signing.js';
import { HttpFailure, type ApiDialect } from './errors.js';

/** Everything the edge must know about a route before it may serve it. */
export interface RouteMeta {
  dialect: ApiDialect;
  /** Service name as traces show it: IAM, CTS, KMS, OBS, VAULT. */
  service: string;
  /**
   * The IAM action the route performs (`iam:users:createUser`). `null` declares the route public on
   * purpose (health, login); every other route is authenticated and authorized with it.
   */
  action: string | null;
  /** Authenticated but not policy-checked: the route checks the caller itself (token validation). */
  authenticatedOnly?: boolean;
  /**
   * The request acts on many items that are authorized one by one in the handler (S3 DeleteObjects):
   * the edge resolves the resource (404) and refuses a frozen account, but takes no decision itself.
   */
  authorizesEachItem?: boolean;
  traceType?: 'management' | 'data';
  resourceType?: string;
  /**
   * A grant operation (KMS) that also allows the call on the resolved resource when no policy allows
   * it; an explicit deny in a policy still wins.
   */
  grant?: string;
  /** Kept out of traces, metrics-only plumbing (health, metrics). */
  untraced?: boolean;
  /**
   * S3-style subresources: a request whose query has one of these parameters (`?versioning`,
   * `?versionId=`) is a different operation on the same path, with its own action and resource.
   */
  bySubresource?: Record<string, Partial<Omit<RouteMeta, 'bySubresource'>>>;
  /** Resolves the target inside the caller's account only; null answers 404. */
  resource?: (req: FastifyRequest, principal: Principal) => Promise<ResourceRef | null>;
}

export interface RequestState {
  startedAt: bigint;
  principal: Principal | null;
  resource: ResourceRef | null;
  /** A handler that creates something names it here so the trace carries it. */
  traced: {
    resourceId?: string;
    resourceName?: string;
    /** The account a request concerns when no principal or resource says so (a failed login). */
    accountId?: string;
    /** Raw values the audit service stores only as HMACs. */
    correlate?: Record<string, string>;
    /** Names (never values) of what a data operation touched: record, properties, purpose. */
    detail?: Record<string, string>;
  };
  errorCode: string | null;
  rawBody: Buffer;
  /**
   * A header-signed SigV4 upload that declared signed streaming: what its chunk signatures are checked
   * with. Holds the signing key, so it is never put in a trace, a log or a response.
   */
  chunkSigner: ChunkSigner | null;
}

declare module 'fastify' {
  interface FastifyRequest {
    custos: RequestState;
  }
  interface FastifyContextConfig {
    custos?: RouteMeta;
  }
}

export interface RouteDef {
  method: HTTPMethods | HTTPMethods[];
  url: string;
  meta: RouteMeta;
  schema?: FastifySchema;
  /** Route constraints, e.g. `{ amzTarget: 'TrentService.Encrypt' }` for the AWS JSON protocol on `POST /`. */
  constraints?: Record<string, string>;
  handler: (req: FastifyRequest, reply: FastifyReply) => Promise<unknown>;
}

/** The principal of an authenticated route; the edge guarantees it is set before the handler runs. */
export function principalOf(req: FastifyRequest): Principal {
  const p = req.custos.principal;
  if (!p) throw new Error('route declared without authentication reached a principal-only handler');
  return p;
}

/**
 * A `date-time` the schema accepted, as epoch milliseconds. RFC 3339 allows a leap second
 * (`23:59:60`), which `Date.parse` cannot represent: 400, before anything is written.
 */
export function instantOf(value: string, field: string): number {
  const t = Date.parse(value);
  if (!Number.isFinite(t)) throw new HttpFailure(400, 'BadRequest', `${field} is not a time this server can represent (a leap second?)`);
  return t;
}
