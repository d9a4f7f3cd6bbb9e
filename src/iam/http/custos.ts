import { Type } from '@sinclair/typebox';
import type { RouteDef, RouteMeta } from '../../server/route.js';
import { principalOf } from '../../server/route.js';
import { IamError } from '../errors.js';
import { OPERATOR_ACCOUNT, type IamService, type Principal } from '../iam.js';

const S = { additionalProperties: false } as const;
const AccountView = Type.Object({ id: Type.String(), name: Type.String(), status: Type.String(), created_at: Type.String() });
const ErrorView = Type.Object({ error: Type.Object({ code: Type.String(), message: Type.String(), request_id: Type.String() }) });

/** Platform operations only the operator account's administrators may perform, whatever their policies say. */
function requireOperator(p: Principal): void {
  if (p.accountName !== OPERATOR_ACCOUNT || p.agency) throw IamError.forbidden('only the platform operator account may manage accounts');
}

export function custosIamRoutes(iam: IamService): RouteDef[] {
  const meta = (action: string, resourceType: string, extra: Partial<RouteMeta> = {}): RouteMeta => ({ dialect: 'custos', service: 'IAM', action, resourceType, ...extra });
  return [
    {
      method: 'POST', url: '/v1/accounts', meta: meta('iam:accounts:createAccount', 'domain'),
      schema: {
        summary: 'Create an account (tenant) with its first administrator',
        tags: ['accounts'],
        body: Type.Object({
          name: Type.String({ minLength: 3, maxLength: 64, pattern: '^[A-Za-z][A-Za-z0-9_-]*$' }),
          admin: Type.Object({ name: Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_.@-]+$' }), password: Type.String({ minLength: 1, maxLength: 128 }), email: Type.Optional(Type.String({ format: 'email', maxLength: 255 })) }, S),
        }, S),
        response: { 201: Type.Object({ account: AccountView, admin_user_id: Type.String() }), '4xx': ErrorView },
      },
      handler: async (req, reply) => {
        requireOperator(principalOf(req));
        const b = req.body as { name: string; admin: { name: string; password: string; email?: string } };
        const { account, adminUserId } = await iam.createAccount({ name: b.name, adminName: b.admin.name, adminPassword: b.admin.password, ...(b.admin.email ? { email: b.admin.email } : {}) });
        req.custos.traced = { resourceId: account.id, resourceName: account.name };
        return reply.code(201).send({ account: { id: account.id, name: account.name, status: account.status, created_at: new Date(account.created_at).toISOString() }, admin_user_id: adminUserId });
      },
    },
    {
      method: 'GET', url: '/v1/accounts', meta: meta('iam:accounts:listAccounts', 'domain'),
      schema: { summary: 'List accounts (operator only)', tags: ['accounts'], response: { 200: Type.Object({ accounts: Type.Array(AccountView) }), '4xx': ErrorView } },
      handler: async (req) => {
        requireOperator(principalOf(req));
        return { accounts: (await iam.listAccounts()).map((a) => ({ id: a.id, name: a.name, status: a.status, created_at: new Date(a.created_at).toISOString() })) };
      },
    },
    {
      method: 'POST', url: '/v1/iam/users/:user_id/unlock',
      meta: meta('iam:users:unlockUser', 'user', {
        resource: async (req, p) => {
          const u = await iam.getUser(p.accountId, (req.params as { user_id: string }).user_id);
          return u ? { service: 'iam', type: 'user', id: u.id, name: u.name, accountId: u.account_id } : null;
        },
      }),
      schema: { summary: 'Clear a user lockout after failed logins', tags: ['iam'], params: Type.Object({ user_id: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' }) }, S), response: { 204: Type.Null(), '4xx': ErrorView } },
      handler: async (req, reply) => {
        await iam.unlockUser(principalOf(req).accountId, (req.params as { user_id: string }).user_id);
        return reply.code(204).send();
      },
    },
  ];
}
