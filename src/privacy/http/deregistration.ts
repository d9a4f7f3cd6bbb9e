/** Account deregistration over Custos REST (/v1/privacy/deregistration) and its destruction certificates. */
import { Type } from '@sinclair/typebox';
import { IamError } from '../../iam/errors.js';
import { OPERATOR_ACCOUNT } from '../../iam/iam.js';
import type { RouteDef, RouteMeta } from '../../server/route.js';
import { principalOf } from '../../server/route.js';
import type { DeregistrationRow, DeregistrationService } from '../deregistration.js';
import { PrivacyError } from '../rights.js';

const S = { additionalProperties: false } as const;
const ErrorView = Type.Object({ error: Type.Object({ code: Type.String(), message: Type.String(), request_id: Type.String() }) });
const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());
const StatusView = Type.Object({
  account_id: Type.String(), account_name: Type.String(), status: Type.String(), requested_at: Type.String(), requested_by: Type.String(),
  destroy_after: Type.String(), cancelled_at: Type.Union([Type.String(), Type.Null()]), destroyed_at: Type.Union([Type.String(), Type.Null()]),
});
function view(r: DeregistrationRow) {
  return {
    account_id: r.account_id, account_name: r.account_name, status: r.status, requested_at: iso(r.requested_at)!, requested_by: r.requested_by,
    destroy_after: iso(r.destroy_after)!, cancelled_at: iso(r.cancelled_at), destroyed_at: iso(r.destroyed_at),
  };
}

export function deregistrationRoutes(dereg: DeregistrationService): RouteDef[] {
  const meta = (action: string | null, extra: Partial<RouteMeta> = {}): RouteMeta => ({ dialect: 'custos', service: 'PRIVACY', action, resourceType: 'deregistration', ...extra });
  const tags = ['privacy'];
  return [
    {
      method: 'POST', url: '/v1/privacy/deregistration', meta: meta('privacy:deregistration:request'),
      schema: {
        summary: 'Deregister the account: frozen at once, destroyed when the retention period ends (needs an MFA session)', tags,
        body: Type.Object({ confirm_account_name: Type.String({ minLength: 1, maxLength: 64 }) }, S), response: { 202: StatusView, '4xx': ErrorView },
      },
      handler: async (req, reply) => {
        const r = await dereg.request(principalOf(req), (req.body as { confirm_account_name: string }).confirm_account_name);
        req.custos.traced.detail = { deregistration: 'requested', destroy_after: iso(r.destroy_after)! };
        return reply.code(202).send(view(r));
      },
    },
    {
      method: 'GET', url: '/v1/privacy/deregistration', meta: meta('privacy:deregistration:get'),
      schema: { summary: 'The account\'s deregistration, if any', tags, response: { 200: StatusView, '4xx': ErrorView } },
      handler: async (req) => {
        const r = await dereg.get(principalOf(req).accountId);
        if (!r) throw new PrivacyError(404, 'NotFound', 'the account is not being deregistered');
        return view(r);
      },
    },
    {
      method: 'DELETE', url: '/v1/privacy/deregistration', meta: meta('privacy:deregistration:cancel'),
      schema: { summary: 'Cancel the deregistration during the retention period: access comes back', tags, response: { 200: StatusView, '4xx': ErrorView } },
      handler: async (req) => {
        const r = await dereg.cancel(principalOf(req));
        req.custos.traced.detail = { deregistration: 'cancelled' };
        return view(r);
      },
    },
    {
      method: 'GET', url: '/v1/privacy/destruction-certificates/:account_id', meta: meta('privacy:certificates:get'),
      schema: {
        summary: 'The signed destruction certificate of a destroyed account (platform operator only)', tags,
        params: Type.Object({ account_id: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' }) }, S),
      },
      handler: async (req) => {
        const p = principalOf(req);
        if (p.accountName !== OPERATOR_ACCOUNT || p.agency) throw IamError.forbidden('only the platform operator account reads destruction certificates');
        const c = await dereg.certificate((req.params as { account_id: string }).account_id);
        if (!c) throw new PrivacyError(404, 'NotFound', 'no destruction certificate for that account');
        return c;
      },
    },
    {
      method: 'GET', url: '/v1/privacy/certificate-key', meta: meta(null),
      schema: { summary: 'The Ed25519 public key destruction certificates verify with (over their canonical JSON)', tags, security: [] },
      handler: async () => dereg.publicKey(),
    },
  ];
}
